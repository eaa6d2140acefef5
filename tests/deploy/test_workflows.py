""".github/workflows: every command a workflow runs exists (a Makefile target, a `scoring`
command and its options, a file of this repository, a dev tool), and the jobs do what
docs/DEPLOY.md says: lint, tests, the model gate, the benchmark smoke run, both images, a
scheduled audit, and a promotion that waits for the gate."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.support import (
    ROOT,
    check_scoring_args,
    makefile_targets,
    pyproject,
    shell_words,
)

WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
# Programs a step may run besides the project's own: the runner's and the images'.
SYSTEM = {"docker", "rm", "sudo"}
# Modules run with `python -m`: uv (installed by the Makefile next to the interpreter).
MODULES = {"uv"}


@cache
def workflow(path: Path) -> dict[str, Any]:
    # `on` is YAML 1.1's true: read it as the key GitHub means.
    body = yaml.safe_load(path.read_text())
    if True in body:
        body["on"] = body.pop(True)
    return body


def steps(path: Path) -> list[tuple[str, dict[str, Any]]]:
    return [
        (job_name, step)
        for job_name, job in workflow(path)["jobs"].items()
        for step in job.get("steps", [])
    ]


def commands(path: Path) -> list[tuple[str, list[str]]]:
    """(job, argv) of every simple command in the workflow's `run:` scripts; GitHub
    expressions stand in as the word EXPR."""
    found = []
    for job, step in steps(path):
        if "run" in step:
            script = re.sub(r"\$\{\{.*?\}\}", "EXPR", step["run"])
            script = re.sub(r"\s*>\s*\S+", "", script)  # redirections
            for argv in shell_words(script):
                while argv and (re.fullmatch(r"\w+=.*", argv[0]) or argv[0] in ("env", "-E")):
                    argv = argv[1:]
                if argv:
                    found.append((job, argv))
    return found


def dev_tools() -> set[str]:
    dev = pyproject()["project"]["optional-dependencies"]["dev"]
    return {re.split(r"[<>=!~\[ ]", requirement)[0] for requirement in dev}


def problems_with(argv: list[str]) -> list[str]:
    program, args = argv[0], argv[1:]
    name = Path(program).name
    if program == "make":
        return [f"make {t}: no such target" for t in args if t not in makefile_targets()]
    if name == "scoring":
        return check_scoring_args(args)
    if name in ("python", "python3"):
        if args[:1] == ["-m"]:
            return [] if args[1] in MODULES else [f"python -m {args[1]}: not expected"]
        return [] if (ROOT / args[0]).is_file() else [f"{args[0]}: no such file"]
    if program.startswith(".venv/bin/"):
        return [] if name in dev_tools() else [f"{name}: not in the dev extra"]
    if program.startswith(("deploy/", "bench/", ".ci/")):
        return [] if (ROOT / program).is_file() else [f"{program}: no such file"]
    if name == "docker" and args[:1] == ["build"]:
        dockerfile = args[args.index("-f") + 1]
        if dockerfile == "EXPR":
            return []
        return [] if (ROOT / dockerfile).is_file() else [f"{dockerfile}: no such file"]
    if name in SYSTEM:
        return []
    return [f"{program}: not a command of this project, its tools or the runner"]


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.name for p in WORKFLOWS])
def test_every_command_exists(path: Path) -> None:
    problems = [
        f"{job}: {' '.join(argv)}: {problem}"
        for job, argv in commands(path)
        for problem in problems_with(argv)
    ]
    assert problems == []


def test_the_checker_catches_what_does_not_exist() -> None:
    assert problems_with(["make", "no-such-target"])
    assert problems_with([".venv/bin/scoring", "models", "deploy"])
    assert problems_with([".venv/bin/scoring", "bench", "runtime", "--fastest"])
    assert problems_with(["curl", "https://example.com"])
    assert problems_with([".venv/bin/trivy"])
    assert problems_with(["docker", "build", "-f", "deploy/docker/Dockerfile.tpu", "."])
    assert problems_with([".venv/bin/python", "bench/nothing.py"])
    assert problems_with(["make", "lint"]) == []


def test_matrix_dockerfiles_exist() -> None:
    ci = workflow(ROOT / ".github" / "workflows" / "ci.yml")
    include = ci["jobs"]["images"]["strategy"]["matrix"]["include"]
    assert {entry["dockerfile"] for entry in include} == {
        "deploy/docker/Dockerfile.cpu",
        "deploy/docker/Dockerfile.gpu",
    }


def runs(path: Path, job: str) -> list[list[str]]:
    return [argv for j, argv in commands(path) if j == job]


def test_ci_lints_tests_gates_benchmarks_and_builds() -> None:
    path = ROOT / ".github" / "workflows" / "ci.yml"
    every = [" ".join(argv) for _, argv in commands(path)]
    assert "make lint" in every
    assert "make test" in every
    assert ".venv/bin/scoring models validate demo 1" in every
    bench = next(argv for argv in runs(path, "bench-smoke") if "bench" in argv)
    assert bench[1:4] == ["bench", "runtime", "--quick"] and "--out" in bench
    out = bench[bench.index("--out") + 1]
    compare = next(argv for argv in runs(path, "bench-smoke") if "bench/compare.py" in argv)
    assert compare[2:4] == ["bench/results/runtime.json", out]
    # Images only from a commit that passed everything else.
    assert set(workflow(path)["jobs"]["images"]["needs"]) == {"lint", "test", "model-gate"}


def test_the_gate_fails_its_job() -> None:
    """Nothing may swallow `scoring models validate`'s exit 1."""
    for path in WORKFLOWS:
        for job_name, step in steps(path):
            if "models validate" in step.get("run", ""):
                assert "||" not in step["run"], (path.name, job_name)
                assert not step.get("continue-on-error"), (path.name, job_name)
                job = workflow(path)["jobs"][job_name]
                assert not job.get("continue-on-error"), (path.name, job_name)


def test_promotion_waits_for_the_gate() -> None:
    path = ROOT / ".github" / "workflows" / "deploy.yml"
    jobs = workflow(path)["jobs"]
    gate = [argv for argv in runs(path, "gate") if argv[1:3] == ["models", "validate"]]
    promote = [argv for argv in runs(path, "promote") if argv[1:3] == ["models", "promote"]]
    assert gate and promote
    assert jobs["promote"]["needs"] == "gate"
    assert jobs["promote"]["environment"] == "production"  # a reviewer approves
    assert not [argv for argv in runs(path, "gate") if argv[1:3] == ["models", "promote"]]
    # Inputs reach the commands as shell variables, never spliced into the script.
    assert {tuple(argv[3:5]) for argv in gate + promote} == {("$MODEL", "$VERSION")}


def test_security_audit_is_scheduled() -> None:
    path = ROOT / ".github" / "workflows" / "security.yml"
    assert workflow(path)["on"]["schedule"]
    programs = {Path(argv[0]).name for _, argv in commands(path)}
    assert {"pip-audit", "bandit"} <= programs
    assert {"pip-audit", "bandit"} <= dev_tools()


def test_workflow_python_is_the_images_python() -> None:
    from tests.deploy.support import parse_dockerfile

    python_image = parse_dockerfile(
        (ROOT / "deploy" / "docker" / "Dockerfile.cpu").read_text()
    ).args["PYTHON_IMAGE"]
    version = python_image.split(":")[1].split("-")[0]
    for path in WORKFLOWS:
        for name, job in workflow(path)["jobs"].items():
            if "container" in job:
                assert job["container"] == f"python:{version}-bookworm", (path.name, name)


def test_ci_entry_point_is_unchanged() -> None:
    """`.ci/run` stays the local entry point: lint, then the test suite."""
    text = (ROOT / ".ci" / "run").read_text()
    assert "make lint" in text and "make test" in text
