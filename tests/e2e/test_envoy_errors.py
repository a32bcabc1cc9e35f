"""Each gRPC status the service returns, as REST callers see it through Envoy."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from pacs_devstack.issuer import DevIssuer
from tests.support.rest import RestClient

pytestmark = pytest.mark.slow


def _login(rest: RestClient, issuer: DevIssuer, name: str, *, admin: bool = False) -> str:
    token = issuer.mint(name, realm_roles=["pacs-admin"] if admin else [])
    rest.ok("POST", "/api/auth/login", token=token, body={})
    return token


def _annotation(project_id: str, **fields: Any) -> dict[str, Any]:
    return {
        "project_id": project_id,
        "study_uid": "1.2.840.5",
        "annotation_type": "point",
        "annotation_data": {"x": 1},
        **fields,
    }


def _assert_status(reply: Any, http_status: int, grpc_code: int) -> None:
    assert reply.status == http_status, reply.body
    body = reply.json()
    assert body["code"] == grpc_code
    assert isinstance(body["message"], str)
    assert body["message"]


def test_each_code_maps_to_its_http_status_with_a_json_body(
    rest: RestClient, issuer: DevIssuer, unique: Callable[[str], str]
) -> None:
    admin = _login(rest, issuer, unique("admin"), admin=True)
    writer = _login(rest, issuer, unique("writer"))
    viewer = _login(rest, issuer, unique("viewer"))
    ids = {
        name: rest.ok("GET", "/api/users/me", token=token)["user"]["id"]
        for name, token in (("writer", writer), ("viewer", viewer))
    }
    project = rest.ok("POST", "/api/projects", token=admin, body={"name": unique("codes")})
    project_id = project["project"]["id"]
    for who, role in (("writer", "PROJECT_ROLE_ANNOTATOR"), ("viewer", "PROJECT_ROLE_VIEWER")):
        rest.ok(
            "POST",
            "/api/projects/{project_id}/members",
            project_id=project_id,
            token=admin,
            body={"user_id": ids[who], "role": role},
        )
    created = rest.ok("POST", "/api/annotations", token=writer, body=_annotation(project_id))
    annotation_id = created["annotation"]["id"]

    # INVALID_ARGUMENT → 400: a study UID with a leading zero.
    reply = rest.call(
        "POST", "/api/annotations", token=writer, body=_annotation(project_id, study_uid="01.2")
    )
    _assert_status(reply, 400, 3)

    # UNAUTHENTICATED → 401
    _assert_status(rest.call("GET", "/api/users/me", token="not-a-token"), 401, 16)

    # PERMISSION_DENIED → 403: a viewer may read but not write.
    reply = rest.call("POST", "/api/annotations", token=viewer, body=_annotation(project_id))
    _assert_status(reply, 403, 7)

    # NOT_FOUND → 404
    reply = rest.call(
        "GET", "/api/annotations/{annotation_id}", annotation_id=9_000_000_000_000, token=writer
    )
    _assert_status(reply, 404, 5)

    # ALREADY_EXISTS → 409: another account's e-mail address.
    admin_email = rest.ok("GET", "/api/users/me", token=admin)["user"]["email"]
    reply = rest.call(
        "PATCH",
        "/api/users/{user_id}",
        user_id=ids["writer"],
        token=writer,
        body={"user": {"email": admin_email}, "update_mask": "email"},
    )
    _assert_status(reply, 409, 6)

    # ABORTED → 409: an update based on a stale etag.
    stale = created["annotation"]["etag"]
    change = {"annotation": {"viewer_software": "a"}, "update_mask": "viewerSoftware"}
    rest.ok(
        "PATCH",
        "/api/annotations/{annotation_id}",
        annotation_id=annotation_id,
        token=writer,
        body={**change, "etag": stale},
    )
    reply = rest.call(
        "PATCH",
        "/api/annotations/{annotation_id}",
        annotation_id=annotation_id,
        token=writer,
        body={**change, "etag": stale},
    )
    _assert_status(reply, 409, 10)

    # RESOURCE_EXHAUSTED → 429: under Envoy's body limit as JSON, but as protobuf (each
    # 0 becomes an 11-byte Value) over the server's 4 MiB message limit.
    zeros = {"annotation_data": {"v": [0] * 450_000}}
    reply = rest.call(
        "POST", "/api/annotations", token=writer, body=_annotation(project_id, **zeros)
    )
    _assert_status(reply, 429, 8)

    # FAILED_PRECONDITION → 400: a deactivated project accepts no changes.
    rest.ok(
        "POST", "/api/projects/{project_id}/deactivate", project_id=project_id, token=admin, body={}
    )
    reply = rest.call("POST", "/api/annotations", token=writer, body=_annotation(project_id))
    _assert_status(reply, 400, 9)
