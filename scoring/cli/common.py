"""Helpers the commands share: settings, engine, exit on a clear error."""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console
from sqlalchemy import Engine

from schemas.db import make_engine
from scoring import constants as c
from scoring.settings import Settings, get_settings

console = Console()
err_console = Console(stderr=True)


def settings() -> Settings:
    return get_settings()


def engine() -> Engine:
    return make_engine(settings().database_url)


def fail(message: str, code: int = c.EXIT_USAGE) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)
