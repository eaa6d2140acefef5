"""The README stays true: its two commands, every setting, every CLI command."""

from __future__ import annotations

from pathlib import Path

from scoring.settings import Settings

README = (Path(__file__).parents[2] / "README.md").read_text()


def test_readme_starts_with_the_two_commands() -> None:
    first_block = README.split("```bash", 1)[1].split("```", 1)[0]
    assert [line.split()[1] for line in first_block.strip().splitlines()] == ["demo", "test"]


def test_every_setting_is_documented() -> None:
    missing = [
        f"SCORING_{name.upper()}"
        for name in Settings.model_fields
        if f"`SCORING_{name.upper()}`" not in README
    ]
    assert not missing, f"settings missing from the README: {missing}"


def test_every_command_is_documented() -> None:
    from typer.main import get_command

    from scoring.cli import app

    commands = get_command(app).commands  # type: ignore[attr-defined]
    missing = [name for name in commands if f"scoring {name}" not in README]
    assert not missing, f"commands missing from the README: {missing}"
