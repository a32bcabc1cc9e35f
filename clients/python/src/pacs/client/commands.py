"""What each `pacs` command does (cli.py parses); results on stdout, progress on stderr."""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import sys
import time
import tomllib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from pacs.client import config
from pacs.client.client import PacsClient
from pacs.client.downloads import DownloadError
from pacs.client.exports import ExportDownloadError, SegmentationUploadError
from pacs.client.progress import ProgressLine
from pacs.client.segments import segments_from_spec
from pacs.client.tokens import StaticToken, TokenError, keycloak_token_url
from pacs.client.uploads import UploadError
from pacs.v1 import annotation_pb2, identity_pb2, mask_pb2, review_pb2

_ROLES = {
    "viewer": identity_pb2.PROJECT_ROLE_VIEWER,
    "annotator": identity_pb2.PROJECT_ROLE_ANNOTATOR,
    "reviewer": identity_pb2.PROJECT_ROLE_REVIEWER,
    "owner": identity_pb2.PROJECT_ROLE_OWNER,
}


class UsageError(Exception):
    """Options that parse but do not fit together; exit code 2 like argparse's own."""


def run(args: argparse.Namespace) -> int:
    handler: Callable[[argparse.Namespace], int] = _COMMANDS[args.run]
    return handler(args)


def describe(error: BaseException) -> str:
    """One line for any failure, never a token, secret or signed URL."""
    if isinstance(error, grpc.RpcError) and isinstance(error, grpc.Call):
        details = " ".join((error.details() or "").split())
        return f"{error.code().name}: {details}" if details else error.code().name
    if isinstance(
        error,
        TokenError
        | config.ConfigError
        | UploadError
        | DownloadError
        | ExportDownloadError
        | SegmentationUploadError,
    ):
        return str(error)
    if isinstance(error, OSError):
        where = f": {error.filename}" if error.filename else ""
        return f"{error.strerror or type(error).__name__}{where}"
    if isinstance(error, ValueError | TypeError):
        return str(error)
    if os.environ.get("PACS_DEBUG"):
        raise error
    return f"unexpected {type(error).__name__}: {error} (PACS_DEBUG=1 shows the traceback)"


# -- login ----------------------------------------------------------------------------------


def _login(args: argparse.Namespace) -> int:
    if args.token_stdin:
        source = {"kind": config.STATIC, "token": _stdin_secret("token")}
        StaticToken(source["token"])  # refuses an empty one before anything is saved
    else:
        if bool(args.realm_url) == bool(args.token_url):
            raise UsageError("with --client-id, give exactly one of --realm-url or --token-url")
        secret = os.environ.get("PACS_CLIENT_SECRET") or _stdin_secret("client secret")
        source = {
            "kind": config.CLIENT_CREDENTIALS,
            "token_url": args.token_url or keycloak_token_url(args.realm_url),
            "client_id": args.client_id,
            "client_secret": secret,
        }
    login = config.Login(server=args.server, insecure=args.insecure, token_source=source)
    with PacsClient(
        login.server, login.tokens(), insecure=login.insecure, timeout=args.timeout
    ) as client:
        reply = client.login()
    path = config.save(login)
    user = reply.user
    print(f"logged in to {login.server} as {user.username} (user {user.id}); saved in {path}")
    return 0


def _logout(args: argparse.Namespace) -> int:
    removed = config.remove()
    print("logged out" if removed else "not logged in")
    return 0


def _stdin_secret(what: str) -> str:
    if sys.stdin.isatty():
        import getpass

        return getpass.getpass(f"{what}: ")
    value = sys.stdin.readline().strip()
    if not value:
        raise UsageError(f"no {what} on standard input")
    return value


def _client(args: argparse.Namespace) -> PacsClient:
    login = config.resolve(server=args.server, insecure=args.insecure)
    return PacsClient(login.server, login.tokens(), insecure=login.insecure, timeout=args.timeout)


# -- identity -------------------------------------------------------------------------------


def _whoami(args: argparse.Namespace) -> int:
    with _client(args) as client:
        reply = client.login()
        if args.json:
            return _print_json(reply)
        user = reply.user
        admin = ", platform administrator" if reply.platform_admin else ""
        print(f"{user.username} (user {user.id}, {user.email or 'no e-mail'}{admin})")
        for member in reply.memberships:
            print(f"  project {member.project_id}: {_role(member.role)}")
    return 0


def _projects_list(args: argparse.Namespace) -> int:
    with _client(args) as client:
        projects = list(client.list_projects(include_inactive=args.include_inactive))
    if args.json:
        return _print_json_list(projects)
    for project in projects:
        state = "" if project.is_active else "  (inactive)"
        print(f"{project.id:>8}  {project.name}{state}")
    return 0


def _projects_get(args: argparse.Namespace) -> int:
    with _client(args) as client:
        return _print_message(client.get_project(args.project_id), args.json)


def _projects_create(args: argparse.Namespace) -> int:
    with _client(args) as client:
        project = client.create_project(args.name, description=args.description)
    if args.json:
        return _print_json(project)
    print(f"created project {project.id} {project.name}")
    return 0


def _projects_members(args: argparse.Namespace) -> int:
    with _client(args) as client:
        members = list(client.list_project_members(args.project_id))
    if args.json:
        return _print_json_list(members)
    for member in members:
        print(f"{member.user_id:>8}  {member.username:<24} {_role(member.role)}")
    return 0


def _projects_add_member(args: argparse.Namespace) -> int:
    with _client(args) as client:
        reply = client.identity.AddProjectMember(
            identity_pb2.AddProjectMemberRequest(
                project_id=args.project_id, user_id=args.user_id, role=_ROLES[args.role]
            )
        )
    if args.json:
        return _print_json(reply.member)
    print(f"user {reply.member.user_id} is {_role(reply.member.role)} in project {args.project_id}")
    return 0


def _projects_update(args: argparse.Namespace) -> int:
    if args.description is None and args.export_unapproved is None:
        raise UsageError("nothing to change: give --description or --export-unapproved")
    export_unapproved = None if args.export_unapproved is None else args.export_unapproved == "on"
    with _client(args) as client:
        project = client.update_project(
            args.project_id, description=args.description, export_unapproved=export_unapproved
        )
    if args.json:
        return _print_json(project)
    exports = "on" if project.export_unapproved else "off"
    print(f"updated project {project.id} {project.name} (export_unapproved {exports})")
    return 0


# -- annotations ----------------------------------------------------------------------------


def _annotations_list(args: argparse.Namespace) -> int:
    if args.limit < 0:
        raise UsageError("--limit must be 0 (all) or more")
    with _client(args) as client:
        found: Iterable[Any] = client.list_annotations(
            project_id=args.project, study_uid=args.study, series_uid=args.series,
            annotation_type=args.annotation_type,
        )  # fmt: skip
        annotations = list(itertools.islice(found, args.limit or None))
    if args.json:
        return _print_json_list(annotations)
    for a in annotations:
        created = a.created_at.ToJsonString() if a.HasField("created_at") else ""
        print(
            f"{a.id:>8}  project {a.project_id:<6} {a.annotation_type:<14} {created}  "
            f"{_review_state(a.review.state)}"
        )
    return 0


def _annotations_get(args: argparse.Namespace) -> int:
    if args.revision < 0:
        raise UsageError("--revision must be 0 (now) or a revision number")
    with _client(args) as client:
        annotation = client.get_annotation(args.annotation_id, revision=args.revision)
    return _print_message(annotation, args.json)


def _annotations_history(args: argparse.Namespace) -> int:
    with _client(args) as client:
        revisions = list(client.history(args.annotation_id))
    if args.json:
        return _print_json_list(revisions)
    for r in revisions:
        # "-" keeps every line the same number of words when a column has nothing to show.
        user = str(r.user_id) if r.user_id else "-"
        created = r.created_at.ToJsonString() if r.HasField("created_at") else "-"
        changed = ",".join(r.changed_fields) or "-"
        source = f"  restored from {r.restored_from_revision}" if r.restored_from_revision else ""
        print(
            f"{r.revision:>8}  {_revision_action(r.action):<10} user {user:<6} {created}  "
            f"{changed}{source}"
        )
    return 0


def _annotations_restore(args: argparse.Namespace) -> int:
    with _client(args) as client:
        annotation = client.restore(args.annotation_id, args.revision, etag=args.etag)
    if args.json:
        return _print_json(annotation)
    print(
        f"restored revision {args.revision} of annotation {annotation.id} as revision "
        f"{annotation.revision} (etag {annotation.etag})"
    )
    return 0


def _annotations_delete(args: argparse.Namespace) -> int:
    with _client(args) as client:
        client.delete_annotation(args.annotation_id, etag=args.etag, purge=args.purge)
    if args.purge:
        print(f"purged annotation {args.annotation_id}")
    else:
        print(
            f"moved annotation {args.annotation_id} to the trash "
            f"('pacs annotations undelete {args.annotation_id}' brings it back)"
        )
    return 0


def _annotations_undelete(args: argparse.Namespace) -> int:
    with _client(args) as client:
        annotation = client.undelete(args.annotation_id, etag=args.etag)
    if args.json:
        return _print_json(annotation)
    print(f"undeleted annotation {annotation.id} (revision {annotation.revision})")
    return 0


def _annotations_create(args: argparse.Namespace) -> int:
    data = _json_argument("--data", args.data)
    if not isinstance(data, dict):
        raise UsageError("--data must be a JSON object")
    measurements = None
    if args.measurements is not None:
        measurements = _json_argument("--measurements", args.measurements)
    with _client(args) as client:
        annotation = client.create_annotation(
            project_id=args.project, study_uid=args.study, series_uid=args.series,
            instance_uid=args.instance, annotation_type=args.annotation_type, data=data,
            measurement_values=measurements, viewer_software=args.viewer_software,
            request_id=args.request_id,
        )  # fmt: skip
    if args.json:
        return _print_json(annotation)
    print(f"created annotation {annotation.id} in project {annotation.project_id}")
    return 0


def _json_argument(option: str, text: str) -> Any:
    if text.startswith("@"):
        text = Path(text[1:]).read_text()
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise UsageError(f"{option} is not valid JSON ({error.msg})") from None


# -- masks ----------------------------------------------------------------------------------


def _masks_groups(args: argparse.Namespace) -> int:
    with _client(args) as client:
        groups = list(client.list_mask_groups(args.annotation))
    if args.json:
        return _print_json_list(groups)
    for g in groups:
        status = mask_pb2.MaskGroupStatus.Name(g.status).removeprefix("MASK_GROUP_STATUS_")
        print(
            f"{g.id:>8}  {status:<8} {g.completed_slices}/{g.slice_count}  "
            f"{_review_state(g.review.state):<9} {g.group_name}"
        )
    return 0


def _masks_push(args: argparse.Namespace) -> int:
    if args.concurrency < 1:
        raise UsageError("--concurrency must be at least 1")
    method = mask_pb2.UPLOAD_METHOD_PUT if args.method == "put" else mask_pb2.UPLOAD_METHOD_POST
    segments = _segment_spec(args.segments) if args.segments else []
    if segments and args.group is not None:
        raise UsageError("--segments are declared with a new group: leave out --group")
    if segments and args.label:
        raise UsageError("with --segments, labels come from the segments: leave out --label")
    progress = _progress(args, "push")
    try:
        with _client(args) as client:
            result = client.upload_mask_group(
                args.annotation, directory=args.directory, group_id=args.group,
                slice_count=args.slice_count, group_name=args.name, model_name=args.model,
                version=args.model_version, modality=args.modality, label_name=args.label,
                segments=segments, concurrency=args.concurrency, method=method,
                progress=progress,
            )  # fmt: skip
    finally:
        if progress is not None:
            progress.close()
    group = result.group
    status = mask_pb2.MaskGroupStatus.Name(group.status).removeprefix("MASK_GROUP_STATUS_")
    skipped = f", {result.skipped} already recorded" if result.skipped else ""
    print(
        f"pushed {result.uploaded} slices ({_size(result.bytes_sent)}) to group {group.id} in "
        f"{result.seconds:.2f} s ({result.retries} retries{skipped}); group {status}, "
        f"{group.completed_slices}/{group.slice_count} slices"
    )
    return 0


def _masks_pull(args: argparse.Namespace) -> int:
    if args.concurrency < 1:
        raise UsageError("--concurrency must be at least 1")
    started = time.perf_counter()
    progress = _progress(args, "pull")
    try:
        with _client(args) as client:
            result = client.download_mask_group(
                args.annotation, args.group_id, args.directory,
                concurrency=args.concurrency, progress=progress,
            )  # fmt: skip
    finally:
        if progress is not None:
            progress.close()
    print(
        f"pulled {len(result.files)} slices ({_size(result.bytes_received)}) of group "
        f"{args.group_id} into {args.directory} in {time.perf_counter() - started:.2f} s"
    )
    return 0


def _segment_spec(path_text: str) -> list[mask_pb2.Segment]:
    path = Path(path_text)
    text = path.read_text()
    try:
        if path.suffix.lower() == ".toml":
            parsed: Any = tomllib.loads(text)
        else:
            parsed = json.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as error:
        raise UsageError(f"--segments: {path.name} does not parse ({error})") from None
    try:
        return segments_from_spec(parsed)
    except ValueError as error:
        raise UsageError(f"--segments: {error}") from None


def _masks_export(args: argparse.Namespace) -> int:
    if args.output is not None and not Path(args.output).parent.is_dir():
        raise UsageError(f"--output: no folder {Path(args.output).parent}")
    where = " and storing it in the PACS" if args.to_pacs else ""
    status = f"export: building the SEG of group {args.group_id}{where}"
    with _status(args, status), _client(args) as client:
        result = client.export_mask_group(
            args.annotation, args.group_id, store_in_pacs=args.to_pacs,
            request_id=args.request_id, save_to=args.output,
        )  # fmt: skip
    export = result.export
    if args.json:
        _print_json(export)
    else:
        saved = f"; saved {result.saved}" if result.saved else ""
        print(
            f"exported group {args.group_id} as export {export.id}: SEG series "
            f"{export.seg_series_uid}, {export.segment_count} segment(s), "
            f"{_size(export.size_bytes)}; PACS {_pacs_status(export)}{saved}"
        )
    if export.pacs_status == mask_pb2.PACS_STORE_STATUS_FAILED:
        reason = export.pacs_failure_reason or "no reason given"
        print(f"error: the PACS did not store the SEG: {reason}", file=sys.stderr)
        return 1
    return 0


def _masks_exports(args: argparse.Namespace) -> int:
    with _client(args) as client:
        results = list(client.list_exports(args.annotation, args.group_id))
    if args.json:
        rows = []
        for result in results:
            row = _as_dict(result.export)
            if args.urls:
                row["download_url"] = result.download_url
            rows.append(row)
        print(json.dumps(rows, indent=2))
        return 0
    for result in results:
        export = result.export
        created = export.created_at.ToJsonString() if export.HasField("created_at") else ""
        print(
            f"{export.id:>8}  {created}  {export.seg_series_uid}  {_size(export.size_bytes)}  "
            f"PACS {_pacs_status(export)}"
        )
        if args.urls and result.download_url:
            print(f"          {result.download_url}")
    return 0


def _masks_import(args: argparse.Namespace) -> int:
    if (args.file is None) == (args.from_pacs is None):
        raise UsageError("give exactly one of FILE or --from-pacs STUDY SERIES INSTANCE")
    if args.file is not None and not Path(args.file).is_file():
        raise UsageError(f"no file {args.file}")
    source = "the PACS" if args.from_pacs else Path(args.file).name
    with _status(args, f"import: reading the SEG from {source}"), _client(args) as client:
        group = client.import_segmentation(
            args.annotation,
            from_pacs=tuple(args.from_pacs) if args.from_pacs else None,
            path=args.file, group_name=args.name, description=args.description,
            request_id=args.request_id,
        )  # fmt: skip
    if args.json:
        return _print_json(group)
    labels = ", ".join(s.label for s in group.segments)
    print(
        f"imported group {group.id} under annotation {args.annotation}: "
        f"{group.completed_slices}/{group.slice_count} slices, "
        f"{len(group.segments)} segment(s) ({labels})"
    )
    return 0


# -- review ---------------------------------------------------------------------------------


def _review_step(args: argparse.Namespace) -> int:
    """`review submit|approve|reject`: on the annotation or, with --group, that mask group."""
    if args.group is not None and args.group < 1:
        raise UsageError("--group must be a mask group id")
    if args.group is not None and args.etag:
        raise UsageError("--etag is an annotation's; leave it out with --group")
    if args.run == "review_approve" and args.group is None and not args.etag:
        raise UsageError(
            "--etag is required to approve an annotation: approve the revision you read "
            "(`pacs annotations get` shows it)"
        )
    done = {"review_submit": "submitted", "review_approve": "approved"}.get(args.run, "rejected")
    result: Message
    with _client(args) as client:
        if args.group is not None:
            result = _group_step(client, args)
            summary = f"{done} mask group {result.id} of annotation {args.annotation_id}"
        else:
            result = annotation = _annotation_step(client, args)
            summary = (
                f"{done} annotation {annotation.id} (revision {annotation.revision}, etag "
                f"{annotation.etag})"
            )
    if args.json:
        return _print_json(result)
    print(summary)
    return 0


def _group_step(client: PacsClient, args: argparse.Namespace) -> mask_pb2.MaskGroup:
    if args.run == "review_submit":
        return client.submit(args.annotation_id, group_id=args.group)
    if args.run == "review_approve":
        return client.approve(args.annotation_id, group_id=args.group)
    return client.reject(args.annotation_id, args.comment, group_id=args.group)


def _annotation_step(client: PacsClient, args: argparse.Namespace) -> annotation_pb2.Annotation:
    if args.run == "review_submit":
        return client.submit(args.annotation_id, etag=args.etag)
    if args.run == "review_approve":
        return client.approve(args.annotation_id, etag=args.etag)
    return client.reject(args.annotation_id, args.comment, etag=args.etag)


def _review_queue(args: argparse.Namespace) -> int:
    with _client(args) as client:
        waiting = list(client.review_queue(args.project))
    if args.json:
        return _print_json_list(waiting)
    for a in waiting:
        # "-" keeps every line the same number of words when a column has nothing to show.
        submitter = str(a.review.user_id) if a.review.user_id else "-"
        when = a.review.changed_at.ToJsonString() if a.review.HasField("changed_at") else "-"
        print(f"{a.id:>8}  {a.annotation_type:<14} {a.study_uid}  user {submitter:<6} {when}")
    return 0


def _pacs_status(export: mask_pb2.MaskGroupExport) -> str:
    name = mask_pb2.PacsStoreStatus.Name(export.pacs_status)
    return name.removeprefix("PACS_STORE_STATUS_").lower().replace("_", " ")


@contextlib.contextmanager
def _status(args: argparse.Namespace, text: str) -> Iterator[None]:
    """One line on a terminal's stderr while a single long call runs, then its time."""
    if args.no_progress or not sys.stderr.isatty():
        yield
        return
    started = time.perf_counter()
    sys.stderr.write(f"{text} ...")
    sys.stderr.flush()
    try:
        yield
    finally:
        sys.stderr.write(f" {time.perf_counter() - started:.1f} s\n")
        sys.stderr.flush()


def _progress(args: argparse.Namespace, label: str) -> ProgressLine | None:
    if args.no_progress or not sys.stderr.isatty():
        return None
    return ProgressLine(sys.stderr, label)


# -- output ---------------------------------------------------------------------------------


def _role(role: identity_pb2.ProjectRole.ValueType) -> str:
    return identity_pb2.ProjectRole.Name(role).removeprefix("PROJECT_ROLE_").lower()


def _review_state(state: review_pb2.ReviewState.ValueType) -> str:
    if state == review_pb2.REVIEW_STATE_UNSPECIFIED:
        return "-"
    return review_pb2.ReviewState.Name(state).removeprefix("REVIEW_STATE_").lower()


def _revision_action(action: annotation_pb2.AnnotationRevisionAction.ValueType) -> str:
    name = annotation_pb2.AnnotationRevisionAction.Name(action)
    return name.removeprefix("ANNOTATION_REVISION_ACTION_").lower()


def _size(count: int) -> str:
    if count < 1024:
        return f"{count} B"
    amount = count / 1024
    for unit in ("KiB", "MiB"):
        if amount < 1024:
            return f"{amount:.1f} {unit}"
        amount /= 1024
    return f"{amount:.1f} GiB"


def _as_dict(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def _print_json(message: Message) -> int:
    print(json.dumps(_as_dict(message), indent=2))
    return 0


def _print_json_list(messages: Iterable[Message]) -> int:
    print(json.dumps([_as_dict(m) for m in messages], indent=2))
    return 0


def _print_message(message: Message, as_json: bool) -> int:
    if as_json:
        return _print_json(message)
    for name, value in _as_dict(message).items():
        shown = json.dumps(value) if isinstance(value, dict | list) else value
        print(f"{name}: {shown}")
    return 0


_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "login": _login,
    "logout": _logout,
    "whoami": _whoami,
    "projects_list": _projects_list,
    "projects_get": _projects_get,
    "projects_create": _projects_create,
    "projects_members": _projects_members,
    "projects_add_member": _projects_add_member,
    "projects_update": _projects_update,
    "annotations_list": _annotations_list,
    "annotations_get": _annotations_get,
    "annotations_create": _annotations_create,
    "annotations_history": _annotations_history,
    "annotations_restore": _annotations_restore,
    "annotations_delete": _annotations_delete,
    "annotations_undelete": _annotations_undelete,
    "masks_groups": _masks_groups,
    "masks_push": _masks_push,
    "masks_pull": _masks_pull,
    "masks_export": _masks_export,
    "masks_exports": _masks_exports,
    "masks_import": _masks_import,
    "review_submit": _review_step,
    "review_approve": _review_step,
    "review_reject": _review_step,
    "review_queue": _review_queue,
}
