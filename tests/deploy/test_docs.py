"""docs/DEPLOY.md: the commands it shows exist, the files it names exist, and the benchmark
figures it sizes with are the ones docs/BENCHMARKS.md reports."""

from __future__ import annotations

import re
import shlex

from tests.deploy.support import ROOT, check_scoring_args, makefile_targets

DEPLOY = (ROOT / "docs" / "DEPLOY.md").read_text()
BENCHMARKS = (ROOT / "docs" / "BENCHMARKS.md").read_text()
# Figures DEPLOY.md quotes from BENCHMARKS.md; if a new benchmark run changes them, the
# sizing advice is to be read again.
FIGURES = [
    "1,043",
    "958",
    "1,037,371",
    "92,320",
    "184,711",
    "116.5",
    "162.2",
    "1.69",
    "1.57",
    "21,233",
    "27,418",
    "8,243",
    "429",
]


def code_lines() -> list[str]:
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", DEPLOY, re.S):
        joined = block.replace("\\\n", " ")
        lines += [line.strip() for line in joined.splitlines() if line.strip()]
    return lines


def test_quoted_figures_are_the_benchmarks() -> None:
    for figure in FIGURES:
        assert figure in DEPLOY, figure
        assert figure in BENCHMARKS, f"{figure} is no longer in docs/BENCHMARKS.md"


def test_benchmark_commands_are_quoted_as_run() -> None:
    for command in (
        "scoring bench runtime --out bench/results/runtime.json --threads 2",
        "bench/gpu_check.sh bench/results",
        "scoring bench stream --text-backend compiled-bf16 --out bench/results/stream.json",
        "scoring bench e2e --rows 100000 --out bench/results/e2e.json",
    ):
        assert command in DEPLOY and command in BENCHMARKS, command


def test_scoring_commands_exist() -> None:
    shown = [line for line in code_lines() if line.startswith("scoring ")]
    inline = re.findall(r"`(scoring [a-z][^`]*)`", DEPLOY)
    compose = [
        "scoring " + line.split(" worker ", 1)[1]
        for line in code_lines()
        if line.startswith("docker compose run --rm worker ")
    ]
    checked = 0
    for command in shown + inline + compose:
        words = [w for w in shlex.split(command, comments=True) if w.isascii()]
        words = [w for w in words if not re.fullmatch(r"[A-Z_]+|\.+", w)]  # placeholders
        assert check_scoring_args(words[1:]) == [], command
        checked += 1
    assert checked >= 10


def test_files_and_make_targets_exist() -> None:
    for path in set(re.findall(r"`((?:deploy|bench|docs|tests|\.github)/[\w./-]+)`", DEPLOY)):
        assert (ROOT / path.rstrip("/")).exists() or path.startswith(
            ("deploy/grafana", "deploy/prometheus/rules")
        ), path
    for target in re.findall(r"`make (\w[\w-]*)`", DEPLOY):
        assert target in makefile_targets(), target
    for overlay in re.findall(r"deploy/k8s/overlays/([\w-]+)", DEPLOY):
        assert (ROOT / "deploy" / "k8s" / "overlays" / overlay / "kustomization.yaml").is_file()
