"""A command group that imports a command's module only when that command runs.

`scoring --help` lists every command from a static table without importing any of them,
so it answers at once; `scoring bulk --help` imports only the bulk command's module, and
those modules keep their heavy imports (torch, SQLAlchemy, Celery, Kafka) inside the
functions that need them. A test checks each table line against the command's own help.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, ClassVar

import typer
import typer.main
from typer.core import TyperGroup


@dataclass(frozen=True)
class Lazy:
    """Where a command lives ("module:attribute": a Typer app or a command function) and
    the one line `--help` shows for it."""

    target: str
    help: str


class LazyGroup(TyperGroup):
    """Subclass with a `lazy` table (see `lazy_group`); Typer builds the instance."""

    lazy: ClassVar[dict[str, Lazy]] = {}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["rich_markup_mode"] = None  # plain help: rich's would import every command
        super().__init__(*args, **kwargs)

    def list_commands(self, ctx: Any) -> list[str]:
        return list(self.lazy)

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        entry = self.lazy.get(cmd_name)
        return None if entry is None else load_command(cmd_name, entry.target)

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        rows = [(name, entry.help) for name, entry in self.lazy.items()]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def lazy_group(table: dict[str, Lazy], base: type[LazyGroup] = LazyGroup) -> type[LazyGroup]:
    """A LazyGroup class over `table`, for `typer.Typer(cls=...)`."""
    return type(f"Lazy{base.__name__}", (base,), {"lazy": table})


def load_command(name: str, target: str) -> Any:
    """Import `target` and turn it into a command named `name`."""
    module_name, _, attribute = target.partition(":")
    obj = getattr(importlib.import_module(module_name), attribute)
    if isinstance(obj, typer.Typer):
        command = typer.main.get_command(obj)
    else:  # a plain function with Typer parameters
        single = typer.Typer(add_completion=False, rich_markup_mode=None)
        single.command(name)(obj)
        command = typer.main.get_command(single)
    command.name = name
    return command
