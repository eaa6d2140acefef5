"""`scoring report`: a window of the system's life as one self-contained HTML file."""

from __future__ import annotations

from pathlib import Path

import typer

from scoring.cli.common import console, engine, parse_duration, settings


def report(
    since: str = typer.Option(
        "24h", "--since", help="The window: the last 30m, 24h, 7d (units s, m, h, d)."
    ),
    out: Path = typer.Option(
        Path("report.html"), "--out", help="The HTML file to write (replaced if it exists)."
    ),
) -> None:
    """Write plots of the last --since to one self-contained HTML file."""
    from schemas.tables import utcnow
    from scoring.report import build_report

    window = parse_duration(since)
    until = utcnow()
    html = build_report(
        engine(),
        since=until - window,
        until=until,
        window=since.strip(),
        database=settings().database.display_url(),
        made_at=until,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(html, encoding="utf-8")
    console.print(f"wrote {out} ({len(html.encode()) / 1024:,.0f} KiB)", highlight=False)
