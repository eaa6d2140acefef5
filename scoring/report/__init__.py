"""`scoring report`: one self-contained HTML file with plots of a window of the system's
life, read from the database alone (throughput, latency, batch sizes, failed rows, drift,
accuracy, version history), for people who have no Grafana at hand or want a file to
keep or send. `build.py` assembles it, `queries.py` reads (bounded, portable SQL),
`figures.py` draws (matplotlib to inline SVG), `page.py` writes the HTML."""

from __future__ import annotations

from scoring.report.build import build_report

__all__ = ["build_report"]
