"""The CLI answers at once: importing it loads none of the heavy libraries, and each
command's one-line help in the lazy table is the command's own."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "sqlalchemy", "pyarrow", "celery", "kafka", "kombu", "redis")


def imported_after(code: str) -> list[str]:
    probe = f"import sys\n{code}\nimport json\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    modules = json.loads(out.stdout.strip().splitlines()[-1])
    return [m for m in HEAVY if m in modules]


def test_importing_the_entry_point_loads_no_heavy_library() -> None:
    assert imported_after("import scoring.cli") == []


def test_top_level_help_loads_no_command_module() -> None:
    code = (
        "import sys\nsys.argv=['scoring','--help']\nfrom scoring.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "assert not [m for m in sys.modules if m.startswith('scoring.cli.') and "
        "m not in ('scoring.cli.lazy',)], sorted(sys.modules)"
    )
    assert imported_after(code) == []


@pytest.mark.parametrize("command", ["bulk", "worker", "stream", "status", "models", "demo"])
def test_a_command_help_loads_no_heavy_library(command: str) -> None:
    code = (
        f"import sys\nsys.argv=['scoring','{command}','--help']\nfrom scoring.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
    )
    assert imported_after(code) == []


def test_worker_processes_never_import_the_cli() -> None:
    probe = "import sys, json, workers.process; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    )
    modules = json.loads(out.stdout.strip().splitlines()[-1])
    assert [m for m in modules if m == "scoring" or m.startswith("scoring.")] == []


def test_each_lazy_help_line_is_the_commands_own() -> None:
    from scoring.cli import COMMANDS
    from scoring.cli.bench import BENCHMARKS
    from scoring.cli.lazy import load_command

    for table in (COMMANDS, BENCHMARKS):
        for name, entry in table.items():
            command = load_command(name, entry.target)
            own = (command.help or "").strip().splitlines()[0]
            assert entry.help == own, f"{name}: table says {entry.help!r}, command {own!r}"
