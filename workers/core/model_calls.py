"""One model call over many requests, made safe: a call that raises is split in halves
until the request(s) that fail it are found (each gets an `error` row), and a call that
runs out of memory is split and retried until the halves fit (workers/core/oom.py: only
a single row that runs out on its own gets an error). Rows (one dict per request) and
bulk chunks (columns) go through the same bisection.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from workers.core.oom import ALONE, Fit, is_out_of_memory
from workers.runtime.loaded import LoadedModel, rows_of

Outcomes = list[tuple[dict[str, Any] | None, str | None]]  # (outputs, error) per input


def score_rows(model: LoadedModel, inputs: list[dict[str, Any]], fit: Fit) -> Outcomes:
    """(outputs, error) per input dict, in order."""
    return _rows(model, inputs, fit, None)


def score_columns(model: LoadedModel, columns: dict[str, Any], n: int, fit: Fit) -> Outcomes:
    """(outputs, error) per row of `columns`, in one call by column where it can. If the
    model raises anything but out-of-memory, the rows are scored as dicts (score_rows) to
    find the bad one(s)."""
    return _columns(model, columns, n, fit, None)


def _rows(
    model: LoadedModel, inputs: list[dict[str, Any]], fit: Fit, ceiling: int | None
) -> Outcomes:
    def failed(part: list[dict[str, Any]], n: int, problem: str, ceiling: int | None) -> Outcomes:
        if n == 1:
            return [(None, f"model failed: {problem}")]
        return _halves(part, n, ceiling, again)

    def again(part: list[dict[str, Any]], n: int, ceiling: int | None) -> Outcomes:
        return _bisect(part, n, lambda p, _: model.predict(p), failed, again, fit, ceiling)

    return again(inputs, len(inputs), ceiling)


def _columns(
    model: LoadedModel, columns: dict[str, Any], n: int, fit: Fit, ceiling: int | None
) -> Outcomes:
    def failed(part: dict[str, Any], _: int, __: str, ceiling: int | None) -> Outcomes:
        return _rows(model, rows_of(part), fit, ceiling)

    def again(part: dict[str, Any], k: int, ceiling: int | None) -> Outcomes:
        return _bisect(part, k, model.predict_columns, failed, again, fit, ceiling)

    return again(columns, n, ceiling)


def _bisect(
    part: Any,
    n: int,
    call: Callable[[Any, int], list[dict[str, Any]]],
    failed: Callable[[Any, int, str, int | None], Outcomes],
    again: Callable[[Any, int, int | None], Outcomes],
    fit: Fit,
    ceiling: int | None,
) -> Outcomes:
    """Run `call` on `part` (n rows). A half that would run as many rows as the call that
    ran out (`ceiling`: compiled backends pad) is split without being tried. Retries start
    once the exception is handled, so that the tensors its frames hold are freed first."""
    if fit.worth_trying(n, ceiling):
        try:
            outputs = call(part, n)
        except Exception as exc:  # noqa: BLE001 - a model may raise anything; we record it
            problem, out_of_memory = short_error(exc), is_out_of_memory(exc)
        else:
            fit.succeeded(n)
            return [(out, None) for out in outputs]
        if not out_of_memory:
            return failed(part, n, problem, ceiling)
        ceiling = fit.ran_out(n)
        if n == 1:
            return [(None, f"{ALONE}: {problem}")]
    return _halves(part, n, ceiling, again)


def _halves(
    part: Any, n: int, ceiling: int | None, again: Callable[[Any, int, int | None], Outcomes]
) -> Outcomes:
    middle = n // 2
    if isinstance(part, dict):
        first = {k: v[:middle] for k, v in part.items()}
        rest = {k: v[middle:] for k, v in part.items()}
    else:
        first, rest = part[:middle], part[middle:]
    return again(first, middle, ceiling) + again(rest, n - middle, ceiling)


def short_error(exc: Exception) -> str:
    """An exception as one bounded line (pydantic errors as field: message)."""
    if isinstance(exc, ValidationError):
        return "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'message'}: {e['msg']}" for e in exc.errors()
        )[:1000]
    return str(exc)[:1000]
