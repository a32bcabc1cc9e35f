"""`pacs`: the PACS Extension Server from a shell.

Parsing imports nothing heavy, so `--help` answers at once; the commands themselves live in
commands.py. Failures print one line, `error: ...`, to stderr: exit code 1 for a failed call
(with the gRPC status, `error: NOT_FOUND: mask group not found`), 2 for a usage error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

_EPILOG = (
    "The server and token come from 'pacs login', or from PACS_SERVER, PACS_TOKEN and "
    "PACS_INSECURE=1 (plaintext), which override it."
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pacs",
        description="Annotations and segmentation masks on the PACS Extension Server.",
        epilog=_EPILOG,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    connection = _connection_options()
    output = argparse.ArgumentParser(add_help=False)
    output.add_argument("--json", action="store_true", help="print JSON instead of text")

    login = commands.add_parser(
        "login",
        help="save the server and how to get tokens, and check them",
        description="Save the server address and a token source in "
        "$XDG_CONFIG_HOME/pacs/config.json (readable by you only), then log in once to "
        "check them. Secrets are read from standard input or the environment, never from "
        "the command line.",
    )
    login.add_argument("--server", required=True, help="the server's gRPC address, host:port")
    login.add_argument("--insecure", action="store_true", help="plaintext (local development)")
    source = login.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--token-stdin", action="store_true", help="read a bearer token from standard input"
    )
    source.add_argument(
        "--client-id",
        help="a Keycloak client (service account) using the client-credentials grant; its "
        "secret comes from PACS_CLIENT_SECRET or standard input",
    )
    login.add_argument(
        "--realm-url", help="with --client-id: the realm, e.g. https://sso.example/realms/pacs"
    )
    login.add_argument("--token-url", help="with --client-id: the token endpoint itself")
    login.add_argument("--timeout", type=float, default=30.0, help=argparse.SUPPRESS)
    login.set_defaults(run="login")

    logout = commands.add_parser(
        "logout", help="forget the saved login", description="Delete the saved login file."
    )
    logout.set_defaults(run="logout")

    whoami = commands.add_parser(
        "whoami",
        parents=[connection, output],
        help="who the token belongs to, and their projects",
        description="Show the caller's profile, platform role and project memberships.",
    )
    whoami.set_defaults(run="whoami")

    _projects(commands, connection, output)
    _annotations(commands, connection, output)
    _masks(commands, connection, output)
    _review(commands, connection, output)
    return parser


def _connection_options() -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(add_help=False)
    group = options.add_argument_group("connection")
    group.add_argument("--server", help="host:port (default: PACS_SERVER, then the saved login)")
    group.add_argument(
        "--insecure", action="store_true", default=None, help="plaintext (local development)"
    )
    group.add_argument(
        "--timeout", type=float, default=30.0, help="deadline of each call in seconds (30)"
    )
    return options


def _group(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help_text: str
) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    parser = commands.add_parser(name, help=help_text, description=help_text.capitalize() + ".")
    return parser.add_subparsers(dest=f"{name}_command", metavar="COMMAND", required=True)


def _projects(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    connection: argparse.ArgumentParser,
    output: argparse.ArgumentParser,
) -> None:
    projects = _group(commands, "projects", "list, show and create projects")
    parents = [connection, output]
    listing = projects.add_parser(
        "list", parents=parents, help="your projects", description="List your projects "
        "(every project for platform administrators)."
    )  # fmt: skip
    listing.add_argument("--include-inactive", action="store_true", help="also deactivated ones")
    listing.set_defaults(run="projects_list")
    get = projects.add_parser(
        "get", parents=parents, help="one project", description="Show a project."
    )
    get.add_argument("project_id", type=int, metavar="PROJECT_ID")
    get.set_defaults(run="projects_get")
    create = projects.add_parser(
        "create", parents=parents, help="create a project (platform administrators)",
        description="Create a project. Platform administrators only.",
    )  # fmt: skip
    create.add_argument("name", metavar="NAME")
    create.add_argument("--description", default="")
    create.set_defaults(run="projects_create")
    members = projects.add_parser(
        "members", parents=parents, help="a project's members",
        description="List a project's members and their roles.",
    )  # fmt: skip
    members.add_argument("project_id", type=int, metavar="PROJECT_ID")
    members.set_defaults(run="projects_members")
    add = projects.add_parser(
        "add-member", parents=parents, help="grant a user a role in a project",
        description="Grant a user a role in a project, or change the role they have.",
    )  # fmt: skip
    add.add_argument("project_id", type=int, metavar="PROJECT_ID")
    add.add_argument("user_id", type=int, metavar="USER_ID")
    # The names of commands.py's _ROLES, spelled out so that parsing imports nothing heavy.
    add.add_argument(
        "--role", required=True, choices=["viewer", "annotator", "reviewer", "owner"],
        help="reviewers read, approve and reject, and never write",
    )  # fmt: skip
    add.set_defaults(run="projects_add_member")
    update = projects.add_parser(
        "update", parents=parents, help="change a project's description or settings (owners)",
        description="Change a project's description or settings; only what is given changes. "
        "Project owners only.",
    )  # fmt: skip
    update.add_argument("project_id", type=int, metavar="PROJECT_ID")
    update.add_argument("--description")
    update.add_argument("--export-unapproved", choices=["on", "off"],
                        help="whether mask groups that are not approved may be exported to the "
                             "PACS (off by default)")  # fmt: skip
    update.set_defaults(run="projects_update")


def _annotations(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    connection: argparse.ArgumentParser,
    output: argparse.ArgumentParser,
) -> None:
    annotations = _group(
        commands, "annotations", "list, show, create and delete annotations, and their history"
    )
    parents = [connection, output]
    listing = annotations.add_parser(
        "list", parents=parents, help="annotations, newest first",
        description="List annotations, newest first, from one project or all you may read.",
    )  # fmt: skip
    listing.add_argument("--project", type=int, default=0, metavar="ID")
    listing.add_argument("--study", default="", metavar="UID")
    listing.add_argument("--series", default="", metavar="UID")
    listing.add_argument("--type", default="", dest="annotation_type", metavar="TYPE")
    listing.add_argument("--limit", type=int, default=50, help="at most this many (50; 0: all)")
    listing.set_defaults(run="annotations_list")
    get = annotations.add_parser(
        "get", parents=parents, help="one annotation",
        description="Show an annotation, now or as one of its revisions left it.",
    )  # fmt: skip
    get.add_argument("annotation_id", type=int, metavar="ANNOTATION_ID")
    get.add_argument("--revision", type=int, default=0, metavar="N",
                     help="as revision N left it (see 'history'; default: now)")  # fmt: skip
    get.set_defaults(run="annotations_get")
    create = annotations.add_parser(
        "create", parents=parents, help="create an annotation",
        description="Create an annotation on a study (optionally a series and instance).",
    )  # fmt: skip
    create.add_argument("--project", type=int, required=True, metavar="ID")
    create.add_argument("--study", required=True, metavar="UID")
    create.add_argument("--series", default="", metavar="UID")
    create.add_argument("--instance", default="", metavar="UID")
    create.add_argument("--type", required=True, dest="annotation_type", metavar="TYPE",
                        help="point, polygon, segmentation, ... or x-<vendor type>")  # fmt: skip
    create.add_argument("--data", default="{}", metavar="JSON",
                        help="annotation_data, a JSON object; @FILE reads a file")  # fmt: skip
    create.add_argument("--measurements", metavar="JSON", help="measurement_values, any JSON")
    create.add_argument("--viewer-software", default="")
    create.add_argument("--request-id", help="idempotency key (default: a new one)")
    create.set_defaults(run="annotations_create")
    history = annotations.add_parser(
        "history", parents=parents, help="an annotation's revisions, newest first",
        description="List what each write of an annotation left, newest first: revision, "
        "action, user, time, the fields it changed and, for a restore, its source revision. "
        "'get --revision N' shows a revision's content.",
    )  # fmt: skip
    history.add_argument("annotation_id", type=int, metavar="ANNOTATION_ID")
    history.set_defaults(run="annotations_history")
    etag = argparse.ArgumentParser(add_help=False)
    etag.add_argument("--etag", default="", metavar="ETAG",
                      help="refuse (ABORTED) if the annotation changed since this etag was "
                           "read")  # fmt: skip
    restore = annotations.add_parser(
        "restore", parents=[*parents, etag], help="write an earlier revision back",
        description="Write an earlier revision's content back as a new revision; the history "
        "is kept.",
    )  # fmt: skip
    restore.add_argument("annotation_id", type=int, metavar="ANNOTATION_ID")
    restore.add_argument("revision", type=int, metavar="REVISION")
    restore.set_defaults(run="annotations_restore")
    delete = annotations.add_parser(
        "delete", parents=[connection, etag], help="move an annotation to the trash",
        description="Move an annotation, with its mask groups, to the trash, where 'undelete' "
        "brings it back until the server purges it. With --purge (project owners) it is "
        "deleted at once and for good.",
    )  # fmt: skip
    delete.add_argument("annotation_id", type=int, metavar="ANNOTATION_ID")
    delete.add_argument("--purge", action="store_true",
                        help="delete for good, history and stored masks included "
                             "(project owners)")  # fmt: skip
    delete.set_defaults(run="annotations_delete")
    undelete = annotations.add_parser(
        "undelete", parents=[*parents, etag], help="bring an annotation back from the trash",
        description="Bring an annotation back from the trash, as it was.",
    )  # fmt: skip
    undelete.add_argument("annotation_id", type=int, metavar="ANNOTATION_ID")
    undelete.set_defaults(run="annotations_undelete")


def _masks(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    connection: argparse.ArgumentParser,
    output: argparse.ArgumentParser,
) -> None:
    masks = _group(commands, "masks", "push and pull segmentation masks")
    transfer = argparse.ArgumentParser(add_help=False)
    transfer.add_argument("--concurrency", type=int, default=8, help="parallel transfers (8)")
    transfer.add_argument("--no-progress", action="store_true", help="no progress bar")
    groups = masks.add_parser(
        "groups", parents=[connection, output], help="an annotation's mask groups",
        description="List an annotation's mask groups with their progress.",
    )  # fmt: skip
    groups.add_argument("--annotation", type=int, required=True, metavar="ID")
    groups.set_defaults(run="masks_groups")
    push = masks.add_parser(
        "push", parents=[connection, transfer], help="upload a folder of slice images",
        description="Upload a folder of PNG slices, each named by its slice index (0007.png), "
        "to a new mask group under an annotation, or to an existing one (--group), where "
        "slices already recorded are skipped.",
    )  # fmt: skip
    push.add_argument("directory", metavar="DIR")
    push.add_argument("--annotation", type=int, required=True, metavar="ID")
    push.add_argument("--group", type=int, metavar="GROUP_ID", help="an existing group")
    push.add_argument("--slice-count", type=int, help="slices the new group expects (files)")
    push.add_argument("--name", default="", help="the new group's name")
    push.add_argument("--model", default="", help="the model that made the masks")
    push.add_argument("--model-version", default="", help="the model's version")
    push.add_argument("--modality", default="", help="CT, MR, ...")
    push.add_argument("--label", default="", help="label name of every slice")
    push.add_argument("--segments", metavar="FILE",
                      help="the new group's segments from a JSON or TOML (.toml) spec: a "
                           "list (or [[segments]]) of pixel_value, label and optionally "
                           "category and type ([code, scheme, meaning]), color, algorithm; "
                           "every slice is then an 8-bit label map, pixel value = "
                           "segment")  # fmt: skip
    push.add_argument("--method", choices=["post", "put"], default="post",
                      help="signed POST policies (default) or PUT URLs (only where the "
                           "server allows them)")  # fmt: skip
    push.set_defaults(run="masks_push")
    pull = masks.add_parser(
        "pull", parents=[connection, transfer], help="download a mask group into a folder",
        description="Download every recorded slice of a mask group into DIR as NNNN.png, "
        "each checked against its recorded MD5.",
    )  # fmt: skip
    pull.add_argument("group_id", type=int, metavar="GROUP_ID")
    pull.add_argument("directory", metavar="DIR")
    pull.add_argument("--annotation", type=int, required=True, metavar="ID",
                      help="the annotation the group belongs to")  # fmt: skip
    pull.set_defaults(run="masks_pull")
    progress = argparse.ArgumentParser(add_help=False)
    progress.add_argument("--no-progress", action="store_true", help="no progress line")
    export = masks.add_parser(
        "export", parents=[connection, output, progress],
        help="write a mask group as a DICOM SEG, optionally to the PACS",
        description="Write a COMPLETE mask group as one DICOM Segmentation (SEG). With "
        "--to-pacs the server also stores it in the PACS; with --output the .dcm is "
        "downloaded too. Exits 1 when the PACS did not store it (the export is still kept).",
    )  # fmt: skip
    export.add_argument("group_id", type=int, metavar="GROUP_ID")
    export.add_argument("--annotation", type=int, required=True, metavar="ID",
                        help="the annotation the group belongs to")  # fmt: skip
    export.add_argument("--to-pacs", action="store_true", help="store the SEG in the PACS")
    export.add_argument("--output", metavar="PATH", help="save the .dcm here (a file or folder)")
    export.add_argument("--request-id", help="idempotency key (default: a new one)")
    export.set_defaults(run="masks_export")
    exports = masks.add_parser(
        "exports", parents=[connection, output], help="a mask group's DICOM SEG exports",
        description="List a mask group's exports, newest first.",
    )  # fmt: skip
    exports.add_argument("group_id", type=int, metavar="GROUP_ID")
    exports.add_argument("--annotation", type=int, required=True, metavar="ID",
                         help="the annotation the group belongs to")  # fmt: skip
    exports.add_argument("--urls", action="store_true",
                         help="also print each export's signed download URL (a secret while "
                              "it lasts)")  # fmt: skip
    exports.set_defaults(run="masks_exports")
    imports = masks.add_parser(
        "import", parents=[connection, output, progress],
        help="make a mask group from a DICOM SEG in the PACS or a file",
        description="Create a COMPLETE mask group under an annotation from a DICOM "
        "Segmentation: a local .dcm FILE, or one in the PACS (--from-pacs). Its segments, "
        "codes, model and version come from the SEG.",
    )  # fmt: skip
    imports.add_argument("file", nargs="?", metavar="FILE", help="a DICOM SEG file (.dcm)")
    imports.add_argument("--annotation", type=int, required=True, metavar="ID")
    imports.add_argument("--from-pacs", nargs=3, metavar=("STUDY", "SERIES", "INSTANCE"),
                         help="the SEG's study, series and instance UIDs in the PACS")  # fmt: skip
    imports.add_argument("--name", default="", help="the group's name (default: the SEG's label)")
    imports.add_argument("--description", default="")
    imports.add_argument("--request-id", help="idempotency key (default: a new one)")
    imports.set_defaults(run="masks_import")


def _review(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    connection: argparse.ArgumentParser,
    output: argparse.ArgumentParser,
) -> None:
    review = _group(commands, "review", "submit, approve and reject annotations and mask groups")
    parents = [connection, output]
    target = argparse.ArgumentParser(add_help=False)
    target.add_argument("annotation_id", type=int, metavar="ANNOTATION_ID")
    target.add_argument(
        "--group",
        type=int,
        metavar="GROUP_ID",
        help="a mask group of the annotation instead of the annotation",
    )
    target.add_argument("--etag", default="", metavar="ETAG",
                        help="refuse (ABORTED) if the annotation changed since this etag was "
                             "read (annotations only)")  # fmt: skip
    submit = review.add_parser(
        "submit", parents=[*parents, target], help="ask for review (annotators)",
        description="Ask for review of a draft or rejected annotation, or of a COMPLETE mask "
        "group (--group).",
    )  # fmt: skip
    submit.set_defaults(run="review_submit")
    approve = review.add_parser(
        "approve", parents=[*parents, target], help="approve what was submitted (reviewers)",
        description="Approve a submitted annotation (it is then frozen) or mask group (it may "
        "then be exported to the PACS). Reviewers and owners; nobody approves their own work.",
    )  # fmt: skip
    approve.set_defaults(run="review_approve")
    reject = review.add_parser(
        "reject", parents=[*parents, target], help="send what was submitted back (reviewers)",
        description="Send a submitted annotation or mask group back to its authors, saying "
        "what to change. Reviewers and owners.",
    )  # fmt: skip
    reject.add_argument("--comment", required=True, metavar="TEXT",
                        help="what to change, at most 2,000 characters")  # fmt: skip
    reject.set_defaults(run="review_reject")
    queue = review.add_parser(
        "queue", parents=parents, help="what waits for review in a project",
        description="List a project's submitted annotations, newest first: id, type, study, "
        "who submitted it and when.",
    )  # fmt: skip
    queue.add_argument("--project", type=int, required=True, metavar="ID")
    queue.set_defaults(run="review_queue")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from pacs.client import commands

    try:
        return commands.run(args)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except commands.UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as error:  # noqa: BLE001 - every failure becomes one line
        print(f"error: {commands.describe(error)}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
