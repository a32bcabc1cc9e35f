"""PacsClient: a synchronous client for pipelines and scripts.

    tokens = ClientCredentials.keycloak(realm_url, "seg-model", secret)
    with PacsClient("pacs.example:443", tokens) as pacs:
        result = pacs.upload_mask_group(annotation_id, directory="out/masks", model_name="nnU")

The generated stubs are there too (`pacs.identity`, `pacs.annotations`, `pacs.masks`), on the
same channel and so with the same deadlines, tokens and retries (see retry.py).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

import grpc
from google.protobuf import field_mask_pb2, json_format

from pacs.client import segments as segment_rules
from pacs.client import slices as slice_sources
from pacs.client.downloads import DownloadResult, MaskDownloader, masks_of_group
from pacs.client.exports import ExportResult, SegmentationUploadError, save_export
from pacs.client.paging import PAGE_SIZE, all_items
from pacs.client.retry import CallPolicy, RetryPolicy
from pacs.client.tokens import StaticToken, TokenProvider
from pacs.client.transfer import SignedUrlTransport, TransferFailed
from pacs.client.uploads import MaskUploader, ProgressCallback, UploadOptions
from pacs.v1 import (
    annotation_pb2,
    annotation_pb2_grpc,
    identity_pb2,
    identity_pb2_grpc,
    mask_pb2,
    mask_pb2_grpc,
    review_pb2,
)

if TYPE_CHECKING:
    import numpy.typing as npt

DICOM_CONTENT_TYPE = "application/dicom"


@dataclass(frozen=True)
class UploadResult:
    group: mask_pb2.MaskGroup
    uploaded: int
    # Slices the group had already recorded, left out of this upload.
    skipped: int
    bytes_sent: int
    retries: int
    seconds: float


class PacsClient:
    def __init__(
        self,
        target: str,
        tokens: TokenProvider | str,
        *,
        insecure: bool = False,
        root_certificates: bytes | None = None,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        options: Iterable[tuple[str, Any]] = (),
    ) -> None:
        """`target` is `host:port`; TLS unless `insecure` (plaintext, for local development).
        `tokens` is a token provider, or a token string. `timeout` is the default deadline of
        each call, retries included."""
        self.tokens = StaticToken(tokens) if isinstance(tokens, str) else tokens
        channel_options = list(options)
        if insecure:
            base = grpc.insecure_channel(target, options=channel_options)
        else:
            credentials = grpc.ssl_channel_credentials(root_certificates)
            base = grpc.secure_channel(target, credentials, options=channel_options)
        self._base = base
        self.channel = grpc.intercept_channel(
            base, CallPolicy(self.tokens, retry=retry, timeout=timeout)
        )
        self.identity = identity_pb2_grpc.IdentityServiceStub(self.channel)
        self.annotations = annotation_pb2_grpc.AnnotationServiceStub(self.channel)
        self.masks = mask_pb2_grpc.MaskServiceStub(self.channel)

    def close(self) -> None:
        self._base.close()

    def __enter__(self) -> PacsClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- identity -------------------------------------------------------------------------------

    def login(self) -> identity_pb2.LoginResponse:
        """The caller's profile (created on first use), memberships and admin flag."""
        return self.identity.Login(identity_pb2.LoginRequest())

    def list_projects(self, *, include_inactive: bool = False) -> Iterator[identity_pb2.Project]:
        return all_items(
            lambda token: self.identity.ListProjects(
                identity_pb2.ListProjectsRequest(
                    page_size=PAGE_SIZE, page_token=token, include_inactive=include_inactive
                )
            ),
            lambda reply: reply.projects,
        )

    def list_project_members(self, project_id: int) -> Iterator[identity_pb2.ProjectMember]:
        return all_items(
            lambda token: self.identity.ListProjectMembers(
                identity_pb2.ListProjectMembersRequest(
                    project_id=project_id, page_size=PAGE_SIZE, page_token=token
                )
            ),
            lambda reply: reply.members,
        )

    def get_project(self, project_id: int) -> identity_pb2.Project:
        return self.identity.GetProject(
            identity_pb2.GetProjectRequest(project_id=project_id)
        ).project

    def create_project(
        self, name: str, *, description: str = "", request_id: str | None = None
    ) -> identity_pb2.Project:
        """Platform administrators only. Retried safely: a request id is generated if not given."""
        return self.identity.CreateProject(
            identity_pb2.CreateProjectRequest(
                project=identity_pb2.Project(name=name, description=description),
                request_id=request_id or str(uuid.uuid4()),
            )
        ).project

    def update_project(
        self,
        project_id: int,
        *,
        export_unapproved: bool | None = None,
        description: str | None = None,
    ) -> identity_pb2.Project:
        """Change the settings given, and only those (project owners). `export_unapproved`
        lets ExportMaskGroup send mask groups that are not approved. Returns the project."""
        project = identity_pb2.Project()
        paths: list[str] = []
        if description is not None:
            project.description = description
            paths.append("description")
        if export_unapproved is not None:
            project.export_unapproved = export_unapproved
            paths.append("export_unapproved")
        if not paths:
            raise ValueError("nothing to change: give export_unapproved= or description=")
        return self.identity.UpdateProject(
            identity_pb2.UpdateProjectRequest(
                project_id=project_id,
                project=project,
                update_mask=field_mask_pb2.FieldMask(paths=paths),
            )
        ).project

    # -- annotations ----------------------------------------------------------------------------

    def list_annotations(
        self,
        *,
        project_id: int = 0,
        study_uid: str = "",
        series_uid: str = "",
        annotation_type: str = "",
        review_state: review_pb2.ReviewState.ValueType = review_pb2.REVIEW_STATE_UNSPECIFIED,
    ) -> Iterator[annotation_pb2.Annotation]:
        """Newest first, across pages; without `project_id`, from every readable project;
        with `review_state`, only annotations in that state."""
        return all_items(
            lambda token: self.annotations.ListAnnotations(
                annotation_pb2.ListAnnotationsRequest(
                    project_id=project_id, study_uid=study_uid, series_uid=series_uid,
                    annotation_type=annotation_type, review_state=review_state,
                    page_size=PAGE_SIZE, page_token=token,
                )
            ),
            lambda reply: reply.annotations,
        )  # fmt: skip

    def review_queue(self, project_id: int) -> Iterator[annotation_pb2.Annotation]:
        """The project's annotations waiting for review (SUBMITTED), newest first, across
        pages; each one's `review` says who submitted it and when."""
        return self.list_annotations(
            project_id=project_id, review_state=review_pb2.REVIEW_STATE_SUBMITTED
        )

    def get_annotation(self, annotation_id: int, revision: int = 0) -> annotation_pb2.Annotation:
        """The annotation now or, given a `revision` (see `history`), as that revision left it,
        with that revision's etag and updated_at."""
        request = annotation_pb2.GetAnnotationRequest(
            annotation_id=annotation_id, revision=revision
        )
        return self.annotations.GetAnnotation(request).annotation

    def history(self, annotation_id: int) -> Iterator[annotation_pb2.AnnotationRevision]:
        """What each write of the annotation left, newest first, across pages: who, when, which
        action and which fields changed. `get_annotation(id, revision=n)` returns the content."""
        return all_items(
            lambda token: self.annotations.ListAnnotationRevisions(
                annotation_pb2.ListAnnotationRevisionsRequest(
                    annotation_id=annotation_id, page_size=PAGE_SIZE, page_token=token
                )
            ),
            lambda reply: reply.revisions,
        )

    def restore(
        self, annotation_id: int, revision: int, *, etag: str = ""
    ) -> annotation_pb2.Annotation:
        """Write an earlier revision's content back as a new revision (history is kept). With
        `etag`, refused with ABORTED if the annotation changed since it was read. Never retried:
        a repeat would add another revision."""
        return self.annotations.RestoreAnnotationRevision(
            annotation_pb2.RestoreAnnotationRevisionRequest(
                annotation_id=annotation_id, revision=revision, etag=etag
            )
        ).annotation

    def delete_annotation(self, annotation_id: int, *, etag: str = "", purge: bool = False) -> None:
        """Move the annotation, with its mask groups, to the trash (`undelete` brings it back);
        `purge` (project owners) deletes it at once and for good, history and stored objects
        included. With `etag`, refused with ABORTED if it changed since it was read."""
        self.annotations.DeleteAnnotation(
            annotation_pb2.DeleteAnnotationRequest(
                annotation_id=annotation_id, etag=etag, purge=purge
            )
        )

    def undelete(self, annotation_id: int, *, etag: str = "") -> annotation_pb2.Annotation:
        """Bring an annotation back from the trash, as it was."""
        return self.annotations.UndeleteAnnotation(
            annotation_pb2.UndeleteAnnotationRequest(annotation_id=annotation_id, etag=etag)
        ).annotation

    def create_annotation(
        self,
        *,
        project_id: int,
        study_uid: str,
        annotation_type: str,
        data: Mapping[str, Any],
        series_uid: str = "",
        instance_uid: str = "",
        measurement_values: Any = None,
        viewer_software: str = "",
        request_id: str | None = None,
    ) -> annotation_pb2.Annotation:
        """Retried safely: a request id is generated if not given."""
        annotation = annotation_pb2.Annotation(
            project_id=project_id, study_uid=study_uid, series_uid=series_uid,
            instance_uid=instance_uid, annotation_type=annotation_type,
            viewer_software=viewer_software,
        )  # fmt: skip
        # Present even when empty: the server requires annotation_data to be set.
        annotation.annotation_data.SetInParent()
        annotation.annotation_data.update(dict(data))
        if measurement_values is not None:
            json_format.ParseDict(measurement_values, annotation.measurement_values)
        return self.annotations.CreateAnnotation(
            annotation_pb2.CreateAnnotationRequest(
                annotation=annotation, request_id=request_id or str(uuid.uuid4())
            )
        ).annotation

    # -- review ---------------------------------------------------------------------------------
    # Each step acts on the annotation or, given a `group_id`, on that mask group of it, and
    # returns it as the step left it. `etag` is the annotation's (groups have none): a stale one
    # is refused with ABORTED. Never retried: the contract declares them RETRY_NEVER.

    @overload
    def submit(self, annotation_id: int, *, etag: str = "") -> annotation_pb2.Annotation: ...

    @overload
    def submit(self, annotation_id: int, *, group_id: int) -> mask_pb2.MaskGroup: ...

    def submit(
        self, annotation_id: int, *, group_id: int = 0, etag: str = ""
    ) -> annotation_pb2.Annotation | mask_pb2.MaskGroup:
        """Ask for review of a DRAFT or REJECTED annotation, or mask group (a COMPLETE one)."""
        if group_id:
            _refuse_group_etag(etag)
            return self.masks.SubmitMaskGroupForReview(
                mask_pb2.SubmitMaskGroupForReviewRequest(
                    annotation_id=annotation_id, group_id=group_id
                )
            ).mask_group
        return self.annotations.SubmitAnnotationForReview(
            annotation_pb2.SubmitAnnotationForReviewRequest(annotation_id=annotation_id, etag=etag)
        ).annotation

    @overload
    def approve(self, annotation_id: int, *, etag: str) -> annotation_pb2.Annotation: ...

    @overload
    def approve(self, annotation_id: int, *, group_id: int) -> mask_pb2.MaskGroup: ...

    def approve(
        self, annotation_id: int, *, group_id: int = 0, etag: str = ""
    ) -> annotation_pb2.Annotation | mask_pb2.MaskGroup:
        """Approve what was SUBMITTED (reviewers and owners); an approved annotation is frozen
        and an approved group may go to the PACS. An annotation's approval names the revision
        read (`etag`, required; ABORTED if it changed since). Nobody approves their own work,
        platform administrators included: PERMISSION_DENIED."""
        if group_id:
            _refuse_group_etag(etag)
            return self.masks.ApproveMaskGroup(
                mask_pb2.ApproveMaskGroupRequest(annotation_id=annotation_id, group_id=group_id)
            ).mask_group
        return self.annotations.ApproveAnnotation(
            annotation_pb2.ApproveAnnotationRequest(annotation_id=annotation_id, etag=etag)
        ).annotation

    @overload
    def reject(
        self, annotation_id: int, comment: str, *, etag: str = ""
    ) -> annotation_pb2.Annotation: ...

    @overload
    def reject(self, annotation_id: int, comment: str, *, group_id: int) -> mask_pb2.MaskGroup: ...

    def reject(
        self, annotation_id: int, comment: str, *, group_id: int = 0, etag: str = ""
    ) -> annotation_pb2.Annotation | mask_pb2.MaskGroup:
        """Send what was SUBMITTED back to its authors (reviewers and owners), saying why in
        `comment` (required, at most 2,000 characters); they change it and submit again."""
        if group_id:
            _refuse_group_etag(etag)
            return self.masks.RejectMaskGroup(
                mask_pb2.RejectMaskGroupRequest(
                    annotation_id=annotation_id, group_id=group_id, comment=comment
                )
            ).mask_group
        return self.annotations.RejectAnnotation(
            annotation_pb2.RejectAnnotationRequest(
                annotation_id=annotation_id, etag=etag, comment=comment
            )
        ).annotation

    # -- masks ----------------------------------------------------------------------------------

    def create_mask_group(
        self,
        annotation_id: int,
        *,
        slice_count: int,
        group_name: str = "",
        model_name: str = "",
        version: str = "",
        modality: str = "",
        mask_type: str = "",
        description: str = "",
        segments: Iterable[mask_pb2.Segment] = (),
        request_id: str | None = None,
        supersedes: int = 0,
        inference_parameters: Mapping[str, Any] | None = None,
        input_series_uid: str = "",
    ) -> mask_pb2.MaskGroup:
        """Retried safely: a request id is generated if not given. `segments` (see
        pacs.client.segments) makes the group's slices label maps. `supersedes` makes it the
        next version of that complete, current group: pending, and current once complete.
        `inference_parameters` (a JSON object, at most 8 KiB) and `input_series_uid` record how
        the model ran; the SEG export carries the parameters."""
        group = mask_pb2.MaskGroup(
            slice_count=slice_count, group_name=group_name, model_name=model_name,
            version=version, modality=modality, mask_type=mask_type, description=description,
            segments=list(segments), supersedes_group_id=supersedes,
            input_series_uid=input_series_uid,
        )  # fmt: skip
        if inference_parameters is not None:
            group.inference_parameters.update(dict(inference_parameters))
        return self.masks.CreateMaskGroup(
            mask_pb2.CreateMaskGroupRequest(
                annotation_id=annotation_id,
                mask_group=group,
                request_id=request_id or str(uuid.uuid4()),
            )
        ).mask_group

    def list_mask_group_versions(
        self, annotation_id: int, group_id: int
    ) -> list[mask_pb2.MaskGroup]:
        """Every version of the group's lineage, newest first."""
        request = mask_pb2.ListMaskGroupVersionsRequest(
            annotation_id=annotation_id, group_id=group_id
        )
        return list(self.masks.ListMaskGroupVersions(request).mask_groups)

    def get_mask_group(self, annotation_id: int, group_id: int) -> mask_pb2.MaskGroup:
        request = mask_pb2.GetMaskGroupRequest(annotation_id=annotation_id, group_id=group_id)
        return self.masks.GetMaskGroup(request).mask_group

    def list_mask_groups(
        self,
        annotation_id: int,
        *,
        review_state: review_pb2.ReviewState.ValueType = review_pb2.REVIEW_STATE_UNSPECIFIED,
        all_versions: bool = False,
    ) -> Iterator[mask_pb2.MaskGroup]:
        """The annotation's groups across pages: the current version of each lineage, or every
        version with `all_versions`; with `review_state`, only those in it."""
        return all_items(
            lambda token: self.masks.ListMaskGroups(
                mask_pb2.ListMaskGroupsRequest(
                    annotation_id=annotation_id, review_state=review_state, page_size=PAGE_SIZE,
                    page_token=token, all_versions=all_versions,
                )
            ),
            lambda reply: reply.mask_groups,
        )  # fmt: skip

    def list_masks(self, annotation_id: int, group_id: int) -> Iterator[mask_pb2.Mask]:
        """The group's recorded masks by slice index, across pages."""
        return masks_of_group(self.masks, annotation_id, group_id)

    def upload_mask_group(
        self,
        annotation_id: int,
        *,
        directory: Path | str | None = None,
        arrays: Iterable[npt.ArrayLike] | Mapping[int, npt.ArrayLike] | None = None,
        slices: Iterable[slice_sources.Slice] | None = None,
        label_maps: npt.ArrayLike | Mapping[int, npt.ArrayLike] | None = None,
        segments: Sequence[mask_pb2.Segment] = (),
        group_id: int | None = None,
        slice_count: int | None = None,
        group_name: str = "",
        model_name: str = "",
        version: str = "",
        modality: str = "",
        label_name: str = "",
        concurrency: int = 8,
        method: mask_pb2.UploadMethod.ValueType = mask_pb2.UPLOAD_METHOD_POST,
        progress: ProgressCallback | None = None,
        supersedes: int = 0,
        inference_parameters: Mapping[str, Any] | None = None,
        input_series_uid: str = "",
    ) -> UploadResult:
        """Upload a group's slices from exactly one of: a folder of PNGs named by slice index,
        2-D numpy arrays (uint8, uint16 or bool; encoded as PNG), label maps, or prepared Slices.

        `segments` (see pacs.client.segments.segment) declares the labels of a new group; its
        slices are then label maps, 8-bit greyscale, pixel value = segment, 0 = background.
        `label_maps` is a (slices, rows, cols) uint8 array, or a mapping of slice index to 2-D
        uint8 array; every pixel value is checked against the segments before anything is sent
        (`arrays=` given with segments is checked the same way).

        Without `group_id` a group is created under the annotation with `slice_count` (default:
        the number of slices), the naming fields and the segments. With it, slices the group has
        already recorded are skipped, so repeating an upload that partly failed sends only the
        rest (the group's own segments then apply). Raises UploadError when some slices could
        not be uploaded (the others are recorded).

        A correction of a complete group is a new version: `supersedes=<its id>` creates it in
        the same lineage, and it becomes the current version once all its slices are stored;
        the version it supersedes stays readable (`list_mask_group_versions`).
        """
        if supersedes and group_id is not None:
            raise ValueError("supersedes= creates a new version: leave out group_id")
        started = time.perf_counter()
        if segments and group_id is not None:
            raise ValueError("segments are declared when a group is created: leave out group_id")
        if label_maps is not None and not segments and group_id is None:
            raise ValueError("label_maps need segments= to say what their pixel values mean")
        if segments:
            segment_rules.check_distinct(segments)
        if label_maps is not None and group_id is not None:
            segments = self.get_mask_group(annotation_id, group_id).segments
        items = _slices(
            directory, arrays, slices, label_maps, label_name=label_name, segments=segments
        )
        if group_id is None:
            group = self.create_mask_group(
                annotation_id, slice_count=slice_count or len(items), group_name=group_name,
                model_name=model_name, version=version, modality=modality, segments=segments,
                supersedes=supersedes, inference_parameters=inference_parameters,
                input_series_uid=input_series_uid,
            )  # fmt: skip
            group_id = group.id
            skipped = 0
        else:
            recorded = {m.slice_index for m in self.list_masks(annotation_id, group_id)}
            remaining = [s for s in items if s.index not in recorded]
            skipped = len(items) - len(remaining)
            items = remaining
        transport = SignedUrlTransport(concurrency=concurrency)
        try:
            uploader = MaskUploader(
                self.masks, transport, UploadOptions(concurrency=concurrency, method=method)
            )
            stats = uploader.upload(annotation_id, group_id, items, progress)
        finally:
            transport.close()
        final = stats.group or self.get_mask_group(annotation_id, group_id)
        return UploadResult(
            group=final, uploaded=stats.uploaded, skipped=skipped, bytes_sent=stats.bytes_sent,
            retries=stats.retries, seconds=time.perf_counter() - started,
        )  # fmt: skip

    def export_mask_group(
        self,
        annotation_id: int,
        group_id: int,
        *,
        store_in_pacs: bool = False,
        request_id: str | None = None,
        save_to: Path | str | None = None,
        ttl_seconds: int = 0,
    ) -> ExportResult:
        """Write a COMPLETE, APPROVED group as one DICOM Segmentation (any other group is refused
        with FAILED_PRECONDITION unless the project's export_unapproved is on; the SEG's Content
        Label then says its state, SEG_DRAFT, ...); with `store_in_pacs` the server
        also sends it to the PACS and records the PACS's answer (`result.export.pacs_status`;
        a refusal is recorded there, not raised). With `save_to` (a file, or a folder) the
        .dcm is downloaded too. Retried safely: a request id is generated if not given, and a
        retry with it returns the same export."""
        reply = self.masks.ExportMaskGroup(
            mask_pb2.ExportMaskGroupRequest(
                annotation_id=annotation_id, group_id=group_id, store_in_pacs=store_in_pacs,
                request_id=request_id or str(uuid.uuid4()), ttl_seconds=ttl_seconds,
            )
        )  # fmt: skip
        result = ExportResult(reply.mask_group_export, reply.download_url)
        if save_to is not None:
            result = replace(result, saved=save_export(result, save_to))
        return result

    def list_exports(self, annotation_id: int, group_id: int) -> Iterator[ExportResult]:
        """A group's exports, newest first, each with a fresh signed URL of its .dcm."""

        def page(reply: mask_pb2.ListMaskGroupExportsResponse) -> list[ExportResult]:
            urls = {u.export_id: u.url for u in reply.download_urls}
            return [ExportResult(e, urls.get(e.id, "")) for e in reply.mask_group_exports]

        return all_items(
            lambda token: self.masks.ListMaskGroupExports(
                mask_pb2.ListMaskGroupExportsRequest(
                    annotation_id=annotation_id, group_id=group_id, page_size=PAGE_SIZE,
                    page_token=token,
                )
            ),
            page,
        )  # fmt: skip

    def import_segmentation(
        self,
        annotation_id: int,
        *,
        from_pacs: tuple[str, str, str] | None = None,
        path: Path | str | None = None,
        group_name: str = "",
        description: str = "",
        request_id: str | None = None,
    ) -> mask_pb2.MaskGroup:
        """A COMPLETE mask group made from a DICOM Segmentation: either one in the PACS,
        `from_pacs=(study_uid, series_uid, instance_uid)`, or a local Part-10 file `path`,
        uploaded first through a signed ticket. Segments, codes, model and version come from
        the SEG. Retried safely: a request id is generated if not given."""
        if (from_pacs is None) == (path is None):
            raise ValueError("give exactly one of from_pacs= or path=")
        request = mask_pb2.ImportSegmentationRequest(
            annotation_id=annotation_id, group_name=group_name, description=description,
            request_id=request_id or str(uuid.uuid4()),
        )  # fmt: skip
        if from_pacs is not None:
            if len(from_pacs) != 3 or not all(from_pacs):
                raise ValueError("from_pacs is (study_uid, series_uid, instance_uid)")
            study, series, instance = from_pacs
            request.pacs.CopyFrom(
                mask_pb2.SegmentationInPacs(
                    seg_study_uid=study, seg_series_uid=series, seg_instance_uid=instance
                )
            )
        else:
            assert path is not None
            request.upload_id = self._upload_segmentation(annotation_id, Path(path))
        return self.masks.ImportSegmentation(request).mask_group

    def _upload_segmentation(self, annotation_id: int, path: Path) -> str:
        data = path.read_bytes()
        if not data:
            raise ValueError(f"{path} is empty")
        ticket = self.masks.CreateSegmentationUpload(
            mask_pb2.CreateSegmentationUploadRequest(
                annotation_id=annotation_id, size_bytes=len(data)
            )
        ).ticket
        transport = SignedUrlTransport(concurrency=1)
        try:
            transport.upload(ticket, data, DICOM_CONTENT_TYPE)
        except TransferFailed as failure:
            raise SegmentationUploadError(
                f"{path.name}: upload to storage failed ({failure.reason})"
            ) from None
        finally:
            transport.close()
        return ticket.upload_id

    def download_mask_group(
        self,
        annotation_id: int,
        group_id: int,
        directory: Path | str,
        *,
        concurrency: int = 8,
        progress: ProgressCallback | None = None,
    ) -> DownloadResult:
        """Every recorded slice into `directory` as `NNNN.png`, each checked against its MD5."""
        transport = SignedUrlTransport(concurrency=concurrency)
        try:
            downloader = MaskDownloader(self.masks, transport, concurrency=concurrency)
            return downloader.download(annotation_id, group_id, Path(directory), progress)
        finally:
            transport.close()


def _slices(
    directory: Path | str | None,
    arrays: Iterable[npt.ArrayLike] | Mapping[int, npt.ArrayLike] | None,
    slices: Iterable[slice_sources.Slice] | None,
    label_maps: npt.ArrayLike | Mapping[int, npt.ArrayLike] | None,
    *,
    label_name: str,
    segments: Sequence[mask_pb2.Segment],
) -> list[slice_sources.Slice]:
    given = [x is not None for x in (directory, arrays, slices, label_maps)]
    if sum(given) != 1:
        raise ValueError("give exactly one of directory=, arrays=, label_maps= or slices=")
    if label_maps is not None or (arrays is not None and segments):
        source = label_maps if label_maps is not None else arrays
        checked = segment_rules.label_map_slices(source, segments)  # type: ignore[arg-type]
        return slice_sources.from_arrays(dict(checked))
    if directory is not None:
        items = slice_sources.from_directory(directory)
        if segments:
            _check_label_map_files(items)
        elif label_name:
            items = [_labelled(s, label_name) for s in items]
        return items
    if arrays is not None:
        return slice_sources.from_arrays(arrays, label_name=label_name)
    assert slices is not None
    return list(slices)


def _check_label_map_files(items: Sequence[slice_sources.Slice]) -> None:
    # Refused before the group is created, from the headers read while measuring the files.
    wrong = [s.index for s in items if not segment_rules.png_is_label_map(s.head)]
    if wrong:
        shown = ", ".join(str(i) for i in wrong[:5])
        raise ValueError(
            f"with segments, every slice must be an 8-bit greyscale PNG; slice(s) {shown} are not"
        )


def _labelled(item: slice_sources.Slice, label_name: str) -> slice_sources.Slice:
    return replace(item, label_name=label_name)


def _refuse_group_etag(etag: str) -> None:
    # Mask group requests carry no etag: dropping one silently would skip the check it asks for.
    if etag:
        raise ValueError("etag is an annotation's; a mask group's review step takes none")
