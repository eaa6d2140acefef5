"""The README stays true: its two commands, every setting (and only real ones), every
command; and every setting is read by some code."""

from __future__ import annotations

import re
from pathlib import Path

from schemas.settings import SECTIONS, env_names

ROOT = Path(__file__).parents[2]
README = (ROOT / "README.md").read_text()


def test_readme_starts_with_the_two_commands() -> None:
    first_block = README.split("```bash", 1)[1].split("```", 1)[0]
    assert [line.split()[1] for line in first_block.strip().splitlines()] == ["demo", "test"]


def test_every_setting_is_documented() -> None:
    missing = [name for name in env_names() if f"`{name}`" not in README]
    assert not missing, f"settings missing from the README: {missing}"


def test_the_readme_documents_no_setting_that_does_not_exist() -> None:
    known = set(env_names())
    documented = set(re.findall(r"`(SCORING_[A-Z0-9_]+)`", README))
    assert documented - known == set(), "README lists settings nothing defines"


def test_every_setting_is_read_by_the_code() -> None:
    """A field nobody reads is a setting that does nothing, whatever the README says."""
    sources = [
        p.read_text()
        for folder in ("scoring", "schemas", "producers", "workers", "bench")
        for p in (ROOT / folder).rglob("*.py")
        if p.name != "settings.py"
    ]
    own_methods = (ROOT / "schemas" / "settings.py").read_text()
    unread = []
    for section, cls in SECTIONS.items():
        for field in cls.model_fields:
            used = re.compile(rf"\.{field}\b")
            elsewhere = any(used.search(text) for text in sources)
            in_methods = re.search(rf"self\.{field}\b", own_methods)
            if not (elsewhere or in_methods):
                unread.append(f"{section}.{field}")
    assert not unread, f"settings that nothing reads: {unread}"


def test_every_command_is_documented() -> None:
    from scoring.cli import COMMANDS

    missing = [name for name in COMMANDS if f"scoring {name}" not in README]
    assert not missing, f"commands missing from the README: {missing}"


def test_the_readme_refers_to_no_document_outside_the_repository() -> None:
    for path in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        text = path.read_text()
        assert "../shared" not in text and "DESIGN.md" not in text, path
