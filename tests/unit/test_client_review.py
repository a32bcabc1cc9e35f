"""PacsClient's and `pacs review`'s review step, `update_project` and the reviewer role, over a
real gRPC connection to scripted Annotation, Mask and Identity services on loopback.

The servers are stand-ins: what is tested is what the client sends, which RPC it picks, how it
pages and retries, and what the CLI prints; tests/e2e covers the real server's answers.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from pacs.client import PacsClient, RetryPolicy
from pacs.client import commands as cli_commands
from pacs.client.cli import EXIT_FAILED, EXIT_USAGE, build_parser, main
from pacs.v1 import annotation_pb2, identity_pb2, mask_pb2, review_pb2

from tests.support.scripted import Script

FAST = RetryPolicy(max_attempts=3, initial_backoff=0.01, max_backoff=0.05)
State = review_pb2.ReviewState
# An annotation the caller wrote: the scripted server refuses its approval as the real one does.
OWN_WORK = 66
OWN_WORK_DETAILS = "approval: nobody approves their own work; ask another reviewer"
SUBMITTED_AT = Timestamp(seconds=1_700_000_000)


def reviewed(
    annotation_id: int, state: State.ValueType, comment: str = ""
) -> annotation_pb2.Annotation:
    return annotation_pb2.Annotation(
        id=annotation_id, project_id=3, annotation_type="polygon", study_uid="1.2.3",
        revision=2, etag="v2",
        review=review_pb2.Review(state=state, user_id=8, changed_at=SUBMITTED_AT, comment=comment),
    )  # fmt: skip


def reviewed_group(group_id: int, state: State.ValueType, comment: str = "") -> mask_pb2.MaskGroup:
    return mask_pb2.MaskGroup(
        id=group_id,
        status=mask_pb2.MASK_GROUP_STATUS_COMPLETE,
        review=review_pb2.Review(state=state, user_id=8, comment=comment),
    )


# Project 3's review queue as the server pages it: newest first, two annotations a page. The
# third was submitted by a user whose account is gone (user_id 0) at no recorded time.
QUEUE = {
    "": annotation_pb2.ListAnnotationsResponse(
        annotations=[
            reviewed(12, State.REVIEW_STATE_SUBMITTED),
            reviewed(11, State.REVIEW_STATE_SUBMITTED),
        ],
        next_page_token="page-2",
    ),
    "page-2": annotation_pb2.ListAnnotationsResponse(
        annotations=[
            annotation_pb2.Annotation(
                id=9,
                annotation_type="point",
                study_uid="1.2.9",
                review=review_pb2.Review(state=State.REVIEW_STATE_SUBMITTED),
            )
        ]
    ),
}


def submit(request: Any, context: grpc.ServicerContext) -> Message:
    return annotation_pb2.SubmitAnnotationForReviewResponse(
        annotation=reviewed(request.annotation_id, State.REVIEW_STATE_SUBMITTED)
    )


def approve(request: Any, context: grpc.ServicerContext) -> Message:
    if request.annotation_id == OWN_WORK:
        context.abort(grpc.StatusCode.PERMISSION_DENIED, OWN_WORK_DETAILS)
    return annotation_pb2.ApproveAnnotationResponse(
        annotation=reviewed(request.annotation_id, State.REVIEW_STATE_APPROVED)
    )


def reject(request: Any, context: grpc.ServicerContext) -> Message:
    return annotation_pb2.RejectAnnotationResponse(
        annotation=reviewed(request.annotation_id, State.REVIEW_STATE_REJECTED, request.comment)
    )


def list_annotations(request: Any, context: grpc.ServicerContext) -> Message:
    return QUEUE[request.page_token]


def submit_group(request: Any, context: grpc.ServicerContext) -> Message:
    return mask_pb2.SubmitMaskGroupForReviewResponse(
        mask_group=reviewed_group(request.group_id, State.REVIEW_STATE_SUBMITTED)
    )


def approve_group(request: Any, context: grpc.ServicerContext) -> Message:
    return mask_pb2.ApproveMaskGroupResponse(
        mask_group=reviewed_group(request.group_id, State.REVIEW_STATE_APPROVED)
    )


def reject_group(request: Any, context: grpc.ServicerContext) -> Message:
    return mask_pb2.RejectMaskGroupResponse(
        mask_group=reviewed_group(request.group_id, State.REVIEW_STATE_REJECTED, request.comment)
    )


def update_project(request: Any, context: grpc.ServicerContext) -> Message:
    project = identity_pb2.Project(id=request.project_id, name="lungs", description="before")
    for path in request.update_mask.paths:
        setattr(project, path, getattr(request.project, path))
    return identity_pb2.UpdateProjectResponse(project=project)


def add_member(request: Any, context: grpc.ServicerContext) -> Message:
    return identity_pb2.AddProjectMemberResponse(
        member=identity_pb2.ProjectMember(
            project_id=request.project_id, user_id=request.user_id, role=request.role
        )
    )


Answer = Callable[[Any, grpc.ServicerContext], Message]
SERVICES: dict[str, dict[str, tuple[type[Message], Answer]]] = {
    "pacs.v1.AnnotationService": {
        "SubmitAnnotationForReview": (annotation_pb2.SubmitAnnotationForReviewRequest, submit),
        "ApproveAnnotation": (annotation_pb2.ApproveAnnotationRequest, approve),
        "RejectAnnotation": (annotation_pb2.RejectAnnotationRequest, reject),
        "ListAnnotations": (annotation_pb2.ListAnnotationsRequest, list_annotations),
    },
    "pacs.v1.MaskService": {
        "SubmitMaskGroupForReview": (mask_pb2.SubmitMaskGroupForReviewRequest, submit_group),
        "ApproveMaskGroup": (mask_pb2.ApproveMaskGroupRequest, approve_group),
        "RejectMaskGroup": (mask_pb2.RejectMaskGroupRequest, reject_group),
    },
    "pacs.v1.IdentityService": {
        "UpdateProject": (identity_pb2.UpdateProjectRequest, update_project),
        "AddProjectMember": (identity_pb2.AddProjectMemberRequest, add_member),
    },
}


def handlers(script: Script) -> list[grpc.GenericRpcHandler[Any, Any]]:
    def method(name: str, request_type: type[Message], answer: Answer) -> Any:
        def behave(request: Any, context: grpc.ServicerContext) -> Message:
            script.record(name, request, context)
            return answer(request, context)

        return grpc.unary_unary_rpc_method_handler(
            behave,
            request_deserializer=request_type.FromString,
            response_serializer=lambda message: message.SerializeToString(),
        )

    return [
        grpc.method_handlers_generic_handler(
            service, {name: method(name, *spec) for name, spec in methods.items()}
        )
        for service, methods in SERVICES.items()
    ]


@pytest.fixture
def script() -> Script:
    return Script()


@pytest.fixture
def address(script: Script) -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers(handlers(script))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None).wait(5)


@pytest.fixture
def client(address: str) -> Iterator[PacsClient]:
    with PacsClient(address, "token-1", insecure=True, retry=FAST, timeout=10) as client:
        yield client


def test_annotation_steps_send_the_id_etag_and_comment(client: PacsClient, script: Script) -> None:
    assert client.submit(5, etag="v1").review.state == State.REVIEW_STATE_SUBMITTED
    assert client.approve(5, etag="v2").review.state == State.REVIEW_STATE_APPROVED
    rejected = client.reject(6, "the border misses the lesion", etag="v2")
    assert (rejected.id, rejected.review.comment) == (6, "the border misses the lesion")
    submitted = script.requests["SubmitAnnotationForReview"]
    assert [(r.annotation_id, r.etag) for r in submitted] == [(5, "v1")]
    assert [(r.annotation_id, r.etag) for r in script.requests["ApproveAnnotation"]] == [(5, "v2")]
    sent = script.requests["RejectAnnotation"][0]
    assert (sent.annotation_id, sent.etag, sent.comment) == (
        6, "v2", "the border misses the lesion",
    )  # fmt: skip
    assert not any(name.endswith("MaskGroup") for name in script.requests)


def test_with_a_group_id_the_steps_act_on_that_mask_group(
    client: PacsClient, script: Script
) -> None:
    submitted = client.submit(5, group_id=7)
    approved = client.approve(5, group_id=7)
    rejected = client.reject(5, "slice 3 is empty", group_id=8)
    assert isinstance(submitted, mask_pb2.MaskGroup)
    assert (submitted.id, submitted.review.state) == (7, State.REVIEW_STATE_SUBMITTED)
    assert approved.review.state == State.REVIEW_STATE_APPROVED
    assert (rejected.id, rejected.review.comment) == (8, "slice 3 is empty")
    for method in ("SubmitMaskGroupForReview", "ApproveMaskGroup"):
        assert [(r.annotation_id, r.group_id) for r in script.requests[method]] == [(5, 7)]
    sent = script.requests["RejectMaskGroup"][0]
    assert (sent.annotation_id, sent.group_id, sent.comment) == (5, 8, "slice 3 is empty")
    assert not any(name.endswith("Annotation") for name in script.requests)


@pytest.mark.parametrize(
    "step",
    [
        lambda client: client.submit(5, group_id=7, etag="v2"),
        lambda client: client.approve(5, group_id=7, etag="v2"),
        lambda client: client.reject(5, "why", group_id=7, etag="v2"),
    ],
)
def test_an_etag_with_a_group_is_refused_before_anything_is_sent(
    client: PacsClient, script: Script, step: Callable[[PacsClient], object]
) -> None:
    with pytest.raises(ValueError, match="etag is an annotation's"):
        step(client)
    assert script.requests == {}


@pytest.mark.parametrize(
    ("method", "step"),
    [
        ("SubmitAnnotationForReview", lambda client: client.submit(5)),
        ("ApproveAnnotation", lambda client: client.approve(5, etag="v2")),
        ("RejectAnnotation", lambda client: client.reject(5, "why")),
        ("SubmitMaskGroupForReview", lambda client: client.submit(5, group_id=7)),
        ("ApproveMaskGroup", lambda client: client.approve(5, group_id=7)),
        ("RejectMaskGroup", lambda client: client.reject(5, "why", group_id=7)),
    ],
)
def test_review_steps_are_never_retried(
    client: PacsClient, script: Script, method: str, step: Callable[[PacsClient], object]
) -> None:
    script.failures[method] = 1
    with pytest.raises(grpc.RpcError) as raised:
        step(client)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert len(script.requests[method]) == 1


def test_review_queue_asks_for_submitted_annotations_on_every_page(
    client: PacsClient, script: Script
) -> None:
    assert [a.id for a in client.review_queue(3)] == [12, 11, 9]
    sent = script.requests["ListAnnotations"]
    assert [(r.project_id, r.review_state, r.page_token) for r in sent] == [
        (3, State.REVIEW_STATE_SUBMITTED, ""),
        (3, State.REVIEW_STATE_SUBMITTED, "page-2"),
    ]


def test_list_annotations_filters_by_review_state_only_when_asked(
    client: PacsClient, script: Script
) -> None:
    list(client.list_annotations(project_id=3))
    list(client.list_annotations(project_id=3, review_state=State.REVIEW_STATE_APPROVED))
    states = [r.review_state for r in script.requests["ListAnnotations"] if not r.page_token]
    assert states == [State.REVIEW_STATE_UNSPECIFIED, State.REVIEW_STATE_APPROVED]


def test_update_project_names_only_the_fields_given(client: PacsClient, script: Script) -> None:
    # False is a value to set, not "leave as it is": it must be in the mask.
    project = client.update_project(3, export_unapproved=False)
    assert (project.export_unapproved, project.description) == (False, "before")
    both = client.update_project(3, description="liver study", export_unapproved=True)
    assert (both.export_unapproved, both.description) == (True, "liver study")
    sent = script.requests["UpdateProject"]
    assert [(r.project_id, list(r.update_mask.paths)) for r in sent] == [
        (3, ["export_unapproved"]),
        (3, ["description", "export_unapproved"]),
    ]
    assert sent[1].project.export_unapproved is True
    with pytest.raises(ValueError, match="nothing to change"):
        client.update_project(3)
    assert len(script.requests["UpdateProject"]) == 2


def test_update_project_is_retried_as_the_contract_allows(
    client: PacsClient, script: Script
) -> None:
    script.failures["UpdateProject"] = 1
    assert client.update_project(3, export_unapproved=True).export_unapproved is True
    assert len(script.requests["UpdateProject"]) == 2


# -- the CLI ------------------------------------------------------------------------------------


Pacs = Callable[..., tuple[int, str, str]]


@pytest.fixture
def pacs(
    address: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> Pacs:
    """`pacs ARGS...` in this process, against the scripted server: (exit code, out, err)."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.setenv("PACS_SERVER", address)
    monkeypatch.setenv("PACS_TOKEN", "token-1")
    monkeypatch.setenv("PACS_INSECURE", "1")

    def run(*args: str) -> tuple[int, str, str]:
        try:
            code = main(list(args))
        except SystemExit as exit_:  # argparse's own usage errors
            code = int(exit_.code or 0)
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def test_cli_review_steps_on_an_annotation_say_what_they_did(pacs: Pacs, script: Script) -> None:
    assert pacs("review", "submit", "5", "--etag", "v1") == (
        0, "submitted annotation 5 (revision 2, etag v2)\n", "",
    )  # fmt: skip
    assert pacs("review", "approve", "5", "--etag", "v2")[:2] == (
        0,
        "approved annotation 5 (revision 2, etag v2)\n",
    )
    assert pacs("review", "reject", "6", "--comment", "label the nodule")[:2] == (
        0, "rejected annotation 6 (revision 2, etag v2)\n",
    )  # fmt: skip
    assert script.requests["SubmitAnnotationForReview"][0].etag == "v1"
    assert script.requests["RejectAnnotation"][0].comment == "label the nodule"


def test_cli_review_steps_with_group_act_on_the_mask_group(pacs: Pacs, script: Script) -> None:
    assert pacs("review", "submit", "5", "--group", "7")[:2] == (
        0, "submitted mask group 7 of annotation 5\n",
    )  # fmt: skip
    assert pacs("review", "approve", "5", "--group", "7")[:2] == (
        0, "approved mask group 7 of annotation 5\n",
    )  # fmt: skip
    code, out, _ = pacs("review", "reject", "5", "--group", "8", "--comment", "redo", "--json")
    assert code == 0
    shown = json.loads(out)
    assert (shown["id"], shown["review"]["state"], shown["review"]["comment"]) == (
        "8", "REVIEW_STATE_REJECTED", "redo",
    )  # fmt: skip
    assert [r.group_id for r in script.requests["RejectMaskGroup"]] == [8]
    assert "SubmitAnnotationForReview" not in script.requests


def test_cli_self_approval_is_one_permission_denied_line(pacs: Pacs) -> None:
    assert pacs("review", "approve", str(OWN_WORK), "--etag", "v2") == (
        EXIT_FAILED, "", f"error: PERMISSION_DENIED: {OWN_WORK_DETAILS}\n",
    )  # fmt: skip


def test_cli_approving_an_annotation_needs_its_etag(pacs: Pacs, script: Script) -> None:
    code, _, err = pacs("review", "approve", "5")
    assert (code, "--etag is required to approve an annotation" in err) == (EXIT_USAGE, True)
    assert "ApproveAnnotation" not in script.requests


def test_cli_review_usage_errors_exit_2_and_send_nothing(pacs: Pacs, script: Script) -> None:
    assert pacs("review", "submit", "5", "--group", "7", "--etag", "v1") == (
        EXIT_USAGE, "", "error: --etag is an annotation's; leave it out with --group\n",
    )  # fmt: skip
    assert pacs("review", "approve", "5", "--group", "0") == (
        EXIT_USAGE, "", "error: --group must be a mask group id\n",
    )  # fmt: skip
    code, _, err = pacs("review", "reject", "5")
    assert code == EXIT_USAGE
    assert "the following arguments are required: --comment" in err
    assert script.requests == {}


def test_cli_review_queue_prints_one_row_an_annotation(pacs: Pacs) -> None:
    code, out, err = pacs("review", "queue", "--project", "3")
    assert (code, err) == (0, "")
    assert [line.split() for line in out.splitlines()] == [
        ["12", "polygon", "1.2.3", "user", "8", "2023-11-14T22:13:20Z"],
        ["11", "polygon", "1.2.3", "user", "8", "2023-11-14T22:13:20Z"],
        ["9", "point", "1.2.9", "user", "-", "-"],
    ]
    rows = json.loads(pacs("review", "queue", "--project", "3", "--json")[1])
    assert [(row["id"], row["review"]["state"]) for row in rows] == [
        ("12", "REVIEW_STATE_SUBMITTED"),
        ("11", "REVIEW_STATE_SUBMITTED"),
        ("9", "REVIEW_STATE_SUBMITTED"),
    ]


def test_cli_grants_the_reviewer_role(pacs: Pacs, script: Script) -> None:
    assert pacs("projects", "add-member", "3", "9", "--role", "reviewer")[:2] == (
        0, "user 9 is reviewer in project 3\n",
    )  # fmt: skip
    assert script.requests["AddProjectMember"][0].role == identity_pb2.PROJECT_ROLE_REVIEWER


def test_cli_role_names_are_the_commands_roles() -> None:
    parser = build_parser()
    projects = _subcommand(parser, "projects")
    add_member = _subcommand(projects, "add-member")
    role = next(a for a in add_member._actions if a.dest == "role")
    assert role.choices is not None
    assert sorted(role.choices) == sorted(cli_commands._ROLES)


def _subcommand(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    child: argparse.ArgumentParser = action.choices[name]
    return child


def test_cli_projects_update_sends_only_what_is_given(pacs: Pacs, script: Script) -> None:
    assert pacs("projects", "update", "3", "--export-unapproved", "on")[:2] == (
        0, "updated project 3 lungs (export_unapproved on)\n",
    )  # fmt: skip
    sent = script.requests["UpdateProject"][0]
    assert (list(sent.update_mask.paths), sent.project.export_unapproved) == (
        ["export_unapproved"], True,
    )  # fmt: skip
    assert pacs("projects", "update", "3") == (
        EXIT_USAGE, "", "error: nothing to change: give --description or --export-unapproved\n",
    )  # fmt: skip
    assert len(script.requests["UpdateProject"]) == 1
