"""What the commands share: the settings (read once), the database, consoles, `fail`."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, NoReturn

import typer
from rich.console import Console

from schemas import names

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from schemas.settings import Settings

console = Console()
err_console = Console(stderr=True, soft_wrap=True)
_settings: Settings | None = None


def settings() -> Settings:
    """The process's settings, read from the environment once."""
    global _settings
    if _settings is None:
        from schemas.settings import Settings

        _settings = Settings.from_env()
    return _settings


def current_settings() -> Settings | None:
    """The settings if they were read (an error message may need them), else None."""
    return _settings


def use_settings(value: Settings) -> None:
    """Replace the process's settings (a command's own overrides, e.g. `--topic`)."""
    global _settings
    _settings = value


def engine() -> Engine:
    """The database engine. The embedded SQLite default migrates itself on first use; a
    PostgreSQL database is migrated by `scoring db upgrade` (an error says so)."""
    from schemas.db import make_engine, upgrade

    url = settings().database.sqlalchemy_url()
    if url.startswith("sqlite"):
        upgrade(url)
    return make_engine(url)


def fail(message: str, code: int = names.EXIT_USAGE) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, markup=True)
    raise typer.Exit(code)


def parse_duration(text: str) -> timedelta:
    """`90s`, `30m`, `1h`, `7d` (or plain seconds) as a timedelta; usage error otherwise."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    value, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "s")
    try:
        seconds = float(value) * units[unit]
    except ValueError:
        fail(f"{text!r} is not a duration: write 90s, 30m, 1h or 7d")
    if seconds <= 0:
        fail(f"{text!r}: a duration must be positive")
    return timedelta(seconds=seconds)
