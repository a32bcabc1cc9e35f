"""REST through the real Envoy: every google.api.http route, JSON in and out."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable

import pytest
import urllib3

from pacs_devstack.envoy import EnvoyProcess
from pacs_devstack.issuer import DevIssuer
from pacs_grpc.edge.envoy_config import EnvoyAssets
from tests.support.png import png
from tests.support.rest import RestClient, contract_routes

pytestmark = pytest.mark.slow

ADMIN_ROLE = "pacs-admin"
ANNOTATION = "/api/annotations/{annotation_id}"
GROUPS = ANNOTATION + "/mask-groups"
GROUP = GROUPS + "/{group_id}"


def login(
    rest: RestClient, issuer: DevIssuer, name: str, *, admin: bool = False
) -> tuple[str, int]:
    """A token and the id of the profile the first call creates from it."""
    token = issuer.mint(name, realm_roles=[ADMIN_ROLE] if admin else [])
    reply = rest.ok("POST", "/api/auth/login", token=token, body={})
    # The bearer token reached the server: it made the profile from the token's claims.
    assert reply["user"]["username"] == name
    assert reply["platform_admin"] is admin
    return token, int(reply["user"]["id"])


def test_every_route_of_the_contract_works_with_json_in_and_out(
    rest: RestClient,
    issuer: DevIssuer,
    http: urllib3.PoolManager,
    unique: Callable[[str], str],
) -> None:
    admin, _ = login(rest, issuer, unique("admin"), admin=True)
    writer_name = unique("writer")
    writer, writer_id = login(rest, issuer, writer_name)

    me = rest.ok("GET", "/api/users/me", token=writer)["user"]
    # int64 travels as a JSON string; field names stay as in the proto.
    assert me["id"] == str(writer_id)
    assert me["keycloak_id"]
    assert "keycloakId" not in me
    changed = rest.ok(
        "PATCH",
        "/api/users/{user_id}",
        user_id=writer_id,
        token=writer,
        body={"user": {"full_name": "Dr. Writer"}, "update_mask": "fullName"},
    )
    assert changed["user"]["full_name"] == "Dr. Writer"

    project = rest.ok(
        "POST", "/api/projects", token=admin, body={"name": unique("edge"), "description": "x"}
    )["project"]
    project_id = int(project["id"])
    assert project["is_active"] is True
    got = rest.ok("GET", "/api/projects/{project_id}", project_id=project_id, token=admin)
    assert got["project"] == project
    listed = rest.ok("GET", "/api/projects", token=admin, query={"page_size": "500"})
    assert project_id in {int(p["id"]) for p in listed["projects"]}
    member = rest.ok(
        "POST",
        "/api/projects/{project_id}/members",
        project_id=project_id,
        token=admin,
        body={"user_id": str(writer_id), "role": "PROJECT_ROLE_ANNOTATOR"},
    )["member"]
    assert (member["user_id"], member["role"]) == (str(writer_id), "PROJECT_ROLE_ANNOTATOR")
    members = rest.ok(
        "GET", "/api/projects/{project_id}/members", project_id=project_id, token=writer
    )["members"]
    assert writer_name in {m["username"] for m in members}

    study = "1.2.840.99.1"
    annotation = rest.ok(
        "POST",
        "/api/annotations",
        token=writer,
        body={
            "project_id": str(project_id),
            "study_uid": study,
            "annotation_type": "polygon",
            "annotation_data": {"points": [[1, 2], [3, 4], [5, 6]], "label": "lesion"},
            "measurement_values": {"area_mm2": 12.5},
        },
    )["annotation"]
    annotation_id = int(annotation["id"])
    assert annotation["annotation_data"] == {"points": [[1, 2], [3, 4], [5, 6]], "label": "lesion"}
    assert (
        rest.ok("GET", ANNOTATION, annotation_id=annotation_id, token=writer)["annotation"]
        == annotation
    )
    page = rest.ok(
        "GET",
        "/api/annotations",
        token=writer,
        query={"project_id": str(project_id), "study_uid": study, "page_size": "10"},
    )
    assert [a["id"] for a in page["annotations"]] == [annotation["id"]]
    updated = rest.ok(
        "PATCH",
        ANNOTATION,
        annotation_id=annotation_id,
        token=writer,
        body={
            "annotation": {"viewer_software": "OHIF 3"},
            "update_mask": "viewerSoftware",
            "etag": annotation["etag"],
        },
    )["annotation"]
    assert updated["viewer_software"] == "OHIF 3"
    assert updated["etag"] != annotation["etag"]
    history = rest.ok(
        "GET", ANNOTATION + "/revisions", annotation_id=annotation_id, token=writer,
        query={"page_size": "10"},
    )["revisions"]  # fmt: skip
    assert [(r["revision"], r["action"]) for r in history] == [
        ("2", "ANNOTATION_REVISION_ACTION_UPDATED"),
        ("1", "ANNOTATION_REVISION_ACTION_CREATED"),
    ]
    first = rest.ok(
        "GET", ANNOTATION, annotation_id=annotation_id, token=writer, query={"revision": "1"}
    )["annotation"]
    assert first.get("viewer_software", "") == ""
    restored = rest.ok(
        "POST",
        ANNOTATION + "/revisions/{revision}/restore",
        annotation_id=annotation_id,
        revision=1,
        token=writer,
        body={"etag": updated["etag"]},
    )["annotation"]
    assert (restored["revision"], restored["etag"]) == ("3", "v3")
    assert restored.get("viewer_software", "") == ""
    reviewed = restored
    for action, token, body in (
        ("submit", writer, {}),
        ("reject", admin, {"comment": "outline the whole lesion"}),
        ("submit", writer, {}),
        # An approval names the revision it approves.
        ("approve", admin, {"etag": "v6"}),
    ):
        reviewed = rest.ok(
            "POST", ANNOTATION + "/" + action, annotation_id=annotation_id, token=token, body=body
        )["annotation"]
    assert reviewed["review"]["state"] == "REVIEW_STATE_APPROVED"
    assert reviewed["review"]["user_id"] == str(rest_admin_id(rest, admin))

    _masks_through_every_route(rest, http, writer, annotation_id, admin)

    # Approved, so frozen: an owner (the administrator) deletes it, an annotator may not.
    frozen = rest.call("DELETE", ANNOTATION, annotation_id=annotation_id, token=writer)
    assert frozen.status == 400
    rest.ok("DELETE", ANNOTATION, annotation_id=annotation_id, token=admin)
    gone = rest.call("GET", ANNOTATION, annotation_id=annotation_id, token=writer)
    assert gone.status == 404
    back = rest.ok(
        "POST", ANNOTATION + "/undelete", annotation_id=annotation_id, token=writer, body={}
    )["annotation"]
    assert (back["id"], back["revision"]) == (str(annotation_id), "9")
    purged = rest.call(
        "DELETE", ANNOTATION, annotation_id=annotation_id, token=admin, query={"purge": "true"}
    )
    assert purged.status == 200
    assert rest.call("GET", ANNOTATION, annotation_id=annotation_id, token=admin).status == 404
    rest.ok(
        "DELETE",
        "/api/projects/{project_id}/members/{user_id}",
        project_id=project_id,
        user_id=writer_id,
        token=admin,
    )
    settings = rest.ok(
        "PATCH",
        "/api/projects/{project_id}",
        project_id=project_id,
        token=admin,
        body={"project": {"export_unapproved": True}, "update_mask": "exportUnapproved"},
    )["project"]
    assert settings["export_unapproved"] is True
    closed = rest.ok(
        "POST", "/api/projects/{project_id}/deactivate", project_id=project_id, token=admin, body={}
    )
    assert closed["project"]["is_active"] is False

    assert rest.called == contract_routes()


def rest_admin_id(rest: RestClient, admin: str) -> int:
    return int(rest.ok("GET", "/api/users/me", token=admin)["user"]["id"])


def _masks_through_every_route(
    rest: RestClient, http: urllib3.PoolManager, token: str, annotation_id: int, admin: str
) -> None:
    group = rest.ok(
        "POST",
        GROUPS,
        annotation_id=annotation_id,
        token=token,
        body={"group_name": "liver", "model_name": "seg-net", "slice_count": 1},
    )["mask_group"]
    group_id = int(group["id"])
    assert (group["status"], group["completed_slices"]) == ("MASK_GROUP_STATUS_PENDING", 0)
    listed = rest.ok("GET", GROUPS, annotation_id=annotation_id, token=token)["mask_groups"]
    assert [g["id"] for g in listed] == [group["id"]]
    ids = {"annotation_id": annotation_id, "group_id": group_id}

    image = png(8, 8, seed=3)
    (ticket,) = rest.ok(
        "POST",
        GROUP + "/signed-url",
        token=token,
        body={
            "slices": [{"slice_index": 0, "content_type": "image/png", "size_bytes": len(image)}],
            "method": "UPLOAD_METHOD_POST",
        },
        **ids,
    )["tickets"]
    form = {**ticket["fields"], "file": ("mask.png", image, "image/png")}
    uploaded = http.request("POST", ticket["url"], fields=form)
    assert uploaded.status == 204
    completed = rest.ok(
        "POST",
        GROUP + "/complete",
        token=token,
        body={"uploads": [{"upload_id": ticket["upload_id"], "width": 8, "height": 8}]},
        **ids,
    )
    assert completed["mask_group"]["status"] == "MASK_GROUP_STATUS_COMPLETE"
    for action, actor, body in (
        ("submit", token, {}),
        ("reject", admin, {"comment": "the liver is cut off"}),
        ("submit", token, {}),
        ("approve", admin, {}),
    ):
        reviewed = rest.ok("POST", GROUP + "/" + action, token=actor, body=body, **ids)
    assert reviewed["mask_group"]["review"]["state"] == "REVIEW_STATE_APPROVED"
    assert rest.ok("GET", GROUP, token=token, **ids)["mask_group"]["completed_slices"] == 1
    (only,) = rest.ok("GET", GROUP + "/versions", token=token, **ids)["mask_groups"]
    assert (only["version_number"], only["current"]) == (1, True)
    (mask,) = rest.ok("GET", GROUP + "/masks", token=token, **ids)["masks"]
    assert mask["file_size"] == str(len(image))
    one = rest.ok("GET", GROUP + "/masks/{mask_id}", mask_id=int(mask["id"]), token=token, **ids)
    assert one["mask"] == mask
    downloads = rest.ok("POST", GROUP + "/download-urls", token=token, body={"page_size": 1}, **ids)
    (download,) = downloads["urls"]
    assert downloads["next_page_token"] == ""  # the group's one mask fits the page
    assert http.request("GET", download["url"]).data == image
    # A SEG import through an upload ticket: the ticket pins application/dicom and the size;
    # what is uploaded here is no DICOM file, so the import says so, naming the source field
    # (tests/integration/test_seg_import.py imports real SEGs).
    not_dicom = b"not a DICOM file" * 64
    seg_ticket = rest.ok(
        "POST",
        GROUPS + "/import-uploads",
        annotation_id=annotation_id,
        token=token,
        body={"size_bytes": str(len(not_dicom))},
    )["ticket"]
    assert seg_ticket["method"] == "UPLOAD_METHOD_POST"
    form = {**seg_ticket["fields"], "file": ("seg.dcm", not_dicom, "application/dicom")}
    assert http.request("POST", seg_ticket["url"], fields=form).status == 204
    not_imported = rest.call(
        "POST",
        GROUPS + "/import",
        annotation_id=annotation_id,
        token=token,
        body={"upload_id": seg_ticket["upload_id"], "group_name": "from a SEG"},
    )
    assert not_imported.status == 400
    assert not_imported.json()["message"].startswith("upload_id: ")
    # This stack has no PACS link: the export route reaches the service, which says why it
    # cannot export (tests/integration/test_seg_export.py exports through a linked server).
    refused = rest.call(
        "POST",
        GROUP + "/export",
        token=token,
        body={"store_in_pacs": True},
        annotation_id=annotation_id,
        group_id=group_id,
    )
    assert refused.status == 400
    assert "PACS_DICOMWEB_URL" in refused.json()["message"]
    exports = rest.ok("GET", GROUP + "/exports", token=token, query={"page_size": "5"}, **ids)
    assert exports.get("mask_group_exports", []) == []
    # Approved, so frozen: an owner (the administrator) moves it to the trash, and it comes back.
    rest.ok("DELETE", GROUP, token=admin, **ids)
    gone = rest.call("GET", GROUP, token=token, annotation_id=annotation_id, group_id=group_id)
    assert gone.status == 404
    back = rest.ok("POST", GROUP + "/undelete", token=token, body={}, **ids)["mask_group"]
    assert back["id"] == str(group_id)
    rest.ok("DELETE", GROUP, token=admin, query={"purge": "true"}, **ids)


def test_a_call_without_a_token_is_401_with_a_json_status(rest: RestClient) -> None:
    reply = rest.call("GET", "/api/users/me")
    assert reply.status == 401
    assert reply.json()["code"] == 16


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/api/nothing-here", 404, 5),
        ("GET", "/", 404, 5),
        ("DELETE", "/api/users/me", 404, 5),
        ("PUT", "/api/projects", 404, 5),
        # Not a route: a gRPC method name is no REST path (auto-mapping is off).
        ("POST", "/pacs.v1.IdentityService/GetCurrentUser", 404, 5),
        ("GET", "/api/users/me?unknown_parameter=1", 400, 3),
        ("GET", "/api/projects/not-a-number", 400, 3),
    ],
)
def test_what_matches_no_route_is_refused_by_envoy_with_json_never_503(
    rest: RestClient, issuer: DevIssuer, method: str, path: str, status: int, code: int
) -> None:
    token = issuer.mint("stranger")
    reply = rest.call(method, path, token=token)
    assert (reply.status, reply.json()["code"]) == (status, code), reply.body
    assert reply.json()["message"]
    # Refused by Envoy: the server never saw it.
    assert "x-envoy-upstream-service-time" not in reply.headers


def test_a_body_field_may_not_contradict_a_path_parameter(
    rest: RestClient, issuer: DevIssuer, unique: Callable[[str], str]
) -> None:
    token, user_id = login(rest, issuer, unique("collide"))
    reply = rest.call(
        "PATCH",
        "/api/users/{user_id}",
        user_id=user_id,
        token=token,
        body={"user_id": str(user_id + 1), "user": {"phone": "1"}, "update_mask": "phone"},
    )
    assert reply.status == 400
    assert reply.json()["code"] == 3
    assert "x-envoy-upstream-service-time" not in reply.headers


def test_malformed_json_is_400_with_a_json_status(rest: RestClient, issuer: DevIssuer) -> None:
    reply = rest.call("POST", "/api/projects", token=issuer.mint("x"), body=b"{not json")
    assert reply.status == 400
    assert reply.json()["code"] == 3


def test_the_openapi_document_is_served_from_its_file(
    rest: RestClient, envoy_assets: EnvoyAssets
) -> None:
    reply = rest.call("GET", "/api/openapi.json")
    assert reply.status == 200
    assert reply.headers["content-type"] == "application/json"
    assert reply.body == envoy_assets.openapi.read_bytes()
    assert json.loads(reply.body)["openapi"].startswith("3.")


def test_access_logs_keep_the_path_but_never_the_query_or_the_token(
    rest: RestClient, issuer: DevIssuer, edge: EnvoyProcess
) -> None:
    token = issuer.mint("logged")
    # Unique per run: the log file in test-artifacts/ keeps earlier runs' lines.
    marker = f"edge-log-test-{uuid.uuid4().hex}"
    secret_study = "1.2.840.7777777.42"
    reply = rest.call(
        "GET",
        "/api/annotations",
        token=token,
        query={"study_uid": secret_study, "page_size": "1"},
        headers={"x-request-id": marker},
    )
    assert reply.status == 200
    line = _wait_for_log_line(edge, marker)
    assert (line["path"], line["method"], line["status"]) == ("/api/annotations", "GET", 200)
    assert line["rpc"] == "/pacs.v1.AnnotationService/ListAnnotations"
    text = edge.log_path.read_text()
    assert secret_study not in text
    assert token not in text
    assert "page_size" not in text


def _wait_for_log_line(edge: EnvoyProcess, request_id: str) -> dict[str, object]:
    # Envoy flushes access logs every 100 ms (devstack); poll the file until it appears.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for raw in edge.log_path.read_text().splitlines():
            if raw.startswith("{") and f'"request_id":"{request_id}"' in raw:
                entry: dict[str, object] = json.loads(raw)
                return entry
        time.sleep(0.05)
    raise AssertionError(f"no access log line for {request_id} in {edge.log_path}")
