"""The Dockerfile: hadolint clean, and the image it describes is the one deploy/k8s expects.

No Docker engine runs here, so the file is read as text; tests/e2e/test_wheel_serves.py
runs what the image runs.
"""

from __future__ import annotations

import fnmatch
import json
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

REPOSITORY = Path(__file__).resolve().parents[2]
DOCKERFILE = REPOSITORY / "Dockerfile"
HADOLINT = Path(sys.executable).parent / "hadolint"


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str


def _instructions(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    keyword_and_rest = (line.split(None, 1) for line in logical)
    return [Instruction(k.upper(), rest) for k, rest in keyword_and_rest]


def _stages() -> list[list[Instruction]]:
    stages: list[list[Instruction]] = []
    for instruction in _instructions(DOCKERFILE.read_text()):
        if instruction.keyword == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(instruction)
    return stages


def _final_stage() -> list[Instruction]:
    return _stages()[-1]


def _last(stage: list[Instruction], keyword: str) -> Instruction:
    found = [i for i in stage if i.keyword == keyword]
    assert found, f"no {keyword} in the final stage"
    return found[-1]


def _hadolint(dockerfile: Path) -> list[dict[str, object]]:
    # Inline ignore pragmas do not count: the file must be clean as it is.
    result = subprocess.run(
        [
            str(HADOLINT), "--format", "json", "--failure-threshold", "style",
            "--disable-ignore-pragma", str(dockerfile),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )  # fmt: skip
    findings: list[dict[str, object]] = json.loads(result.stdout or "[]")
    assert (result.returncode != 0) == bool(findings), result.stderr
    return findings


def test_hadolint_finds_nothing() -> None:
    assert _hadolint(DOCKERFILE) == []


def test_hadolint_does_find_problems(tmp_path: Path) -> None:
    # The check above means something only if the linter really lints.
    careless = tmp_path / "Dockerfile"
    careless.write_text("FROM python:latest\nRUN pip install requests\n")
    codes = {finding["code"] for finding in _hadolint(careless)}
    assert {"DL3007", "DL3013"} <= codes


def test_the_image_is_built_in_stages_on_a_slim_python() -> None:
    stages = _stages()
    assert len(stages) >= 2
    arguments = {
        line.split("=", 1)[0].split()[-1]: line.split("=", 1)[1]
        for line in DOCKERFILE.read_text().splitlines()
        if line.startswith("ARG ") and "=" in line
    }
    base = arguments["PYTHON_IMAGE"]
    assert base.startswith("python:3.11-slim")
    # Build and run on the same base, so the virtual environment's interpreter link holds.
    for stage in stages:
        assert stage[0].arguments.split()[0] == "${PYTHON_IMAGE}"


def test_the_final_stage_holds_only_the_installed_environment() -> None:
    final = _final_stage()
    copies = [i.arguments for i in final if i.keyword in ("COPY", "ADD")]
    # No source tree, no wheels, no build tools: only what the build stage installed.
    assert copies == ["--from=build /opt/pacs /opt/pacs"]
    build = "\n".join(i.arguments for i in _stages()[0] if i.keyword == "RUN")
    assert "--without-pip" in build
    # Runtime dependencies only: the wheels, never the dev or test extras.
    assert "/wheels/*.whl" in build
    assert "[dev" not in build
    assert "[test" not in build
    # Both wheels are built: the generated client and the server.
    assert "./clients/python ." in build


def test_runtime_dependencies_come_only_from_the_hashed_lock() -> None:
    build = _stages()[0]
    copied = [shlex.split(i.arguments) for i in build if i.keyword == "COPY"]
    assert ["requirements/runtime.lock", "requirements/runtime.lock"] in copied
    assert _in_build_context("requirements/runtime.lock")
    installs = [
        shlex.split(command.strip())
        for i in build
        if i.keyword == "RUN"
        for command in i.arguments.split("&&")
        if " install " in command
    ]
    locked, wheels = installs
    # Every file checked against its hash, and never built from source on the way.
    assert locked[-2:] == ["-r", "requirements/runtime.lock"]
    assert {"--require-hashes", "--only-binary=:all:"} <= set(locked)
    # The wheels built here bring nothing else in, and the lock must hold what they need.
    assert "--no-deps" in wheels
    assert wheels[-1] == "/wheels/*.whl"
    run = " ".join(i.arguments for i in build if i.keyword == "RUN")
    assert run.rstrip().endswith("-m pip --python /opt/pacs/bin/python check")


def test_the_descriptor_and_migrations_reach_the_build() -> None:
    """The build copies them into the context the wheel is built from.

    (That the built wheel ships them and `envoy-config` finds them is tested end to end.)
    """
    copied = [
        shlex.split(i.arguments)[0].rstrip("/")
        for i in _stages()[0]
        if i.keyword == "COPY" and not i.arguments.startswith("--from")
    ]
    assert {"deploy/envoy", "migrations", "pacs_grpc", "clients/python", "clients/protos"} <= set(
        copied
    )
    # The local stack is a development tool: never copied, never in the build context.
    assert not [source for source in copied if source.startswith("devstack")]
    assert not _in_build_context("devstack/src/pacs_devstack/stack.py")
    for source in copied:
        assert _in_build_context(source + "/probe"), source
    for local_only in (
        ".venv/bin/python",
        ".data/postgres/PG_VERSION",
        ".git/HEAD",
        "tests/conftest.py",
    ):
        assert not _in_build_context(local_only), local_only


def _in_build_context(path: str) -> bool:
    """Whether .dockerignore lets `path` into the build context (last match wins)."""
    included = True
    for raw in (REPOSITORY / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        if pattern.startswith("**/"):
            matches = any(fnmatch.fnmatch(part, pattern[3:]) for part in path.split("/"))
        else:
            matches = fnmatch.fnmatch(path, pattern) or path.startswith(pattern + "/")
        if matches:
            included = negated
    return included


def test_the_image_runs_as_the_unprivileged_user_the_manifests_expect() -> None:
    user = _last(_final_stage(), "USER").arguments
    uid, _, gid = user.partition(":")
    assert uid.isdigit(), "a numeric uid lets Kubernetes verify runAsNonRoot"
    assert int(uid) != 0
    assert gid.isdigit()
    assert int(gid) != 0
    deployment = yaml.safe_load((REPOSITORY / "deploy" / "k8s" / "deployment.yaml").read_text())
    pod = deployment["spec"]["template"]["spec"]["securityContext"]
    assert (pod["runAsUser"], pod["runAsGroup"]) == (int(uid), int(gid))


def test_the_image_serves_by_default_and_leaves_health_to_kubernetes() -> None:
    instructions = _instructions(DOCKERFILE.read_text())
    assert not [i for i in instructions if i.keyword == "HEALTHCHECK"]
    final = _final_stage()
    entrypoint = json.loads(_last(final, "ENTRYPOINT").arguments)
    command = json.loads(_last(final, "CMD").arguments)
    # Exec form (JSON): the server is PID 1 and gets Kubernetes' SIGTERM itself.
    assert [*entrypoint, *command] == ["pacs-grpc", "serve"]
    exposed = {int(port) for port in _last(final, "EXPOSE").arguments.split()}
    assert exposed == {50051, 9464}
