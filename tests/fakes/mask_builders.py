"""MaskService use cases and the sweeper wired to in-memory fakes, and a project to call them in.

Builds on tests.fakes.builders (the World of identity and annotation fakes, and calls made as
the access gate makes them), adding the mask tables, storage, the PACS and the outbox.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import replace
from datetime import timedelta
from typing import Any

from pacs_grpc.domain.annotation import Annotation
from pacs_grpc.domain.audit import AuditEntry
from pacs_grpc.domain.exports import SegmentationBuild
from pacs_grpc.domain.identity import ProjectRole, User
from pacs_grpc.domain.masks import (
    PNG_SIGNATURE,
    Mask,
    MaskGroup,
    MaskLimits,
    NewMask,
    PendingUpload,
    SliceDeclaration,
)
from pacs_grpc.domain.pacs import PacsValidation
from pacs_grpc.domain.review import Review, ReviewState
from pacs_grpc.services.context import CallContext
from pacs_grpc.services.exports import ExportLimits, ExportUseCases
from pacs_grpc.services.imports import ImportLimits, ImportUseCases
from pacs_grpc.services.mask_completion import UploadCompletion
from pacs_grpc.services.mask_group_trash import MaskGroupTrash
from pacs_grpc.services.mask_groups import MaskGroupUseCases, NewGroup
from pacs_grpc.services.mask_push import MaskPush
from pacs_grpc.services.mask_urls import MaskUrlUseCases
from pacs_grpc.services.pacs_checks import PacsChecks
from pacs_grpc.services.ports import SegmentationWriter
from pacs_grpc.services.reviews import ReviewUseCases
from pacs_grpc.services.sweeper import Sweeper
from tests.fakes import builders
from tests.fakes.builders import World
from tests.fakes.database import FakeTx
from tests.fakes.masks import (
    FakeExportStore,
    FakeMaskStore,
    FakeScheduledDeletions,
    MaskTables,
    install,
    seed_group,
    seed_mask,
    tables,
)
from tests.fakes.outbox import FakeSweepOutbox
from tests.fakes.pacs import FakePacs, FakeSegmentationReader
from tests.fakes.storage import FakeObjectStorage

VIEWER, ANNOTATOR, OWNER = ProjectRole.VIEWER, ProjectRole.ANNOTATOR, ProjectRole.OWNER
STUDY, SERIES = "1.2.840.10.1", "1.2.840.10.1.1"
MIB = 1024 * 1024


def limits(**changes: Any) -> MaskLimits:
    defaults = MaskLimits(
        max_slices_per_call=10, max_mask_bytes=MIB, allowed_content_types=frozenset({"image/png"}),
        upload_ttl=timedelta(minutes=5), download_ttl=timedelta(minutes=10),
        max_ttl=timedelta(hours=1), max_page_size=50, check_png_signature=True,
        allow_put_uploads=False, push_memory_per_process=256 * MIB, push_memory_per_user=128 * MIB,
        push_parallel_slices=4,
    )  # fmt: skip
    return replace(defaults, **changes)


def png(seed: int, size: int = 64) -> bytes:
    """Bytes that pass the PNG signature check, distinct per seed."""
    body = f"slice {seed} ".encode() * size
    return PNG_SIGNATURE + body[: max(0, size - len(PNG_SIGNATURE))]


class MaskWorld:
    """A project with an annotator, a viewer, an outsider and an admin, one annotation on a
    series, and every fake a MaskService use case needs."""

    def __init__(self) -> None:
        self.w: World = builders.world()
        install(self.w.db)
        self.masks = FakeMaskStore(self.w.db)
        self.exports = FakeExportStore(self.w.db)
        self.scheduled = FakeScheduledDeletions(self.w.db)
        self.outbox = FakeSweepOutbox(self.w.db)
        self.storage = FakeObjectStorage(self.w.clock)
        self.pacs = FakePacs()
        db = self.w.db
        self.project = db.seed_project("chest-ct")
        self.annotator = db.seed_user("anna")
        self.viewer = db.seed_user("victor")
        self.outsider = db.seed_user("oscar")
        self.admin = db.seed_user("root")
        db.seed_member(self.project, self.annotator, ANNOTATOR)
        db.seed_member(self.project, self.viewer, VIEWER)
        self.annotation = db.seed_annotation(
            self.project, self.annotator, study_uid=STUDY, series_uid=SERIES
        )

    @property
    def tables(self) -> MaskTables:
        # Not kept: a rolled-back transaction puts a copy of the tables in place.
        return tables(self.w.db)

    # -- calls ------------------------------------------------------------------------------

    def call(
        self, method: str, user: User | None = None, *, request_id: str = "rpc-1"
    ) -> CallContext:
        who = user or self.annotator
        return builders.call(
            method, builders.caller(who, platform_admin=who is self.admin), request_id=request_id
        )

    @property
    def audit(self) -> list[AuditEntry]:
        return self.w.audit.rows

    def ok(self, call: CallContext, **fields: Any) -> AuditEntry:
        """The row a call that succeeded writes in this world's project and study."""
        fields.setdefault("project_id", self.project.id)
        fields.setdefault("study_uid", STUDY)
        return AuditEntry(
            action=call.audit.action,
            outcome="ok",
            subject=call.caller.principal.subject,
            client_id=call.caller.principal.client_id,
            request_id=call.audit.request_id,
            **fields,
        )

    def deactivate(self) -> None:
        self.w.db.tables.projects[self.project.id] = replace(self.project, is_active=False)

    # -- seeding ----------------------------------------------------------------------------

    def seed_group(
        self, slice_count: int = 3, *, annotation: Annotation | None = None, **fields: Any
    ) -> MaskGroup:
        """A group written straight into the tables, outside any transaction."""
        return seed_group(
            self.w.db, (annotation or self.annotation).id, slice_count=slice_count,
            created_by=self.annotator.id, **fields,
        )  # fmt: skip

    async def masks_recorded(
        self, group: MaskGroup, indexes: Sequence[int], *, by: User | None = None
    ) -> list[Mask]:
        """Slices stored, then recorded through the store as a push records them (by `by`,
        the annotator unless given): a version completed so becomes current."""
        new = []
        for index in indexes:
            key = f"masks/p{self.project.id}/a{group.annotation_id}/g{group.id}/pushed/{index}"
            stored = self.storage.overwrite(key, png(index))
            upload = PendingUpload(
                uuid.uuid4(), group.id, index, None, None, "image/png", len(stored.data), None,
                "PUSH", key, self.w.clock.now(), None,
            )  # fmt: skip
            new.append(
                NewMask(
                    upload=upload,
                    file_path=key,
                    file_size=len(stored.data),
                    checksum=stored.etag,
                    width=8,
                    height=8,
                    object_version=stored.version_id,
                )
            )
        async with self.w.transactions.transaction() as conn:
            return await self.masks.record_masks(
                conn, group.id, new, from_tickets=False, recorded_by=(by or self.annotator).id
            )

    def approve(self, group: MaskGroup) -> MaskGroup:
        """The group as a reviewer (the viewer, for the fakes) approved it, outside any call."""
        approved = replace(
            group, review=Review(ReviewState.APPROVED, self.viewer.id, self.w.clock.now())
        )
        self.tables.groups[group.id] = approved
        return approved

    def seed_masks(
        self, group: MaskGroup, indexes: Sequence[int], *, sop_uids: Sequence[str | None] = ()
    ) -> list[Mask]:
        """Slices stored in storage and recorded, as a completed upload leaves them."""
        recorded = []
        for position, index in enumerate(indexes):
            key = f"masks/p{self.project.id}/a{group.annotation_id}/g{group.id}/seeded/{index}"
            stored = self.storage.overwrite(key, png(index))
            mask = seed_mask(
                self.w.db, group.id, index, key, size=len(stored.data), checksum=stored.etag,
                version=stored.version_id, sop_uid=sop_uids[position] if sop_uids else None,
            )  # fmt: skip
            recorded.append(mask)
        return recorded

    # -- use cases --------------------------------------------------------------------------

    def checks(self, mode: PacsValidation = PacsValidation.OFF) -> PacsChecks:
        return PacsChecks(self.pacs, mode)

    def groups(
        self, *, mask_limits: MaskLimits | None = None, pacs: PacsValidation = PacsValidation.OFF
    ) -> MaskGroupUseCases[FakeTx]:
        return MaskGroupUseCases(
            builders.audited(self.w), masks=self.masks, annotations=self.w.annotations,
            idempotency=self.w.idempotency, database=self.w.transactions,
            limits=mask_limits or limits(), pacs_checks=self.checks(pacs),
        )  # fmt: skip

    def urls(self, *, mask_limits: MaskLimits | None = None) -> MaskUrlUseCases[FakeTx]:
        return MaskUrlUseCases(
            builders.audited(self.w), masks=self.masks, storage=self.storage,
            limits=mask_limits or limits(), clock=self.w.clock,
        )  # fmt: skip

    def completion(
        self, *, mask_limits: MaskLimits | None = None, pacs: PacsValidation = PacsValidation.OFF
    ) -> UploadCompletion[FakeTx]:
        return UploadCompletion(
            builders.audited(self.w), masks=self.masks, storage=self.storage,
            database=self.w.transactions, limits=mask_limits or limits(),
            pacs_checks=self.checks(pacs), clock=self.w.clock,
        )  # fmt: skip

    def push(
        self, *, mask_limits: MaskLimits | None = None, pacs: PacsValidation = PacsValidation.OFF
    ) -> MaskPush[FakeTx]:
        return MaskPush(
            builders.audited(self.w), masks=self.masks, storage=self.storage,
            database=self.w.transactions, limits=mask_limits or limits(),
            pacs_checks=self.checks(pacs), clock=self.w.clock,
        )  # fmt: skip

    def export_use_cases(
        self, *, write: SegmentationWriter | None = None, with_pacs: bool = True,
        **limit_changes: Any,
    ) -> ExportUseCases[FakeTx]:  # fmt: skip
        export_limits = ExportLimits(
            max_voxels=10_000_000, max_concurrency=2, max_slice_bytes=MIB,
            download_ttl=timedelta(minutes=10), max_ttl=timedelta(hours=1), max_page_size=50,
        )  # fmt: skip
        return ExportUseCases(
            builders.audited(self.w), masks=self.masks, exports=self.exports,
            idempotency=self.w.idempotency, storage=self.storage, database=self.w.transactions,
            pacs=self.pacs if with_pacs else None, write=write or fake_segmentation,
            limits=replace(export_limits, **limit_changes),
        )  # fmt: skip

    def import_use_cases(
        self, reader: FakeSegmentationReader, *, pacs: PacsValidation = PacsValidation.OFF,
        **limit_changes: Any,
    ) -> ImportUseCases[FakeTx]:  # fmt: skip
        import_limits = ImportLimits(
            max_bytes=MIB, max_voxels=1_000_000, upload_ttl=timedelta(minutes=15),
            max_ttl=timedelta(hours=1),
        )  # fmt: skip
        return ImportUseCases(
            builders.audited(self.w), masks=self.masks, annotations=self.w.annotations,
            idempotency=self.w.idempotency, storage=self.storage, database=self.w.transactions,
            deletions=self.scheduled, segmentations=reader,
            limits=replace(import_limits, **limit_changes), clock=self.w.clock, pacs=self.pacs,
            pacs_checks=self.checks(pacs),
        )  # fmt: skip

    def group_trash(self, retention: timedelta = timedelta(days=30)) -> MaskGroupTrash[FakeTx]:
        return MaskGroupTrash(
            builders.audited(self.w), masks=self.masks, clock=self.w.clock,
            trash_retention=retention,
        )  # fmt: skip

    def reviews(self) -> ReviewUseCases[FakeTx]:
        return ReviewUseCases(
            builders.audited(self.w), annotations=self.w.annotations, groups=self.masks,
            masks=self.masks, record_event=self.w.record_event,
        )  # fmt: skip

    def sweeper(self, **options: Any) -> Sweeper[FakeTx]:
        options.setdefault("interval_seconds", 5.0)
        options.setdefault("upload_grace", timedelta(minutes=10))
        options.setdefault("trash", (self.w.annotations, self.masks))
        options.setdefault("trash_retention", timedelta(days=30))
        return Sweeper(self.w.transactions, self.outbox, self.storage, **options)


def fake_segmentation(build: SegmentationBuild) -> bytes:
    """A stand-in SEG writer: bytes naming what the SEG was built from."""
    slices = ",".join(f"{s.slice_index}:{s.sop_instance_uid}" for s in build.slices)
    return f"DICM {build.sop_uid} {build.series_number} [{slices}]".encode()


def new_group(slice_count: int = 3, **changes: Any) -> NewGroup:
    """CreateMaskGroup's group as the servicer hands it over."""
    group = NewGroup(
        group_name="lungs", model_name="", version="", modality="", slice_count=slice_count,
        mask_type="", description="",
    )  # fmt: skip
    return replace(group, **changes)


def declaration(
    slice_index: int, data: bytes, *, md5: str | None = None, sop_instance_uid: str | None = None,
    label_name: str | None = None, content_type: str = "image/png",
) -> SliceDeclaration:  # fmt: skip
    return SliceDeclaration(slice_index, sop_instance_uid, label_name, content_type, len(data), md5)


def fresh_id() -> str:
    return str(uuid.uuid4())
