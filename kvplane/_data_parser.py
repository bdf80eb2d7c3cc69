"""TransferQueue's ``data_parser=`` for the facade's puts: run a caller's parser over a batch.

The parser receives the batch as TransferQueue 0.1.11 hands it to one: a plain dict of field name →
batched values, where a dense tensor column is the ``[B, ...]`` tensor, and a jagged (nested) tensor
or a Python-object column is a list of ``B`` rows. It returns a dict with the same field names and
the same number of rows per field (it may edit the dict in place and return it); the result is
stored as a dict of columns (tensors; lists of row tensors, stacked or jagged; lists of objects).

Examples:
    >>> import torch
    >>> from kvplane._data_parser import parse_batch
    >>> from kvplane._validation import to_batch
    >>> def fetch(batch):
    ...     batch["shape"] = [torch.zeros(s) for s in batch["shape"]]
    ...     return batch
    >>> out = parse_batch(fetch, to_batch({"shape": [[2], [2]], "x": torch.ones(2)}, 2))
    >>> out["shape"][0].shape, out["x"].shape
    (torch.Size([2]), torch.Size([2]))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from tensordict import TensorDict

from kvplane._errors import DataPlaneBadRequest

__all__ = ["parse_batch"]


def _parser_view(batch: TensorDict) -> dict[str, Any]:
    """The batch as a parser sees it: dense tensors whole, jagged tensors and objects as row lists."""
    view: dict[str, Any] = {}
    for name in batch.keys():
        value = batch.get(name)
        if isinstance(value, torch.Tensor):
            view[name] = list(value.unbind(0)) if value.is_nested else value
        else:
            view[name] = list(value.tolist())
    return view


def _rows(value: Any) -> int | None:
    """How many rows a parsed column has (``None`` when it cannot say, as TransferQueue tolerates)."""
    shape = getattr(value, "shape", None)
    if isinstance(shape, (tuple, list)) and len(shape) > 0:
        return int(shape[0])
    try:
        return len(value)
    except TypeError:
        return None


def parse_batch(parser: Callable[[dict[str, Any]], Any], batch: TensorDict) -> dict[str, Any]:
    """Run ``parser`` over ``batch`` and check what it returns; nothing is stored here.

    Args:
        parser: The caller's ``data_parser``.
        batch: The normalised batch about to be written (``B`` rows).

    Returns:
        The parsed columns, to be written in place of ``batch``.

    Raises:
        DataPlaneBadRequest: ``parser`` is not callable, raises (chained as the cause), does not
            return a dict, changes the field names, or changes a field's row count.
    """
    if not callable(parser):
        raise DataPlaneBadRequest(f"data_parser must be callable, got {type(parser).__name__}")
    view = _parser_view(batch)
    names = set(view)
    n = int(batch.batch_size[0])
    try:
        parsed = parser(view)
    except Exception as exc:  # noqa: BLE001 - the caller's parser may raise anything
        raise DataPlaneBadRequest(
            f"data_parser raised {type(exc).__name__}: {exc}; nothing was stored"
        ) from exc
    if not isinstance(parsed, dict):
        raise DataPlaneBadRequest(f"data_parser must return a dict, got {type(parsed).__name__}")
    if set(parsed) != names:
        raise DataPlaneBadRequest(
            f"data_parser must not change dict keys. Original keys: {sorted(names)}, got: {sorted(parsed, key=str)}"
        )
    for name, value in parsed.items():
        rows = _rows(value)
        if rows is not None and rows != n:
            raise DataPlaneBadRequest(
                f"data_parser changed the number of elements for key {name!r}: expected {n}, got {rows}"
            )
    return parsed
