"""Binned summaries of inputs and predictions: the contract between the registry (which
stores a version's reference from its held-out rows), the workers (which write the same
bins for what they score, with each batch's metrics) and `scoring drift` (which compares
the two). Only counts travel: never raw rows.

A feature's bins are fixed when the version is registered: the deciles of its held-out
values, open at both ends, so that every later value falls in exactly one bin. Numbers
are binned as they are; text is binned by its length in characters.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from itertools import chain
from operator import itemgetter
from typing import Any

import numpy as np

BINS = 10  # deciles of the held-out values: ten bins of about equal reference mass
_NUMERIC = ("float", "int", "integer", "number", "bool", "boolean")


def feature_values(column: Sequence[Any] | np.ndarray, type_name: str) -> np.ndarray:
    """A column as float64 values to bin: numbers as they are, text as its length.
    Missing or unusable values become NaN and are left out of every bin."""
    if type_name in _NUMERIC:
        if isinstance(column, np.ndarray) and column.dtype.kind in "fiub":
            return column.astype(np.float64, copy=False)
        return np.array([_number(v) for v in column], dtype=np.float64)
    return np.array([len(v) if isinstance(v, str) else np.nan for v in column], dtype=np.float64)


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def edges_for(values: np.ndarray, bins: int = BINS) -> list[float]:
    """Interior bin edges: the quantiles of `values` (repeated edges merged, so a feature
    with few distinct values gets fewer bins). Bin i holds edges[i-1] < v <= edges[i]."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return []
    qs = np.quantile(finite, np.linspace(0, 1, bins + 1)[1:-1])
    return [float(e) for e in np.unique(qs)]


def counts(values: np.ndarray, edges: Sequence[float]) -> list[int]:
    """How many finite `values` fall in each of the len(edges) + 1 bins."""
    return _counts(values, np.asarray(edges, dtype=np.float64))


def reference(
    columns: Mapping[str, Sequence[Any] | np.ndarray],
    input_schema: dict[str, str],
    labels: Iterable[Any] = (),
    predictions: Iterable[Any] = (),
    bins: int = BINS,
) -> dict[str, Any]:
    """A version's reference statistics from its held-out rows (as columns): per feature
    the bin edges and counts, the true label distribution and, when the model was run on
    those rows, the predicted one."""
    features = {}
    for name, type_name in input_schema.items():
        if name not in columns:
            continue
        values = feature_values(columns[name], type_name)
        edges = edges_for(values, bins)
        features[name] = {"kind": type_name, "edges": edges, "counts": counts(values, edges)}
    out: dict[str, Any] = {"version": 1, "rows": _rows(columns), "features": features}
    out["labels"] = _labels(labels)
    out["predictions"] = _labels(predictions)
    return out


def _rows(columns: Mapping[str, Sequence[Any] | np.ndarray]) -> int:
    return max((len(c) for c in columns.values()), default=0)


def summarize(
    ref: dict[str, Any], columns: Mapping[str, Sequence[Any] | np.ndarray], labels: Iterable[Any]
) -> dict[str, Any]:
    """What one model call scored, on the reference's bins: `n`, per-feature counts and
    predicted-label counts."""
    return Binner(ref).summarize(columns, labels)


class Binner:
    """A reference's bins made ready once (edges as arrays), for the summary of every
    model call of its version: about 10 µs per feature for a call of 256 rows."""

    def __init__(self, ref: dict[str, Any]) -> None:
        features = ref.get("features", {})
        self.kinds = {name: f["kind"] for name, f in features.items()}
        self.edges = {
            name: np.asarray(f["edges"], dtype=np.float64) for name, f in features.items()
        }
        self.numeric = [name for name, kind in self.kinds.items() if kind in _NUMERIC]

    def summarize(
        self, columns: Mapping[str, Sequence[Any] | np.ndarray], labels: Iterable[Any]
    ) -> dict[str, Any]:
        bins = {
            name: _counts(feature_values(columns[name], self.kinds[name]), self.edges[name])
            for name in self.kinds
            if name in columns
        }
        return {"n": _rows(columns), "bins": bins, "labels": _labels(labels)}

    def summarize_rows(
        self, rows: Sequence[dict[str, Any]], labels: Iterable[Any]
    ) -> dict[str, Any]:
        """The same from one dict per request: numeric features read in one pass."""
        bins: dict[str, list[int]] = {}
        names = [n for n in self.numeric if rows and n in rows[0]]
        if len(names) > 1:
            try:  # one C-level pass when every value is a plain number (schema-checked)
                flat = chain.from_iterable(map(itemgetter(*names), rows))
                matrix = np.fromiter(flat, dtype=np.float64, count=len(rows) * len(names))
                bins = self._count_matrix(names, matrix.reshape(len(rows), len(names)))
            except (KeyError, TypeError, ValueError):
                bins = {}
        for name in self.kinds:
            if name not in bins:
                values = feature_values([r.get(name) for r in rows], self.kinds[name])
                bins[name] = _counts(values, self.edges[name])
        return {"n": len(rows), "bins": bins, "labels": _labels(labels)}

    def _count_matrix(self, names: list[str], matrix: np.ndarray) -> dict[str, list[int]]:
        """Every feature's counts in three array operations: a value's bin is how many
        of its feature's edges lie below it (edges padded with +inf to one width)."""
        width = max(len(self.edges[n]) for n in names)
        edges = np.full((len(names), width), np.inf)
        for i, n in enumerate(names):
            edges[i, : len(self.edges[n])] = self.edges[n]
        finite = np.isfinite(matrix)
        index = (matrix[:, :, None] > edges[None, :, :]).sum(axis=2)
        index += np.arange(len(names)) * (width + 1)
        total = np.bincount(index[finite], minlength=len(names) * (width + 1))
        return {
            n: total[i * (width + 1) : i * (width + 1) + len(self.edges[n]) + 1].tolist()
            for i, n in enumerate(names)
        }


def _counts(values: np.ndarray, edges: np.ndarray) -> list[int]:
    finite = values[np.isfinite(values)]
    index = np.searchsorted(edges, finite, side="left")
    counted: list[int] = np.bincount(index, minlength=len(edges) + 1).tolist()
    return counted


def _labels(labels: Iterable[Any]) -> dict[str, int]:
    return dict(Counter(str(v) for v in labels if v is not None))


def merge(summaries: Iterable[dict[str, Any] | None]) -> dict[str, Any]:
    """Many summaries as one (sums); bins of differing lengths are not mixed."""
    n, labels = 0, Counter[str]()
    bins: dict[str, list[int]] = {}
    for s in summaries:
        if not s:
            continue
        n += int(s.get("n", 0))
        labels.update({k: int(v) for k, v in s.get("labels", {}).items()})
        for name, row in s.get("bins", {}).items():
            have = bins.setdefault(name, [0] * len(row))
            if len(have) == len(row):
                bins[name] = [a + int(b) for a, b in zip(have, row, strict=True)]
    return {"n": n, "bins": bins, "labels": dict(labels)}
