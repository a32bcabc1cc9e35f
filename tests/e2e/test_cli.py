"""`pacs`, the command line, run as a user runs it (a subprocess) against the real stack."""

from __future__ import annotations

import argparse
import json
import os
import stat
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
from google.protobuf import field_mask_pb2
from pacs.client import PacsClient
from pacs.client.cli import build_parser
from pacs.v1 import annotation_pb2

from pacs_devstack.issuer import DevIssuer
from pacs_devstack.stack import LocalStack
from tests.support.png import png
from tests.support.users import ADMIN_ROLE

PACS = Path(sys.executable).parent / "pacs"
Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def address(live_stack: LocalStack) -> str:
    assert live_stack.server is not None
    return live_stack.server.address


@pytest.fixture(scope="module")
def username() -> str:
    return f"cli-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def token(issuer: DevIssuer, username: str) -> str:
    return issuer.mint(username, realm_roles=[ADMIN_ROLE])


@pytest.fixture
def config_home(tmp_path: Path) -> Path:
    return tmp_path / "config"


@pytest.fixture
def pacs(address: str, token: str, config_home: Path) -> Run:
    """`pacs ARGS...` with PACS_SERVER/PACS_TOKEN set (env=None: no PACS_* at all)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PACS_")}
    clean["XDG_CONFIG_HOME"] = str(config_home)
    logged_in = clean | {"PACS_SERVER": address, "PACS_TOKEN": token, "PACS_INSECURE": "1"}

    def run(
        *args: str, env: dict[str, str] | None = logged_in, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(PACS), *args], env=clean if env is None else env, input=stdin,
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip

    return run


@pytest.fixture(scope="module")
def project_id(address: str, token: str) -> Iterator[int]:
    with PacsClient(address, token, insecure=True) as client:
        yield client.create_project(f"cli-{uuid.uuid4().hex[:8]}").id


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stderr
    return done.stdout


def command_paths() -> list[list[str]]:
    """Every command and subcommand of the parser, as the words that reach it."""
    paths: list[list[str]] = []

    def walk(parser: argparse.ArgumentParser, prefix: list[str]) -> None:
        paths.append(prefix)
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    walk(child, [*prefix, name])

    walk(build_parser(), [])
    return paths


def test_every_command_has_help(pacs: Run) -> None:
    paths = command_paths()
    assert ["masks", "push"] in paths
    assert ["annotations", "create"] in paths
    for history_command in ("history", "restore", "delete", "undelete"):
        assert ["annotations", history_command] in paths
    for review_command in ("submit", "approve", "reject", "queue"):
        assert ["review", review_command] in paths
    assert ["projects", "update"] in paths
    assert len(paths) >= 22
    for path in paths:
        done = pacs(*path, "--help")
        assert done.returncode == 0, (path, done.stderr)
        assert done.stdout.startswith(f"usage: pacs {' '.join(path)}".rstrip()), path


def test_whoami_names_the_tokens_user(pacs: Run, username: str) -> None:
    out = ok(pacs("whoami"))
    assert out.startswith(f"{username} (user ")
    assert "platform administrator" in out
    as_json = json.loads(ok(pacs("whoami", "--json")))
    assert as_json["user"]["username"] == username


def test_annotations_create_list_and_get(pacs: Run, project_id: int) -> None:
    created = json.loads(
        ok(
            pacs(
                "annotations", "create", "--project", str(project_id), "--study", "1.2.3.4",
                "--type", "polygon", "--data", '{"points": [[1, 2], [3, 4], [5, 6]]}',
                "--measurements", '{"area_mm2": 12.5}', "--json",
            )
        )
    )  # fmt: skip
    annotation_id = int(created["id"])
    assert created["annotation_data"] == {"points": [[1, 2], [3, 4], [5, 6]]}
    listed = ok(pacs("annotations", "list", "--project", str(project_id)))
    assert listed.split()[0] == str(annotation_id)
    assert "polygon" in listed
    listed_json = json.loads(
        ok(pacs("annotations", "list", "--project", str(project_id), "--json"))
    )
    assert [int(a["id"]) for a in listed_json] == [annotation_id]
    shown = ok(pacs("annotations", "get", str(annotation_id)))
    assert f"id: {annotation_id}" in shown
    assert "study_uid: 1.2.3.4" in shown


def test_a_failing_call_prints_one_line_and_exits_1(pacs: Run) -> None:
    done = pacs("annotations", "get", "987654321")
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr == "error: NOT_FOUND: annotation not found\n"


def create_polygon(pacs: Run, project_id: int, points: list[list[int]]) -> int:
    created = ok(
        pacs("annotations", "create", "--project", str(project_id), "--study", "1.2.3.7",
             "--type", "polygon", "--data", json.dumps({"points": points}), "--json")
    )  # fmt: skip
    return int(json.loads(created)["id"])


def update_points(address: str, token: str, annotation_id: int, points: list[list[int]]) -> None:
    # The CLI has no update command; the client's stub makes the second revision.
    change = annotation_pb2.Annotation()
    change.annotation_data.update({"points": points})
    with PacsClient(address, token, insecure=True) as client:
        client.annotations.UpdateAnnotation(
            annotation_pb2.UpdateAnnotationRequest(
                annotation_id=annotation_id, annotation=change,
                update_mask=field_mask_pb2.FieldMask(paths=["annotation_data"]),
            )
        )  # fmt: skip


def test_annotations_history_get_revision_and_restore(
    pacs: Run, project_id: int, address: str, token: str
) -> None:
    old, new = [[1, 1], [2, 2], [3, 1]], [[5, 5], [6, 6], [7, 5]]
    annotation_id = create_polygon(pacs, project_id, old)
    update_points(address, token, annotation_id, new)
    user_id = str(json.loads(ok(pacs("whoami", "--json")))["user"]["id"])

    history = ok(pacs("annotations", "history", str(annotation_id)))
    rows = [line.split() for line in history.splitlines()]
    assert [row[:4] for row in rows] == [["2", "updated", "user", user_id],
                                         ["1", "created", "user", user_id]]  # fmt: skip
    assert rows[0][5] == "annotation_data"
    assert "annotation_data" in rows[1][5].split(",")
    as_json = json.loads(ok(pacs("annotations", "history", str(annotation_id), "--json")))
    assert [(r["revision"], r["action"]) for r in as_json] == [
        ("2", "ANNOTATION_REVISION_ACTION_UPDATED"), ("1", "ANNOTATION_REVISION_ACTION_CREATED"),
    ]  # fmt: skip

    first = json.loads(
        ok(pacs("annotations", "get", str(annotation_id), "--revision", "1", "--json"))
    )
    assert (first["revision"], first["annotation_data"]) == ("1", {"points": old})
    shown = ok(pacs("annotations", "get", str(annotation_id), "--revision", "1"))
    fields = dict(line.split(": ", 1) for line in shown.splitlines())
    assert (fields["revision"], json.loads(fields["annotation_data"])) == ("1", {"points": old})
    now = json.loads(ok(pacs("annotations", "get", str(annotation_id), "--json")))
    assert (now["revision"], now["annotation_data"]) == ("2", {"points": new})

    restored = ok(pacs("annotations", "restore", str(annotation_id), "1", "--etag", now["etag"]))
    assert restored == (
        f"restored revision 1 of annotation {annotation_id} as revision 3 (etag v3)\n"
    )
    after = json.loads(ok(pacs("annotations", "get", str(annotation_id), "--json")))
    assert (after["revision"], after["annotation_data"]) == ("3", {"points": old})
    newest = ok(pacs("annotations", "history", str(annotation_id))).splitlines()[0].split()
    assert newest[:2] == ["3", "restored"]
    assert newest[-3:] == ["restored", "from", "1"]


def test_restoring_with_a_stale_etag_fails_as_aborted(
    pacs: Run, project_id: int, address: str, token: str
) -> None:
    annotation_id = create_polygon(pacs, project_id, [[1, 1], [2, 2], [3, 1]])
    update_points(address, token, annotation_id, [[4, 4], [5, 5], [6, 4]])
    done = pacs("annotations", "restore", str(annotation_id), "1", "--etag", "v1")
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.startswith("error: ABORTED: ")
    assert done.stderr.count("\n") == 1
    unchanged = json.loads(ok(pacs("annotations", "get", str(annotation_id), "--json")))
    assert unchanged["revision"] == "2"


def test_a_deleted_annotation_comes_back_with_undelete(pacs: Run, project_id: int) -> None:
    points = [[1, 1], [2, 2], [3, 1]]
    annotation_id = create_polygon(pacs, project_id, points)
    deleted = ok(pacs("annotations", "delete", str(annotation_id)))
    assert deleted.startswith(f"moved annotation {annotation_id} to the trash")
    gone = pacs("annotations", "get", str(annotation_id))
    assert (gone.returncode, gone.stderr) == (1, "error: NOT_FOUND: annotation not found\n")
    back = json.loads(ok(pacs("annotations", "undelete", str(annotation_id), "--json")))
    assert (int(back["id"]), back["annotation_data"]) == (annotation_id, {"points": points})
    shown = json.loads(ok(pacs("annotations", "get", str(annotation_id), "--json")))
    assert shown["annotation_data"] == {"points": points}


def test_a_bad_token_is_one_line_too(pacs: Run, address: str, config_home: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACS_")}
    env |= {"XDG_CONFIG_HOME": str(config_home), "PACS_SERVER": address, "PACS_INSECURE": "1"}
    done = pacs("whoami", env=env | {"PACS_TOKEN": "not-a-jwt"})
    assert done.returncode == 1
    assert done.stderr.startswith("error: UNAUTHENTICATED: ")
    assert done.stderr.count("\n") == 1
    assert "not-a-jwt" not in done.stderr


def test_without_a_login_the_cli_says_how_to_log_in(pacs: Run) -> None:
    done = pacs("projects", "list", env=None)
    assert done.returncode == 1
    assert done.stderr == (
        "error: not logged in: run 'pacs login', or set PACS_SERVER and PACS_TOKEN\n"
    )


def test_usage_errors_exit_2(pacs: Run) -> None:
    assert pacs("masks", "push", "somewhere").returncode == 2
    assert pacs("annotations", "get", "not-a-number").returncode == 2
    negative = pacs("annotations", "get", "1", "--revision", "-1")
    assert (negative.returncode, negative.stderr) == (
        2, "error: --revision must be 0 (now) or a revision number\n"
    )  # fmt: skip
    assert pacs("annotations", "restore", "1").returncode == 2
    done = pacs("annotations", "create", "--project", "1", "--study", "1.2", "--type", "point",
                "--data", "{not json")  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.startswith("error: --data is not valid JSON")


def test_login_saves_the_token_privately_and_never_prints_it(
    pacs: Run, address: str, token: str, username: str, config_home: Path
) -> None:
    done = pacs("login", "--server", address, "--insecure", "--token-stdin", env=None, stdin=token)
    out = ok(done)
    assert out.startswith(f"logged in to {address} as {username} (user ")
    assert token not in done.stdout + done.stderr
    saved = config_home / "pacs" / "config.json"
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    # Later commands need no environment at all.
    assert ok(pacs("whoami", env=None)).startswith(username)
    assert ok(pacs("logout", env=None)) == "logged out\n"
    assert not saved.exists()
    assert pacs("whoami", env=None).returncode == 1


@pytest.fixture
def token_endpoint(issuer: DevIssuer) -> Iterator[tuple[str, list[dict[str, list[str]]]]]:
    """Keycloak's token endpoint for one client, issuing the dev issuer's real tokens."""
    requests: list[dict[str, list[str]]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            form = parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode())
            requests.append(form)
            if form.get("client_secret") == ["pipeline-secret"]:
                status = 200
                body = {
                    "access_token": issuer.mint("svc-seg-model", client_id="seg-model"),
                    "expires_in": 300,
                    "token_type": "Bearer",
                }
            else:
                status, body = 401, {"error": "unauthorized_client"}
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/token", requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_login_with_client_credentials_fetches_tokens_itself(
    pacs: Run,
    address: str,
    config_home: Path,
    token_endpoint: tuple[str, list[dict[str, list[str]]]],
) -> None:
    url, requests = token_endpoint
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACS_")}
    env |= {"XDG_CONFIG_HOME": str(config_home)}
    done = pacs(
        "login", "--server", address, "--insecure", "--client-id", "seg-model",
        "--token-url", url, env=env | {"PACS_CLIENT_SECRET": "pipeline-secret"},
    )  # fmt: skip
    assert ok(done).startswith(f"logged in to {address} as svc-seg-model (user ")
    assert "pipeline-secret" not in done.stdout + done.stderr
    assert requests[0]["grant_type"] == ["client_credentials"]
    # Each later command gets its own token from the endpoint, with the saved secret.
    assert ok(pacs("whoami", env=env)).startswith("svc-seg-model (user ")
    assert len(requests) == 2
    wrong = pacs(
        "login", "--server", address, "--insecure", "--client-id", "seg-model",
        "--token-url", url, env=env, stdin="not-the-secret\n",
    )  # fmt: skip
    assert wrong.returncode == 1
    assert wrong.stderr == (
        "error: token endpoint refused the client: HTTP 401: unauthorized_client\n"
    )


def test_login_with_a_refused_token_saves_nothing(
    pacs: Run, address: str, config_home: Path
) -> None:
    done = pacs("login", "--server", address, "--insecure", "--token-stdin", env=None,
                stdin="garbage")  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.startswith("error: UNAUTHENTICATED")
    assert not (config_home / "pacs" / "config.json").exists()


def test_projects_create_list_and_members(pacs: Run, username: str) -> None:
    name = f"cli-project-{uuid.uuid4().hex[:8]}"
    created = ok(pacs("projects", "create", name, "--description", "from the CLI"))
    project_id = int(created.split()[2])
    assert created == f"created project {project_id} {name}\n"
    listed = ok(pacs("projects", "list"))
    assert any(line.split() == [str(project_id), name] for line in listed.splitlines())
    shown = json.loads(ok(pacs("projects", "get", str(project_id), "--json")))
    assert shown["description"] == "from the CLI"
    assert ok(pacs("projects", "members", str(project_id), "--json")) is not None


def test_masks_push_prints_a_summary_and_pull_returns_the_same_bytes(
    pacs: Run, project_id: int, tmp_path: Path
) -> None:
    created = json.loads(
        ok(pacs("annotations", "create", "--project", str(project_id), "--study", "1.2.5",
                "--type", "segmentation", "--json"))
    )  # fmt: skip
    annotation_id = created["id"]
    series = tmp_path / "series"
    series.mkdir()
    images = {f"slice_{i}.png": png(64, 48, seed=i) for i in range(5)}
    for name, data in images.items():
        (series / name).write_bytes(data)
    pushed = ok(
        pacs("masks", "push", str(series), "--annotation", str(annotation_id), "--name", "liver",
             "--model", "unet", "--modality", "CT")
    )  # fmt: skip
    assert pushed.startswith("pushed 5 slices (")
    assert pushed.rstrip().endswith("group COMPLETE, 5/5 slices")
    group_id = pushed.split(" to group ")[1].split()[0]
    groups = ok(pacs("masks", "groups", "--annotation", str(annotation_id)))
    assert groups.split()[:3] == [group_id, "COMPLETE", "5/5"]

    again = ok(
        pacs("masks", "push", str(series), "--annotation", str(annotation_id), "--group", group_id)
    )
    assert again.startswith("pushed 0 slices")
    assert "5 already recorded" in again

    pulled = tmp_path / "pulled"
    out = ok(pacs("masks", "pull", group_id, str(pulled), "--annotation", str(annotation_id)))
    assert out.startswith("pulled 5 slices (")
    for i in range(5):
        assert (pulled / f"{i:04d}.png").read_bytes() == images[f"slice_{i}.png"]


def test_pushing_a_folder_without_slices_fails_in_one_line(pacs: Run, tmp_path: Path) -> None:
    done = pacs("masks", "push", str(tmp_path), "--annotation", "1")
    assert done.returncode == 1
    assert done.stderr == f"error: no files matching *.png in {tmp_path}\n"


# -- review ------------------------------------------------------------------------------------


@pytest.fixture
def as_reviewer(issuer: DevIssuer, address: str, config_home: Path) -> dict[str, str]:
    """The environment of `pacs` run by a user with no platform role (a reviewer, once added)."""
    token = issuer.mint(f"cli-reviewer-{uuid.uuid4().hex[:8]}")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PACS_")}
    return clean | {
        "XDG_CONFIG_HOME": str(config_home), "PACS_SERVER": address, "PACS_TOKEN": token,
        "PACS_INSECURE": "1",
    }  # fmt: skip


def one_line_error(done: subprocess.CompletedProcess[str], status: str) -> str:
    """The message of a call that failed with `status`, checked to be one line, exit 1."""
    assert (done.returncode, done.stdout) == (1, ""), done.stderr
    assert done.stderr.startswith(f"error: {status}: ")
    assert done.stderr.count("\n") == 1
    return done.stderr.removeprefix(f"error: {status}: ").rstrip()


def review_project(pacs: Run, reviewer: dict[str, str]) -> int:
    """A new project, made by the module's administrator, with `reviewer` as its reviewer."""
    created = ok(pacs("projects", "create", f"cli-review-{uuid.uuid4().hex[:8]}"))
    project_id = int(created.split()[2])
    reviewer_id = str(json.loads(ok(pacs("whoami", "--json", env=reviewer)))["user"]["id"])
    added = ok(pacs("projects", "add-member", str(project_id), reviewer_id, "--role", "reviewer"))
    assert added == f"user {reviewer_id} is reviewer in project {project_id}\n"
    return project_id


def test_annotations_are_submitted_reviewed_and_queued(
    pacs: Run, as_reviewer: dict[str, str]
) -> None:
    project_id = review_project(pacs, as_reviewer)
    me = str(json.loads(ok(pacs("whoami", "--json")))["user"]["id"])
    to_approve, to_reject, waiting, draft = (
        create_polygon(pacs, project_id, [[1, 1], [2, 2], [3, 1]]) for _ in range(4)
    )
    for annotation_id in (to_approve, to_reject, waiting):
        submitted = ok(pacs("review", "submit", str(annotation_id), "--etag", "v1"))
        assert submitted == f"submitted annotation {annotation_id} (revision 2, etag v2)\n"

    queue = ok(pacs("review", "queue", "--project", str(project_id), env=as_reviewer))
    rows = {row[0]: row for row in (line.split() for line in queue.splitlines())}
    assert set(rows) == {str(to_approve), str(to_reject), str(waiting)}
    assert rows[str(waiting)][:5] == [str(waiting), "polygon", "1.2.3.7", "user", me]
    assert len(rows[str(waiting)]) == 6  # and when it was submitted

    no_etag = pacs("review", "approve", str(to_approve), env=as_reviewer)
    assert (no_etag.returncode, "--etag is required" in no_etag.stderr) == (2, True)
    own_work = one_line_error(
        pacs("review", "approve", str(to_approve), "--etag", "v2"), "PERMISSION_DENIED"
    )
    assert "own work" in own_work
    approved = ok(pacs("review", "approve", str(to_approve), "--etag", "v2", env=as_reviewer))
    assert approved == f"approved annotation {to_approve} (revision 3, etag v3)\n"
    rejected = ok(pacs("review", "reject", str(to_reject), "--comment", "close the polygon",
                       env=as_reviewer))  # fmt: skip
    assert rejected == f"rejected annotation {to_reject} (revision 3, etag v3)\n"
    shown = json.loads(ok(pacs("annotations", "get", str(to_reject), "--json")))
    assert shown["review"]["state"] == "REVIEW_STATE_REJECTED"
    assert shown["review"]["comment"] == "close the polygon"

    as_json = json.loads(
        ok(pacs("review", "queue", "--project", str(project_id), "--json", env=as_reviewer))
    )
    assert [int(a["id"]) for a in as_json] == [waiting]
    assert as_json[0]["review"]["state"] == "REVIEW_STATE_SUBMITTED"
    listed = ok(pacs("annotations", "list", "--project", str(project_id)))
    states = {line.split()[0]: line.split()[-1] for line in listed.splitlines()}
    assert states == {str(to_approve): "approved", str(to_reject): "rejected",
                      str(waiting): "submitted", str(draft): "draft"}  # fmt: skip


def test_review_refusals_are_one_line(pacs: Run, as_reviewer: dict[str, str]) -> None:
    project_id = review_project(pacs, as_reviewer)
    annotation_id = str(create_polygon(pacs, project_id, [[1, 1], [2, 2], [3, 1]]))
    # Only what was submitted is reviewed; a reviewer never writes.
    not_submitted = pacs("review", "approve", annotation_id, "--etag", "v1", env=as_reviewer)
    assert "only one that is submitted" in one_line_error(not_submitted, "FAILED_PRECONDITION")
    one_line_error(pacs("review", "submit", annotation_id, env=as_reviewer), "PERMISSION_DENIED")
    ok(pacs("review", "submit", annotation_id))
    empty = pacs("review", "reject", annotation_id, "--comment", " ", env=as_reviewer)
    assert one_line_error(empty, "INVALID_ARGUMENT").startswith("comment: ")
    stale = pacs("review", "approve", annotation_id, "--etag", "v1", env=as_reviewer)
    one_line_error(stale, "ABORTED")
    no_comment = pacs("review", "reject", annotation_id, env=as_reviewer)
    assert no_comment.returncode == 2
    assert "the following arguments are required: --comment" in no_comment.stderr
    etag_and_group = pacs("review", "submit", annotation_id, "--group", "3", "--etag", "v2")
    assert (etag_and_group.returncode, etag_and_group.stderr) == (
        2, "error: --etag is an annotation's; leave it out with --group\n",
    )  # fmt: skip
    # Still waiting: nothing above changed it.
    shown = json.loads(ok(pacs("annotations", "get", annotation_id, "--json")))
    assert (shown["revision"], shown["review"]["state"]) == ("2", "REVIEW_STATE_SUBMITTED")


def test_a_mask_group_is_reviewed_with_group(
    pacs: Run, as_reviewer: dict[str, str], tmp_path: Path
) -> None:
    project_id = review_project(pacs, as_reviewer)
    annotation_id = str(create_polygon(pacs, project_id, [[1, 1], [2, 2], [3, 1]]))
    series = tmp_path / "series"
    series.mkdir()
    for i in range(2):
        (series / f"{i:04d}.png").write_bytes(png(32, 32, seed=i))
    pushed = ok(pacs("masks", "push", str(series), "--annotation", annotation_id, "--no-progress"))
    group_id = pushed.split(" to group ")[1].split()[0]
    group = ["--group", group_id]

    def review_state() -> str:
        groups = ok(pacs("masks", "groups", "--annotation", annotation_id))
        row = next(line.split() for line in groups.splitlines() if line.split()[0] == group_id)
        return row[3]

    assert review_state() == "draft"
    what = f"mask group {group_id} of annotation {annotation_id}"
    assert ok(pacs("review", "submit", annotation_id, *group)) == f"submitted {what}\n"
    rejected = ok(pacs("review", "reject", annotation_id, *group, "--comment", "slice 1 is off",
                       env=as_reviewer))  # fmt: skip
    assert rejected == f"rejected {what}\n"
    assert review_state() == "rejected"
    ok(pacs("review", "submit", annotation_id, *group))
    one_line_error(pacs("review", "approve", annotation_id, *group), "PERMISSION_DENIED")
    approved = json.loads(
        ok(pacs("review", "approve", annotation_id, *group, "--json", env=as_reviewer))
    )
    assert (approved["id"], approved["review"]["state"]) == (group_id, "REVIEW_STATE_APPROVED")
    assert review_state() == "approved"


def test_projects_update_lets_owners_allow_unapproved_exports(
    pacs: Run, as_reviewer: dict[str, str]
) -> None:
    project_id = review_project(pacs, as_reviewer)
    name = json.loads(ok(pacs("projects", "get", str(project_id), "--json")))["name"]
    updated = ok(pacs("projects", "update", str(project_id), "--export-unapproved", "on"))
    assert updated == f"updated project {project_id} {name} (export_unapproved on)\n"
    shown = json.loads(ok(pacs("projects", "get", str(project_id), "--json")))
    assert shown["export_unapproved"] is True
    described = ok(pacs("projects", "update", str(project_id), "--description", "liver CTs"))
    # Only what is given changes.
    assert described.endswith("(export_unapproved on)\n")
    refused = pacs("projects", "update", str(project_id), "--export-unapproved", "off",
                   env=as_reviewer)  # fmt: skip
    one_line_error(refused, "PERMISSION_DENIED")
    nothing = pacs("projects", "update", str(project_id))
    assert (nothing.returncode, nothing.stderr) == (
        2, "error: nothing to change: give --description or --export-unapproved\n",
    )  # fmt: skip
