"""Loading is never execution: no module of ours can unpickle. Model weights are
safetensors (tensors only, sha256-checked), task messages JSON; this fails on any line of
our installed packages that could run pickled (or YAML-tagged, marshalled) code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("scoring", "schemas", "producers", "workers", "bench", "deploy")
UNSAFE = re.compile(
    r"\bpickle\.loads?\(|\bcPickle\b|\bcloudpickle\b|\bdill\.loads?\(|\bjsonpickle\b"
    r"|\btorch\.load\(|weights_only\s*=\s*False|\bmarshal\.loads?\(|\bshelve\.open\("
    r"|\byaml\.(?:load|unsafe_load|full_load)\(|allow_pickle\s*=\s*True|\bread_pickle\("
    r"|\bUnpickler\("
)


def unsafe_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if UNSAFE.search(line)]


@pytest.mark.parametrize(
    "line",
    [
        "state = torch.load(path)",
        "torch.load(path, weights_only=False)",
        "obj = pickle.loads(body)",
        "yaml.load(text, Loader=yaml.Loader)",
        "np.load(f, allow_pickle=True)",
        "df = pd.read_pickle(p)",
    ],
)
def test_the_scan_finds_each_kind(line: str) -> None:
    assert unsafe_lines(f"x = 1\n{line}\n") == [line]


def test_no_module_of_ours_can_unpickle() -> None:
    sources = [p for package in PACKAGES for p in (ROOT / package).rglob("*.py")]
    assert len(sources) > 50  # the packages are where this test thinks they are
    hits = {
        str(path.relative_to(ROOT)): found
        for path in sources
        if (found := unsafe_lines(path.read_text(encoding="utf-8")))
    }
    assert hits == {}


def test_celery_accepts_json_only_on_every_channel(make_settings) -> None:  # type: ignore[no-untyped-def]
    from schemas.broker import celery_app

    conf = celery_app(make_settings().broker).conf
    assert conf.accept_content == ["json"]
    assert conf.result_accept_content == ["json"]
    assert conf.task_serializer == conf.result_serializer == conf.event_serializer == "json"
