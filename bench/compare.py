"""Compare a benchmark run's headline ratios with a stored baseline (CI's smoke run).

    python bench/compare.py BASELINE CANDIDATE [--tolerance 0.5] [--keys a,b]

Both files are benchmark JSON with a `ratios` object (bench/results/runtime.json is the
baseline of `scoring bench runtime`). Ratios, never absolute speeds: a ratio measured side
by side on one machine (int8 against eager in the same rounds) carries over to another
machine, a rows-per-second figure does not. Every ratio here is better when higher, so a
candidate fails a key when it is below baseline x (1 - tolerance). Compared: the numeric
keys both files have, or the ones --keys names (each must then be in both). Text values
(the best backend's name) are shown, never judged: another CPU may rightly pick another.

Exit 0: no regression. 1: a ratio regressed, or a --keys key is missing. 2: nothing to
compare (unreadable files, no `ratios`, no numeric key in common).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Verdict:
    key: str
    baseline: Any
    candidate: Any
    floor: float | None  # None: not judged (text, or missing)
    passed: bool

    def line(self) -> str:
        if self.floor is None:
            note = "missing" if not self.passed else "not judged"
            return f"  {self.key}: baseline {self.baseline!r}, now {self.candidate!r} ({note})"
        mark = "ok" if self.passed else "REGRESSED"
        return (
            f"  {self.key}: baseline {self.baseline:g}, now {self.candidate:g}, "
            f"floor {self.floor:g}: {mark}"
        )


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def ratios(path: Path) -> dict[str, Any]:
    body = json.loads(path.read_text())
    found = body.get("ratios") if isinstance(body, dict) else None
    if not isinstance(found, dict):
        raise ValueError(f"{path}: no `ratios` object")
    return found


def compare(
    baseline: dict[str, Any],
    candidate: dict[str, Any],
    tolerance: float,
    keys: list[str] | None = None,
) -> list[Verdict]:
    """One verdict per compared key; raises ValueError when nothing numeric is compared."""
    if not 0 <= tolerance < 1:
        raise ValueError(f"tolerance must be in [0, 1), not {tolerance}")
    wanted = keys if keys else sorted(baseline.keys() & candidate.keys())
    verdicts = []
    for key in wanted:
        base, cand = baseline.get(key), candidate.get(key)
        if key not in baseline or key not in candidate:
            verdicts.append(Verdict(key, base, cand, None, passed=False))
        elif is_number(base) and is_number(cand):
            floor = round(base * (1 - tolerance), 6)
            verdicts.append(Verdict(key, base, cand, floor, passed=cand >= floor))
        else:
            verdicts.append(Verdict(key, base, cand, None, passed=True))
    if not any(v.floor is not None for v in verdicts) and all(v.passed for v in verdicts):
        raise ValueError("no numeric ratio in common: nothing was compared")
    return verdicts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/compare.py", description=__doc__)
    parser.add_argument("baseline", type=Path)
    parser.add_argument("candidate", type=Path)
    parser.add_argument(
        "--tolerance",
        type=float,
        default=0.5,
        help="fraction a ratio may fall below its baseline (default 0.5)",
    )
    parser.add_argument("--keys", help="comma-separated ratios to compare (default: shared)")
    args = parser.parse_args(argv)
    keys = [k for k in (args.keys or "").split(",") if k]
    try:
        verdicts = compare(ratios(args.baseline), ratios(args.candidate), args.tolerance, keys)
    except (OSError, ValueError) as exc:
        print(f"compare: {exc}", file=sys.stderr)
        return 2
    print(f"{args.candidate} against {args.baseline} (tolerance {args.tolerance:.0%}):")
    for verdict in verdicts:
        print(verdict.line())
    failed = [v.key for v in verdicts if not v.passed]
    if failed:
        print(f"regressed or missing: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
