"""Interpreter exit: what the loaders' cleanup may still do once the interpreter is shutting down.

A loader iterator left open (``it = iter(loader)`` at module level, training stopped by an exception)
is finalised during interpreter shutdown. Its cleanup would acknowledge progress through the data
plane and wait for its threads, but a TransferQueue call needs a thread that can no longer start
then, so the process would hang. An ``atexit`` hook (registered when :mod:`loaders` is imported, so
it runs before the handlers of the modules imported earlier) marks the exit; from then on the
cleanup skips acknowledgements and thread joins and says so at debug level. Nothing is lost: an
unacknowledged step is delivered again to the rank's next iteration, and ``state_dict()`` resumes
exactly as always.

The hook also asks every live step producer to stop and gives their threads up to
:data:`EXIT_GRACE_S` in all to return: a daemon thread still inside torch while the interpreter tears
down can abort the process ("terminate called without an active exception"); a thread blocked in a
data-plane call is not waited for beyond that.

Examples:
    >>> from loaders._exit import exiting
    >>> exiting()
    False
"""

from __future__ import annotations

import atexit
import sys
import threading
import time
import weakref
from collections.abc import Callable

__all__ = ["EXIT_GRACE_S", "exiting", "on_exit"]

#: The longest the exit hook waits, in all, for producer threads to return.
EXIT_GRACE_S = 1.0

_exiting = False
_stoppers: weakref.WeakKeyDictionary[object, Callable[[], list[threading.Thread]]] = (
    weakref.WeakKeyDictionary()
)


def on_exit(owner: object, stop: Callable[[], list[threading.Thread]]) -> None:
    """At exit, call ``stop()`` (while ``owner`` lives) and wait briefly for the threads it returns."""
    _stoppers[owner] = stop


def _mark_exit() -> None:
    global _exiting
    _exiting = True
    threads = [t for stop in list(_stoppers.values()) for t in stop()]
    deadline = time.monotonic() + EXIT_GRACE_S
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))


def exiting() -> bool:
    """Whether the interpreter is exiting (``atexit`` handlers running, or finalisation begun)."""
    return _exiting or sys.is_finalizing()


atexit.register(_mark_exit)
