"""PacsClient's and `pacs annotations`' history, restore, delete and undelete, over a real gRPC
connection to a scripted AnnotationService on loopback.

The server is a stand-in: what is tested is what the client sends, how it pages and retries,
and what the CLI prints; tests/e2e covers the real server's answers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from pacs.client import PacsClient, RetryPolicy
from pacs.client.cli import EXIT_FAILED, main
from pacs.v1 import annotation_pb2

from tests.support.scripted import Script

FAST = RetryPolicy(max_attempts=3, initial_backoff=0.01, max_backoff=0.05)
ACTION = annotation_pb2.AnnotationRevisionAction
STALE_ETAG = "v1"


def at(seconds: int) -> Timestamp:
    return Timestamp(seconds=seconds)


# Annotation 5's history as the server pages it: newest first, two revisions a page.
PAGES = {
    "": annotation_pb2.ListAnnotationRevisionsResponse(
        revisions=[
            annotation_pb2.AnnotationRevision(
                revision=3,
                action=ACTION.ANNOTATION_REVISION_ACTION_RESTORED,
                user_id=8,
                created_at=at(1_700_000_300),
                restored_from_revision=1,
            ),
            annotation_pb2.AnnotationRevision(
                revision=2,
                action=ACTION.ANNOTATION_REVISION_ACTION_UPDATED,
                user_id=8,
                changed_fields=["annotation_data", "viewer_software"],
                created_at=at(1_700_000_200),
            ),
        ],
        next_page_token="page-2",
    ),
    "page-2": annotation_pb2.ListAnnotationRevisionsResponse(
        revisions=[
            annotation_pb2.AnnotationRevision(
                revision=1,
                action=ACTION.ANNOTATION_REVISION_ACTION_CREATED,
                changed_fields=["annotation_type", "annotation_data"],
                created_at=at(1_700_000_100),
            ),
        ]
    ),
}


def annotation(revision: int) -> annotation_pb2.Annotation:
    return annotation_pb2.Annotation(id=5, project_id=3, revision=revision, etag=f"v{revision}")


def list_revisions(request: Any, context: grpc.ServicerContext) -> Message:
    return PAGES[request.page_token]


def get(request: Any, context: grpc.ServicerContext) -> Message:
    return annotation_pb2.GetAnnotationResponse(annotation=annotation(request.revision or 3))


def restore(request: Any, context: grpc.ServicerContext) -> Message:
    if request.etag == STALE_ETAG:
        context.abort(
            grpc.StatusCode.ABORTED,
            "etag: the annotation changed since it was read; read it again and retry",
        )
    return annotation_pb2.RestoreAnnotationRevisionResponse(annotation=annotation(4))


def delete(request: Any, context: grpc.ServicerContext) -> Message:
    return annotation_pb2.DeleteAnnotationResponse()


def undelete(request: Any, context: grpc.ServicerContext) -> Message:
    return annotation_pb2.UndeleteAnnotationResponse(annotation=annotation(5))


ANSWERS: dict[str, tuple[type[Message], Callable[[Any, grpc.ServicerContext], Message]]] = {
    "ListAnnotationRevisions": (annotation_pb2.ListAnnotationRevisionsRequest, list_revisions),
    "GetAnnotation": (annotation_pb2.GetAnnotationRequest, get),
    "RestoreAnnotationRevision": (annotation_pb2.RestoreAnnotationRevisionRequest, restore),
    "DeleteAnnotation": (annotation_pb2.DeleteAnnotationRequest, delete),
    "UndeleteAnnotation": (annotation_pb2.UndeleteAnnotationRequest, undelete),
}


def handlers(script: Script) -> grpc.GenericRpcHandler[Any, Any]:
    def method(name: str) -> grpc.RpcMethodHandler[Any, Message]:
        request_type, answer = ANSWERS[name]

        def behave(request: Any, context: grpc.ServicerContext) -> Message:
            script.record(name, request, context)
            return answer(request, context)

        return grpc.unary_unary_rpc_method_handler(
            behave,
            request_deserializer=request_type.FromString,
            response_serializer=lambda message: message.SerializeToString(),
        )

    return grpc.method_handlers_generic_handler(
        "pacs.v1.AnnotationService", {name: method(name) for name in ANSWERS}
    )


@pytest.fixture
def script() -> Script:
    return Script()


@pytest.fixture
def address(script: Script) -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers([handlers(script)])
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


def test_history_follows_every_page_newest_first(client: PacsClient, script: Script) -> None:
    revisions = list(client.history(5))
    assert [(r.revision, r.action) for r in revisions] == [
        (3, ACTION.ANNOTATION_REVISION_ACTION_RESTORED),
        (2, ACTION.ANNOTATION_REVISION_ACTION_UPDATED),
        (1, ACTION.ANNOTATION_REVISION_ACTION_CREATED),
    ]
    sent = script.requests["ListAnnotationRevisions"]
    assert [(r.annotation_id, r.page_token) for r in sent] == [(5, ""), (5, "page-2")]
    assert {r.page_size for r in sent} == {500}


def test_history_is_a_read_and_so_retried(client: PacsClient, script: Script) -> None:
    script.failures["ListAnnotationRevisions"] = 1
    assert len(list(client.history(5))) == 3


def test_get_annotation_asks_for_a_revision_only_when_given_one(
    client: PacsClient, script: Script
) -> None:
    assert client.get_annotation(5).revision == 3
    assert client.get_annotation(5, revision=1).revision == 1
    sent = script.requests["GetAnnotation"]
    assert [(r.annotation_id, r.revision) for r in sent] == [(5, 0), (5, 1)]


def test_restore_delete_and_undelete_send_the_etag_and_purge(
    client: PacsClient, script: Script
) -> None:
    assert client.restore(5, 1, etag="v3").revision == 4
    client.delete_annotation(5, etag="v4", purge=True)
    client.delete_annotation(6)
    assert client.undelete(5, etag="v5").id == 5
    restored = script.requests["RestoreAnnotationRevision"][0]
    assert (restored.annotation_id, restored.revision, restored.etag) == (5, 1, "v3")
    deleted = script.requests["DeleteAnnotation"]
    assert [(r.annotation_id, r.etag, r.purge) for r in deleted] == [
        (5, "v4", True),
        (6, "", False),
    ]
    undeleted = script.requests["UndeleteAnnotation"][0]
    assert (undeleted.annotation_id, undeleted.etag) == (5, "v5")


@pytest.mark.parametrize(
    ("method", "call"),
    [
        ("RestoreAnnotationRevision", lambda client: client.restore(5, 1)),
        ("DeleteAnnotation", lambda client: client.delete_annotation(5)),
        ("UndeleteAnnotation", lambda client: client.undelete(5)),
    ],
)
def test_writes_that_could_apply_twice_are_not_retried(
    client: PacsClient, script: Script, method: str, call: Callable[[PacsClient], object]
) -> None:
    script.failures[method] = 1
    with pytest.raises(grpc.RpcError) as raised:
        call(client)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert len(script.requests[method]) == 1


@pytest.fixture
def pacs(
    address: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> Callable[..., tuple[int, str, str]]:
    """`pacs ARGS...` in this process, against the scripted server: (exit code, out, err)."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.setenv("PACS_SERVER", address)
    monkeypatch.setenv("PACS_TOKEN", "token-1")
    monkeypatch.setenv("PACS_INSECURE", "1")

    def run(*args: str) -> tuple[int, str, str]:
        code = main(list(args))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def test_cli_history_prints_one_row_a_revision(pacs: Callable[..., tuple[int, str, str]]) -> None:
    code, out, err = pacs("annotations", "history", "5")
    assert (code, err) == (0, "")
    assert [line.split() for line in out.splitlines()] == [
        ["3", "restored", "user", "8", "2023-11-14T22:18:20Z", "-", "restored", "from", "1"],
        ["2", "updated", "user", "8", "2023-11-14T22:16:40Z", "annotation_data,viewer_software"],
        ["1", "created", "user", "-", "2023-11-14T22:15:00Z", "annotation_type,annotation_data"],
    ]


def test_cli_restore_delete_and_undelete_say_what_they_did(
    pacs: Callable[..., tuple[int, str, str]], script: Script
) -> None:
    assert pacs("annotations", "restore", "5", "1", "--etag", "v3") == (
        0, "restored revision 1 of annotation 5 as revision 4 (etag v4)\n", "",
    )  # fmt: skip
    code, out, _ = pacs("annotations", "delete", "5")
    assert (code, out) == (0, "moved annotation 5 to the trash "
                              "('pacs annotations undelete 5' brings it back)\n")  # fmt: skip
    assert pacs("annotations", "delete", "5", "--purge", "--etag", "v4")[:2] == (
        0, "purged annotation 5\n",
    )  # fmt: skip
    assert pacs("annotations", "undelete", "5")[:2] == (0, "undeleted annotation 5 (revision 5)\n")
    deleted = script.requests["DeleteAnnotation"]
    assert [(r.etag, r.purge) for r in deleted] == [("", False), ("v4", True)]


def test_cli_get_with_a_revision_asks_for_it(
    pacs: Callable[..., tuple[int, str, str]], script: Script
) -> None:
    code, out, _ = pacs("annotations", "get", "5", "--revision", "2")
    assert code == 0
    assert "revision: 2" in out.splitlines()
    assert script.requests["GetAnnotation"][0].revision == 2


def test_cli_restore_with_a_stale_etag_is_one_aborted_line(
    pacs: Callable[..., tuple[int, str, str]],
) -> None:
    assert pacs("annotations", "restore", "5", "1", "--etag", STALE_ETAG) == (
        EXIT_FAILED,
        "",
        "error: ABORTED: etag: the annotation changed since it was read; read it again and retry\n",
    )
