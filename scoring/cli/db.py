"""`scoring db upgrade`: apply schema migrations."""

from __future__ import annotations

import typer

from schemas.db import upgrade as run_upgrade
from scoring.cli.common import console, settings

app = typer.Typer(no_args_is_help=True, help="Database schema.")


@app.command()
def upgrade(revision: str = typer.Argument("head")) -> None:
    """Apply migrations up to REVISION (default: the newest)."""
    run_upgrade(settings().database_url, revision)
    console.print(f"database at revision {revision}")
