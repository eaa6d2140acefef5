"""What each model call scored, on its version's drift bins: per-feature counts and
predicted labels (schemas/drift_bins.py), never raw rows.

The pipeline asks for a call's summary and stores it in that call's `batch_metrics` row,
in the batch's own transaction: a summary is in the database exactly when its results
are, so a batch sent back and scored again is counted once per time it was stored.
`scoring drift` adds the summaries of a window up and compares them with the reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from schemas import drift_bins

_binners: dict[int, tuple[dict[str, Any], drift_bins.Binner]] = {}


def call_summary(
    ref: dict[str, Any] | None,
    columns: dict[str, Sequence[Any]] | None,
    rows: Sequence[dict[str, Any]] | None,
    outputs: Sequence[dict[str, Any] | None],
) -> dict[str, Any] | None:
    """The summary of one call: its inputs as `columns` (bulk chunks) or as `rows` (one
    dict per request), and the outputs it gave, on the version's reference `ref` (its
    `reference_stats`). None when the version has no bins."""
    if not ref or not ref.get("features"):
        return None
    labels = [o.get("label") for o in outputs if o]
    binner = _binner(ref)
    if columns is None:
        return binner.summarize_rows(rows or (), labels)
    return binner.summarize(columns, labels)


def _binner(ref: dict[str, Any]) -> drift_bins.Binner:
    """One Binner per loaded version's reference (a handful per process, kept)."""
    cached = _binners.get(id(ref))
    if cached is None or cached[0] is not ref:
        cached = _binners[id(ref)] = (ref, drift_bins.Binner(ref))
    return cached[1]
