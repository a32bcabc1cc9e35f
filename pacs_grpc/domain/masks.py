"""Mask groups, masks, and the signed uploads that become masks."""

from __future__ import annotations

import enum
import posixpath
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pacs_grpc.domain import validation
from pacs_grpc.domain.annotation_rules import JsonLimits, dicom_uid, json_shape, json_size
from pacs_grpc.domain.errors import InvalidArgument
from pacs_grpc.domain.identity import ProjectRole
from pacs_grpc.domain.review import Review, ReviewState
from pacs_grpc.domain.segments import Segment, SegmentInput
from pacs_grpc.domain.segments import segments as validated_segments

MAX_SLICE_COUNT = 100_000
_MD5 = re.compile(r"^[0-9a-f]{32}$")


# The first bytes of every PNG file: what completion and the push check slices against.
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class MaskGroup:
    """The mask slices of one annotation, `slice_count` of them expected; `completed_slices` counts
    those recorded when the row was read, and the group is complete once each has a mask.
    """

    id: int
    annotation_id: int
    group_name: str | None
    model_name: str | None
    version: str | None
    modality: str | None
    slice_count: int
    mask_type: str
    description: str | None
    created_by: int | None
    created_at: datetime
    updated_at: datetime
    completed_slices: int
    # Declared: slices are label maps (pixel value = segment). Empty: nonzero = label_name.
    segments: tuple[Segment, ...] = ()
    review: Review = field(default_factory=lambda: Review(ReviewState.DRAFT))
    # Versions (migration 0015): the lineage is its first version's id; the current version is
    # the newest complete one (the first, until one is complete).
    lineage_id: int = 0
    version_number: int = 1
    supersedes_group_id: int | None = None
    is_current: bool = True
    # Provenance: how the model ran, on which series, by which pipeline (token azp).
    inference_parameters: dict[str, Any] | None = None
    input_series_uid: str | None = None
    client_id: str | None = None
    # When it went to the trash (migration 0016); None while it is live.
    deleted_at: datetime | None = None

    @property
    def complete(self) -> bool:
        return self.completed_slices >= self.slice_count


@dataclass(frozen=True)
class Mask:
    """One recorded slice: `file_path` and `object_version` name the exact bytes checked when it was
    recorded, and downloads are signed for them; `checksum` is the MD5 of those bytes (storage's
    ETag for a single-part upload through a ticket; computed by the server for pushed and imported
    slices, whose stored ETag differs past 5 MiB).
    `sop_instance_uid` is its source image as declared or bound; None when neither.
    """

    id: int
    mask_group_id: int
    slice_index: int
    sop_instance_uid: str | None
    label_name: str | None
    file_path: str
    mime_type: str
    file_size: int
    checksum: str | None
    width: int | None
    height: int | None
    created_at: datetime
    # The storage version checked at completion; downloads are signed for it.
    object_version: str | None = None


class UploadMethod(enum.Enum):
    """How a ticket lets a client upload a slice. POST (the default): a policy with which storage
    enforces key, content type and exact size. PUT: a signed URL, only where the server allows it
    and with a declared MD5, since storage enforces less.
    """

    POST = "POST"
    PUT = "PUT"


@dataclass(frozen=True)
class SliceDeclaration:
    """One slice a client is about to upload."""

    slice_index: int
    sop_instance_uid: str | None
    label_name: str | None
    content_type: str
    size_bytes: int
    md5: str | None


@dataclass(frozen=True)
class PendingUpload:
    """An upload ticket and what it declared (slice, exact size, content type, MD5 if any); expired
    at `expires_at`, and `completed_at` is set once a mask is recorded from it. PushMasks and
    imports make one in memory (method PUSH or IMPORT) that is never stored as a ticket.
    """

    upload_id: uuid.UUID
    mask_group_id: int
    slice_index: int
    sop_instance_uid: str | None
    label_name: str | None
    content_type: str
    size_bytes: int
    md5: str | None
    method: str
    object_key: str
    expires_at: datetime
    completed_at: datetime | None


@dataclass(frozen=True)
class GroupAccess:
    """A mask group with where it sits (project, study, the annotation's series) and the caller's
    role in that project (None: not a member), read in one query so access is checked on one
    snapshot.
    """

    group: MaskGroup
    project_id: int
    study_uid: str
    caller_role: ProjectRole | None
    project_active: bool
    # The annotation's series: the images its mask slices are drawn on.
    series_uid: str | None = None
    # The project's setting: whether groups that are not approved may go to the PACS.
    export_unapproved: bool = False


@dataclass(frozen=True)
class NewMask:
    """A slice to record: the ticket it completes (or an in-memory one) and the stored object as
    checked; `file_path` and `object_version` name its exact bytes, `checksum` their MD5.
    """

    upload: PendingUpload
    file_path: str
    file_size: int
    checksum: str
    width: int
    height: int
    object_version: str | None


@dataclass(frozen=True)
class CompletedSlice:
    """One CompleteUpload entry, validated by `completions`: a ticket's id, the image's width and
    height (1-65535), and an MD5 that is checked against storage when the ticket declared none.
    """

    upload_id: uuid.UUID
    width: int
    height: int
    md5: str | None


@dataclass(frozen=True)
class GroupFields:
    """A mask group's client-set fields; made only by `group_fields`, which validates every one
    (lengths, slice_count within MAX_SLICE_COUNT, segments by the domain's rules).
    """

    group_name: str | None
    model_name: str | None
    version: str | None
    modality: str | None
    slice_count: int
    mask_type: str
    description: str | None
    segments: tuple[Segment, ...] = ()
    inference_parameters: dict[str, Any] | None = None
    input_series_uid: str | None = None


@dataclass(frozen=True)
class VersionOf:
    """Where a new version sits: one number after the group it supersedes, in its lineage."""

    supersedes_group_id: int
    lineage_id: int
    version_number: int


# The SEG carries them as AlgorithmParameters, a DICOM LT of at most 10,240 characters.
MAX_INFERENCE_PARAMETERS_BYTES = 8192
_INFERENCE_LIMITS = JsonLimits(max_bytes=MAX_INFERENCE_PARAMETERS_BYTES, max_depth=8,
                               max_elements=1000)  # fmt: skip


def group_fields(
    *,
    group_name: str,
    model_name: str,
    version: str,
    modality: str,
    slice_count: int,
    mask_type: str,
    description: str,
    segments: Sequence[SegmentInput] = (),
    inference_parameters: dict[str, Any] | None = None,
    input_series_uid: str = "",
) -> GroupFields:
    prefix = "mask_group"
    if inference_parameters is not None:
        json_shape(f"{prefix}.inference_parameters", inference_parameters, _INFERENCE_LIMITS)
        if json_size(inference_parameters) > MAX_INFERENCE_PARAMETERS_BYTES:
            raise InvalidArgument(
                f"{prefix}.inference_parameters",
                f"must be at most {MAX_INFERENCE_PARAMETERS_BYTES} bytes of JSON",
            )
    if not 1 <= slice_count <= MAX_SLICE_COUNT:
        raise InvalidArgument(f"{prefix}.slice_count", f"must be between 1 and {MAX_SLICE_COUNT}")
    model = validation.text(f"{prefix}.model_name", model_name, max_length=200)
    return GroupFields(
        group_name=validation.text(f"{prefix}.group_name", group_name, max_length=200),
        model_name=model,
        version=validation.text(f"{prefix}.version", version, max_length=100),
        modality=validation.text(f"{prefix}.modality", modality, max_length=16),
        slice_count=slice_count,
        mask_type=validation.text(f"{prefix}.mask_type", mask_type, max_length=64)
        or "segmentation",
        description=validation.text(f"{prefix}.description", description, max_length=2000),
        segments=validated_segments(f"{prefix}.segments", segments, has_model=model is not None),
        inference_parameters=inference_parameters or None,
        input_series_uid=dicom_uid(f"{prefix}.input_series_uid", input_series_uid, required=False),
    )


def md5_hex(field: str, value: str) -> str | None:
    if not value:
        return None
    lowered = value.lower()
    if not _MD5.match(lowered):
        raise InvalidArgument(field, "must be 32 hexadecimal digits (an MD5)")
    return lowered


def slices(
    declared: list[SliceDeclaration],
    *,
    slice_count: int,
    max_slices: int,
    max_bytes: int,
    allowed_types: frozenset[str],
) -> list[SliceDeclaration]:
    """Validated slices: indexes in range and distinct, sizes and types allowed."""
    if not declared:
        raise InvalidArgument("slices", "must list at least one slice")
    if len(declared) > max_slices:
        raise InvalidArgument("slices", f"must list at most {max_slices} slices per call")
    seen: set[int] = set()
    checked = []
    for position, item in enumerate(declared):
        field = f"slices[{position}]"
        one = declaration(
            field, item, slice_count=slice_count, max_bytes=max_bytes, allowed_types=allowed_types
        )
        if one.slice_index in seen:
            raise InvalidArgument(f"{field}.slice_index", "is repeated in this request")
        seen.add(one.slice_index)
        checked.append(one)
    return checked


def declaration(
    field: str,
    item: SliceDeclaration,
    *,
    slice_count: int,
    max_bytes: int,
    allowed_types: frozenset[str],
) -> SliceDeclaration:
    """One slice as declared, validated; errors name `field` (slices[i] of a ticket request,
    slice[i] of a push)."""
    if not 0 <= item.slice_index < slice_count:
        raise InvalidArgument(
            f"{field}.slice_index", f"must be in [0, {slice_count}) for this group"
        )
    content_type = item.content_type or "image/png"
    if content_type not in allowed_types:
        raise InvalidArgument(
            f"{field}.content_type", f"must be one of {', '.join(sorted(allowed_types))}"
        )
    if not 1 <= item.size_bytes <= max_bytes:
        raise InvalidArgument(f"{field}.size_bytes", f"must be between 1 and {max_bytes}")
    return SliceDeclaration(
        slice_index=item.slice_index,
        sop_instance_uid=dicom_uid(
            f"{field}.sop_instance_uid", item.sop_instance_uid or "", required=False
        ),
        label_name=validation.text(f"{field}.label_name", item.label_name or "", max_length=200),
        content_type=content_type,
        size_bytes=item.size_bytes,
        md5=md5_hex(f"{field}.md5", item.md5 or ""),
    )


def completions(items: list[tuple[str, int, int, str]], max_items: int) -> list[CompletedSlice]:
    """(upload_id, width, height, md5) from the request, validated."""
    if not items:
        raise InvalidArgument("uploads", "must list at least one upload")
    if len(items) > max_items:
        raise InvalidArgument("uploads", f"must list at most {max_items} uploads per call")
    seen: set[uuid.UUID] = set()
    result = []
    for position, (upload_id, width, height, md5) in enumerate(items):
        field = f"uploads[{position}]"
        try:
            parsed = uuid.UUID(upload_id)
        except ValueError:
            raise InvalidArgument(f"{field}.upload_id", "is not an upload id") from None
        if parsed in seen:
            raise InvalidArgument(f"{field}.upload_id", "is repeated in this request")
        seen.add(parsed)
        if not 1 <= width <= 65_535:
            raise InvalidArgument(f"{field}.width", "must be between 1 and 65535")
        if not 1 <= height <= 65_535:
            raise InvalidArgument(f"{field}.height", "must be between 1 and 65535")
        result.append(CompletedSlice(parsed, width, height, md5_hex(f"{field}.md5", md5)))
    return result


def uploads_prefix(project_id: int, annotation_id: int, group_id: int) -> str:
    return f"masks/p{project_id}/a{annotation_id}/g{group_id}/uploads/"


def upload_key(
    project_id: int, annotation_id: int, group_id: int, batch_id: uuid.UUID, upload_id: uuid.UUID
) -> str:
    """Where a ticket lets a client write. Server-chosen ids only: nothing about the patient.

    The tickets of one CreateUploadUrls call share a folder (`batch_id`), so completing them
    lists just that folder, not every upload the group has had (see listing_prefix).
    """
    return f"{uploads_prefix(project_id, annotation_id, group_id)}{batch_id}/{upload_id}"


def listing_prefix(keys: Iterable[str], *, within: str) -> str:
    """The deepest folder under `within` that holds every one of `keys`: what completing them
    needs to list. Listing costs storage time per object listed, and a series uploaded in
    batches would otherwise have each completion list the batches before it too."""
    folders = [key.rsplit("/", 1)[0] for key in keys if key.startswith(within)]
    if not folders:
        return within
    folder = posixpath.commonpath(folders) + "/"
    return folder if folder.startswith(within) else within


def pushed_key(project_id: int, annotation_id: int, group_id: int, upload_id: uuid.UUID) -> str:
    """Where a slice pushed through the service is stored."""
    return f"masks/p{project_id}/a{annotation_id}/g{group_id}/pushed/{upload_id}"


def imported_key(
    project_id: int, annotation_id: int, import_id: uuid.UUID, upload_id: uuid.UUID
) -> str:
    """Where a slice of an imported segmentation is stored. Written before its group's row
    exists (all or nothing, with no transaction held across storage), so it is named by the
    import, not by the group."""
    return f"masks/p{project_id}/a{annotation_id}/imports/{import_id}/{upload_id}"


def segmentation_upload_key(project_id: int, annotation_id: int, upload_id: uuid.UUID) -> str:
    """Where a CreateSegmentationUpload ticket lets a client write one DICOM SEG file: only a
    ticket for this annotation can name it, which is what lets the import trust its origin."""
    return f"imports/p{project_id}/a{annotation_id}/{upload_id}"


# Slices a refusal names; the rest are counted.
LISTED_SLICES = 20


def slice_list(indexes: Sequence[int]) -> str:
    """Slice indexes for an error text: the first LISTED_SLICES, in order."""
    shown = ", ".join(str(i) for i in sorted(indexes)[:LISTED_SLICES])
    return shown + (" ..." if len(indexes) > LISTED_SLICES else "")


@dataclass(frozen=True)
class MaskLimits:
    """What one MaskService call may ask for and store: from Settings, except
    push_parallel_slices, a fixed tuning of the push."""

    max_slices_per_call: int
    max_mask_bytes: int
    allowed_content_types: frozenset[str]
    upload_ttl: timedelta
    download_ttl: timedelta
    max_ttl: timedelta
    max_page_size: int
    check_png_signature: bool
    # PUT tickets sign only the host, so storage that honours unsigned headers would let
    # one become a server-side copy (x-amz-copy-source); an operator must opt in.
    allow_put_uploads: bool
    # Bytes of pushed slices in flight (declared size, at most 12 MiB a slice).
    push_memory_per_process: int
    push_memory_per_user: int
    # Slices of one push stored at once; each holds at most a few MiB of chunks in memory.
    push_parallel_slices: int = 8
