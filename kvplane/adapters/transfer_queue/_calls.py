"""Deadline-bounded calls into TransferQueue, and translation of what they raise.

TransferQueue's controller RPCs have no client-side timeout (a dead controller blocks a caller
forever), and its errors are a mix of builtins, Ray, ZMQ and its own classes. Every call kvplane makes
goes through :class:`LoopRunner` (coroutines on the TransferQueue client's event loop) or
:func:`run_bounded` (blocking calls such as ``tq.init``), so each one has a deadline, and whatever it
raises reaches the caller as a kvplane error with the original chained as ``__cause__``.
:func:`set_tags` is TransferQueue's tag write without the client's per-call deep copies.

Examples:
    >>> from kvplane.adapters.transfer_queue._calls import translate
    >>> from kvplane import DataPlaneWriteError
    >>> type(translate("put", ValueError("bad batch"), DataPlaneWriteError)).__name__
    'DataPlaneBadRequest'
    >>> type(translate("put", RuntimeError("Storage capacity exceeded"), DataPlaneWriteError)).__name__
    'DataPlaneWriteError'
    >>> type(translate("get", ConnectionResetError(), DataPlaneWriteError)).__name__
    'DataPlaneUnavailable'
    >>> gone = RuntimeError("batch_get_into failed for keys ['3@x'] with error codes [-704]")
    >>> type(translate("get", gone, DataPlaneWriteError)).__name__
    'DataPlaneKeyError'
    >>> run_bounded("a nap", lambda: __import__("time").sleep(5), timeout_s=0.05)
    Traceback (most recent call last):
    ...
    kvplane._errors.DataPlaneTimeout: a nap did not finish within 0.05s
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import re
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import ray.exceptions
import zmq
from transfer_queue import StorageKeyNotFoundError, TransferQueueClient
from transfer_queue.client import with_controller_socket
from transfer_queue.utils.zmq_utils import ZMQRequestType

from kvplane._errors import (
    DataPlaneBadRequest,
    DataPlaneError,
    DataPlaneKeyError,
    DataPlaneTimeout,
    DataPlaneUnavailable,
)
from kvplane._errors import StorageKeyNotFoundError as RacedClearError

__all__ = ["LoopRunner", "run_bounded", "set_tags", "set_tags_many", "translate"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Extra time the calling thread waits beyond a coroutine's own deadline, so the in-loop
#: ``wait_for`` normally fires first and cancels the request cleanly.
_GRACE_S = 2.0
#: A call still running after this long asks whether the backend is still there, then again this often.
_HEALTH_AFTER_S = 1.0
_HEALTH_EVERY_S = 2.0

_GONE = (
    ray.exceptions.RayActorError,
    ray.exceptions.RaySystemError,
    ray.exceptions.NodeDiedError,
    ray.exceptions.LocalRayletDiedError,
    ConnectionError,
    zmq.ZMQError,
    concurrent.futures.CancelledError,
)
# MooncakeStore's OBJECT_NOT_FOUND (-704) for every key of a failed read: the data was cleared.
_MOONCAKE_NOT_FOUND = re.compile(r"error codes \[-704(, -704)*\]")
_TIMEOUTS = (TimeoutError, asyncio.TimeoutError, concurrent.futures.TimeoutError)
# TransferQueue wraps transport failures in RuntimeError text; these phrases mean "backend gone".
_GONE_PHRASES = (
    "no controller registered",
    "storage manager not initialized",
    "zmq recv timeout",
    "context was terminated",
)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def translate(operation: str, exc: BaseException, default: type[DataPlaneError]) -> DataPlaneError:
    """The kvplane error for ``exc`` raised by ``operation`` (the caller chains ``exc`` as cause).

    Rules, first match wins over the exception and its causes: a kvplane error passes through;
    a timeout → :class:`~kvplane.DataPlaneTimeout`; a dead actor, node, socket or connection →
    :class:`~kvplane.DataPlaneUnavailable`; a key missing from storage or a ``KeyError`` →
    :class:`~kvplane.DataPlaneKeyError`; ``ValueError``/``TypeError`` (TransferQueue's "bad input")
    → :class:`~kvplane.DataPlaneBadRequest`; anything else → ``default`` (the operation's own
    Read/Write/Clear error).
    """
    if isinstance(exc, DataPlaneError):
        return exc
    message = f"{operation} failed: {type(exc).__name__}: {exc}"
    chain = list(_chain(exc))
    if any(isinstance(e, _TIMEOUTS) for e in chain):
        return DataPlaneTimeout(message)
    if any(isinstance(e, _GONE) for e in chain) or any(
        phrase in str(e).lower() for e in chain for phrase in _GONE_PHRASES
    ):
        return DataPlaneUnavailable(message)
    if (
        any(isinstance(e, StorageKeyNotFoundError) for e in chain)
        or isinstance(exc, KeyError)
        or any(_MOONCAKE_NOT_FOUND.search(str(e)) for e in chain)
    ):
        raced = any(isinstance(e, StorageKeyNotFoundError) for e in chain)  # TransferQueue's race marker
        return (RacedClearError if raced else DataPlaneKeyError)(message)
    if isinstance(exc, (ValueError, TypeError)):
        return DataPlaneBadRequest(message)
    return default(message)


def run_bounded(what: str, fn: Callable[[], T], *, timeout_s: float) -> T:
    """Run a blocking call in a helper thread and give up on it after ``timeout_s``.

    For calls that cannot be cancelled (``tq.init`` waiting on an unschedulable actor, a blocking
    handshake): the thread is left behind as a daemon, the caller gets a
    :class:`~kvplane.DataPlaneTimeout` and must release what the call may have created.

    Raises:
        DataPlaneTimeout: ``fn`` did not return in time.
        Exception: Whatever ``fn`` raised, unchanged (the caller translates it).
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name=f"kvplane-{what.replace(' ', '-')}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise DataPlaneTimeout(f"{what} did not finish within {timeout_s:g}s")
    if "error" in box:
        raise box["error"]
    return box["value"]


class LoopRunner:
    """Runs TransferQueue coroutines on the client's event loop, each with a deadline.

    A call that is still running after a second asks ``health`` (then every two seconds) whether the
    backend is still there: a dead actor never answers, and waiting out the deadline for it would
    report a lost backend as a slow one.

    Args:
        loop: The TransferQueue client's event loop (it runs in the client's own thread).
        timeout_s: The deadline of a call that does not name its own.
        health: Says what of the backend is gone (``None`` while all of it runs); may raise when it
            cannot tell. ``None`` skips the checks.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        timeout_s: float,
        health: Callable[[], str | None] | None = None,
    ) -> None:
        self._loop = loop
        self._timeout_s = timeout_s
        self._health = health
        self._closed = False

    def close(self) -> None:
        """Refuse every later call (the client behind the loop is going away)."""
        self._closed = True

    def gone(self) -> str | None:
        """What ``health`` says is gone; ``None`` when all runs or the check itself failed."""
        if self._health is None:
            return None
        try:
            return self._health()
        except Exception:  # cannot tell: let the call's own outcome speak
            logger.debug("the TransferQueue health check failed", exc_info=True)
            return None

    def check(self, operation: str) -> None:
        """Raise :class:`~kvplane.DataPlaneUnavailable` if part of the backend is gone."""
        gone = self.gone()
        if gone is not None:
            raise DataPlaneUnavailable(f"{operation}: {gone}")

    def run(
        self,
        operation: str,
        coro: Coroutine[Any, Any, T],
        default: type[DataPlaneError],
        timeout_s: float | None = None,
    ) -> T:
        """Run ``coro`` on the loop; block until it finishes, its deadline passes or the backend is gone.

        On a deadline or a lost backend the coroutine is cancelled (TransferQueue then discards the
        socket it was using, so a late reply cannot reach another request).

        Raises:
            DataPlaneUnavailable: The runner is closed, or part of the backend is gone.
            DataPlaneTimeout: The deadline passed.
            DataPlaneError: What the coroutine raised, translated (see :func:`translate`).
        """
        if self._closed:
            coro.close()
            raise DataPlaneUnavailable(f"{operation}: the TransferQueue data plane client is closed")
        timeout = self._timeout_s if timeout_s is None else timeout_s
        try:
            future = asyncio.run_coroutine_threadsafe(asyncio.wait_for(coro, timeout), self._loop)
        except RuntimeError as exc:  # the loop is closed or stopped
            coro.close()
            raise DataPlaneUnavailable(f"{operation}: the TransferQueue client is closed") from exc
        try:
            return self._result(operation, future, timeout + _GRACE_S)
        except DataPlaneError:
            raise
        except _TIMEOUTS as exc:
            future.cancel()
            gone = self.gone()
            if gone is not None:
                raise DataPlaneUnavailable(f"{operation}: {gone}") from exc
            raise DataPlaneTimeout(f"{operation} did not finish within {timeout:g}s") from exc
        except Exception as exc:
            raise translate(operation, exc, default) from exc

    def _result(self, operation: str, future: concurrent.futures.Future[T], within_s: float) -> T:
        """``future.result(within_s)``, asking ``health`` now and then while it waits."""
        give_up = time.monotonic() + within_s
        ask_at = time.monotonic() + _HEALTH_AFTER_S if self._health is not None else give_up
        while True:
            try:
                return future.result(max(0.0, min(give_up, ask_at) - time.monotonic()))
            except concurrent.futures.TimeoutError:
                if future.done():  # finished just now, or timed out by its own deadline: as it is
                    return future.result(0)
                if time.monotonic() >= give_up:
                    raise
            gone = self.gone()
            if gone is not None:
                future.cancel()
                raise DataPlaneUnavailable(f"{operation}: {gone}")
            ask_at = time.monotonic() + _HEALTH_EVERY_S


async def set_tags(
    client: TransferQueueClient,
    partition_id: str,
    global_indexes: Sequence[int],
    tags: Sequence[Mapping[str, Any]],
    also: Mapping[str, Mapping[int, Mapping[str, Any]]] | None = None,
) -> None:
    """Replace the tags of samples of one partition (TransferQueue's ``SET_CUSTOM_META`` request).

    The request ``TransferQueueClient.async_set_custom_meta`` sends, built directly: that method
    deep-copies every tag twice and re-slices its ``BatchMeta`` per partition first, a third of the
    client's time in a 512-sample tagged put. The tags are sent as they are, not copied. ``also``
    (``{partition: {global index: tags}}``, other partitions) goes in the same request.
    """
    if global_indexes:
        body = {
            "partition_custom_meta": {
                **(also or {}),
                partition_id: dict(zip(global_indexes, tags, strict=True)),
            }
        }
        await _request_tags(client, body)


async def set_tags_many(
    client: TransferQueueClient, tags: Mapping[str, Mapping[int, Mapping[str, Any]]]
) -> None:
    """Replace tags in several partitions with one request (``{partition: {global index: tags}}``):
    the controller applies one request at a time, so they change together."""
    await _request_tags(client, {"partition_custom_meta": {p: dict(t) for p, t in tags.items()}})


@with_controller_socket
async def _request_tags(client: TransferQueueClient, body: dict[str, Any], socket: Any = None) -> None:
    await client._request_controller(
        socket, ZMQRequestType.SET_CUSTOM_META, ZMQRequestType.SET_CUSTOM_META_RESPONSE, body
    )
