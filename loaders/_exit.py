"""Interpreter exit: what the loaders' cleanup may still do once the interpreter is shutting down.

A loader iterator left open (``it = iter(loader)`` at module level, training stopped by an exception)
is finalised during interpreter shutdown. Its cleanup would acknowledge progress through the data
plane and wait for its threads, but a TransferQueue call needs a thread that can no longer start
then, so the process would hang. An ``atexit`` hook (registered when :mod:`loaders` is imported, so
it runs before the handlers of the modules imported earlier) marks the exit; from then on the
cleanup skips acknowledgements and thread joins and says so at debug level. Nothing is lost: an
unacknowledged step is delivered again to the rank's next iteration, and ``state_dict()`` resumes
exactly as always.

Examples:
    >>> from loaders._exit import exiting
    >>> exiting()
    False
"""

from __future__ import annotations

import atexit
import sys

__all__ = ["exiting"]

_exiting = False


def _mark_exit() -> None:
    global _exiting
    _exiting = True


def exiting() -> bool:
    """Whether the interpreter is exiting (``atexit`` handlers running, or finalisation begun)."""
    return _exiting or sys.is_finalizing()


atexit.register(_mark_exit)
