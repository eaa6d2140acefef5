"""deploy/docker: hadolint, the rules the images keep, and no drift from how the README and
the Makefile install the project (extras, Python version, entry point, packages)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.deploy.support import (
    ROOT,
    Dockerfile,
    Stage,
    exec_form,
    makefile_variable,
    parse_dockerfile,
    pyproject,
    scoring_commands,
    tool,
)

DOCKERFILES = {
    "cpu": ROOT / "deploy" / "docker" / "Dockerfile.cpu",
    "gpu": ROOT / "deploy" / "docker" / "Dockerfile.gpu",
}
# What a final stage must not install: compilers and build tools.
COMPILERS = re.compile(
    r"\b(gcc|g\+\+|cc|clang|build-essential|make|cmake|gfortran|rustc|cargo|"
    r"python3?-dev|libc6?-dev|linux-headers)\b"
)
PYTHON_MINOR = pyproject()["tool"]["mypy"]["python_version"]  # "3.11"


def rule_violations(dockerfile: Dockerfile) -> list[str]:
    """The rules every image keeps; a list of what this Dockerfile breaks."""
    return [
        *unpinned_bases(dockerfile),
        *root_user(dockerfile.final),
        *build_tools(dockerfile.final),
        *signal_handling(dockerfile.final),
        *health_and_store(dockerfile.final),
    ]


def unpinned_bases(dockerfile: Dockerfile) -> list[str]:
    """Every external FROM names a versioned tag or a digest, never `latest` or nothing."""
    problems = []
    stages = {s.name for s in dockerfile.stages if s.name}
    for stage in dockerfile.stages:
        if stage.base in stages:
            continue  # FROM an earlier stage
        if "$" in stage.base:
            problems.append(f"FROM {stage.base}: an ARG without a default")
        elif "@sha256:" not in stage.base:
            name = stage.base.split("/")[-1]
            tag = name.rpartition(":")[2] if ":" in name else ""
            if not tag or tag == "latest" or not re.search(r"\d", tag):
                problems.append(f"FROM {stage.base}: not pinned by a versioned tag or digest")
    return problems


def root_user(final: Stage) -> list[str]:
    users = final.all("USER")
    if not users:
        return ["the final stage runs as root (no USER)"]
    if users[-1].split(":")[0] in {"root", "0"}:
        return [f"the final stage's USER is {users[-1]}"]
    return []


def build_tools(final: Stage) -> list[str]:
    """No compilers in the final stage, and no package builds there either."""
    problems = []
    for run in final.all("RUN"):
        for install in re.findall(r"(?:apt-get|apt|apk)\s+(?:install|add)\s+([^&;|]*)", run):
            if match := COMPILERS.search(install):
                problems.append(f"the final stage installs {match.group(0)}")
        if re.search(r"\bpip3?\s+install\b|\buv\s+pip\b", run):
            problems.append("the final stage installs Python packages (build them earlier)")
    return problems


def signal_handling(final: Stage) -> list[str]:
    """tini as PID 1 (exec form), so SIGTERM reaches the worker's soft shutdown."""
    entrypoints = final.all("ENTRYPOINT")
    if not entrypoints or not exec_form(entrypoints[-1])[0].endswith("tini"):
        return ["ENTRYPOINT is not tini (exec form), so SIGTERM may not reach the worker"]
    if exec_form(entrypoints[-1])[1:2] != ["--"]:
        return ["tini must be given `--` before the command"]
    return []


def health_and_store(final: Stage) -> list[str]:
    problems = []
    checks = final.all("HEALTHCHECK")
    if not checks or "workers.health" not in checks[-1]:
        problems.append("no HEALTHCHECK running python -m workers.health")
    env = " ".join(final.all("ENV"))
    for needed in ("SCORING_HEARTBEAT_DIR", "SCORING_MODEL_STORE"):
        if needed not in env:
            problems.append(f"the final stage does not set {needed}")
    store = re.search(r"SCORING_MODEL_STORE=(\S+)", env)
    if store and not any(store.group(1) in v for v in final.all("VOLUME")):
        problems.append(f"the model store {store.group(1)} is not a VOLUME")
    return problems


@pytest.fixture(params=sorted(DOCKERFILES), ids=sorted(DOCKERFILES))
def image(request: pytest.FixtureRequest) -> tuple[str, Dockerfile]:
    return request.param, parse_dockerfile(DOCKERFILES[request.param].read_text())


def test_hadolint_passes() -> None:
    done = subprocess.run(
        [tool("hadolint"), "--no-color", *map(str, DOCKERFILES.values())],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_images_keep_the_rules(image: tuple[str, Dockerfile]) -> None:
    assert rule_violations(image[1]) == []


def test_the_rules_catch_a_bad_dockerfile() -> None:
    bad = parse_dockerfile(
        "FROM python:latest AS build\n"
        "FROM ubuntu\n"
        "RUN apt-get update && apt-get install -y gcc make \\\n  && pip install x\n"
        'ENTRYPOINT ["scoring"]\n'
    )
    problems = "\n".join(rule_violations(bad))
    for expected in (
        "python:latest",
        "FROM ubuntu",
        "root",
        "installs gcc",
        "Python packages",
        "tini",
        "HEALTHCHECK",
        "SCORING_HEARTBEAT_DIR",
    ):
        assert expected in problems


def test_multi_stage_with_a_named_build_stage(image: tuple[str, Dockerfile]) -> None:
    dockerfile = image[1]
    assert len(dockerfile.stages) >= 2
    copies = dockerfile.final.all("COPY")
    assert any(c.startswith("--from=build ") for c in copies), copies


def test_python_version_matches_the_project(image: tuple[str, Dockerfile]) -> None:
    """README and pyproject: Python 3.11 (mypy's and ruff's target, requires-python)."""
    assert pyproject()["project"]["requires-python"] == f">={PYTHON_MINOR}"
    assert pyproject()["tool"]["ruff"]["target-version"] == "py" + PYTHON_MINOR.replace(".", "")
    args = image[1].args
    python_image = args.get("PYTHON_IMAGE") or args["BUILD_IMAGE"]
    assert re.fullmatch(rf"python:{re.escape(PYTHON_MINOR)}\.\d+-slim-\w+", python_image)
    if image[0] == "gpu":
        assert args["PYTHON_VERSION"].startswith(PYTHON_MINOR + ".")
        # The standalone interpreter is the same release as the CPU image's.
        cpu = parse_dockerfile(DOCKERFILES["cpu"].read_text()).args["PYTHON_IMAGE"]
        assert cpu.startswith(f"python:{args['PYTHON_VERSION']}-")


def test_extras_match_the_makefile(image: tuple[str, Dockerfile]) -> None:
    """The image installs what `make` does (EXTRAS), less the dev tools; the GPU image adds
    the `gpu` extra. Every extra named exists in pyproject.toml."""
    make_extras = set(makefile_variable("EXTRAS").split(","))
    expected = (make_extras - {"dev"}) | ({"gpu"} if image[0] == "gpu" else set())
    extras = set(image[1].args["EXTRAS"].split(","))
    assert extras == expected
    assert extras <= set(pyproject()["project"]["optional-dependencies"])


def test_installs_the_project_like_the_makefile(image: tuple[str, Dockerfile]) -> None:
    """uv, dependencies from pyproject.toml with the same extras, then the project itself
    (`.[EXTRAS]`, as the Makefile's `-e ".[$(EXTRAS)]"` but not editable)."""
    makefile = (ROOT / "Makefile").read_text()
    assert '-e ".[$(EXTRAS)]"' in makefile
    runs = " ".join(image[1].stages[0].all("RUN"))
    assert "uv pip install" in runs
    assert "-r pyproject.toml" in runs
    assert '".[${EXTRAS}]"' in runs
    assert "scoring --help" in runs  # the build fails if the entry point does not start


def test_copies_every_package_the_project_ships(image: tuple[str, Dockerfile]) -> None:
    include = pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {p.rstrip("*") for p in include}
    sources = [c.split()[0] for c in image[1].stages[0].all("COPY") if not c.startswith("--")]
    copied = {s.split("/")[0] for s in sources}  # a package, or the Python parts of one
    assert packages <= copied, packages - copied
    # The build backend reads these two (metadata, readme).
    assert any("pyproject.toml" in c and "README.md" in c for c in image[1].stages[0].all("COPY"))


def test_entry_point_is_the_project_script(image: tuple[str, Dockerfile]) -> None:
    entrypoint = exec_form(image[1].final.all("ENTRYPOINT")[-1])
    assert entrypoint[2:] == ["scoring"]
    assert "scoring" in pyproject()["project"]["scripts"]
    command = exec_form(image[1].final.all("CMD")[-1])
    assert command[0] in scoring_commands()
    expected = ["worker", "--gpus", "0"] if image[0] == "gpu" else ["worker", "--cpu", "1"]
    assert command == expected


def test_healthcheck_is_the_project_probe(image: tuple[str, Dockerfile]) -> None:
    check = image[1].final.all("HEALTHCHECK")[-1]
    command = exec_form(check[check.index("CMD") + 3 :].strip())
    assert command[:3] == ["python", "-m", "workers.health"]
    assert command[3:] == ["--max-age", "120"]
    done = subprocess.run(
        [sys.executable, "-m", "workers.health", "--help"],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0 and "--max-age" in done.stdout and "--ready" in done.stdout


def test_heartbeat_and_store_match_between_images() -> None:
    envs = {
        name: " ".join(parse_dockerfile(path.read_text()).final.all("ENV"))
        for name, path in DOCKERFILES.items()
    }
    for setting in ("SCORING_HEARTBEAT_DIR", "SCORING_MODEL_STORE", "SCORING_METRICS_PORT"):
        values = {m.group(1) for e in envs.values() if (m := re.search(rf"{setting}=(\S+)", e))}
        assert len(values) == 1, (setting, values)


def test_gpu_image_is_on_a_cuda_base() -> None:
    gpu = parse_dockerfile(DOCKERFILES["gpu"].read_text())
    assert gpu.final.base.startswith("nvidia/cuda:")
    assert "gpu" in gpu.args["EXTRAS"].split(",")
    assert "torch-tensorrt" in " ".join(pyproject()["project"]["optional-dependencies"]["gpu"])
