"""`scoring db upgrade`: apply schema migrations."""

from __future__ import annotations

import typer

from scoring.cli.common import console, settings

app = typer.Typer(
    no_args_is_help=True, help="Database schema.", add_completion=False, rich_markup_mode=None
)


@app.command()
def upgrade(revision: str = typer.Argument("head")) -> None:
    """Apply migrations up to REVISION (default: the newest)."""
    from schemas.db import upgrade as run_upgrade

    db = settings().database
    run_upgrade(db.sqlalchemy_url(), revision)
    console.print(f"database {db.display_url()} at revision {revision}")


@app.command()
def current() -> None:
    """Print the revision the database is at."""
    from schemas.db import current_revision

    db = settings().database
    console.print(current_revision(db.sqlalchemy_url()) or "not migrated")
