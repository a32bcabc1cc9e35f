"""Every part of the outside world the use cases and the edge reach, as one set to hand over.

The composition root wires use cases to an Adapters and nothing else: production builds one
from Settings (pacs_grpc.bootstrap.production), tests build one from in-memory fakes. It is
generic in the transaction handle (TxT), so stores and transactions of two kinds cannot meet.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic

from pacs_grpc.services.ports import (
    AnnotationStore,
    AuditStore,
    Clock,
    EventRecorder,
    ExportStore,
    IdempotencyStore,
    LiveEvents,
    MaskStore,
    ObjectStorage,
    Pacs,
    Probe,
    ProjectStore,
    ScheduledDeletions,
    SegmentationReader,
    SegmentationWriter,
    SweepOutbox,
    TokenReader,
    Transactions,
    TxT,
    UserStore,
    Verifier,
)


@dataclass(frozen=True)
class Adapters(Generic[TxT]):
    """The outside world as `compose` takes it; every store and transaction of one handle type TxT.

    Built once at start-up and never changed. It owns nothing: what its parts hold open is closed
    by the exit stack of whoever built it (production_adapters, or a test).
    """

    transactions: Transactions[TxT]
    users: UserStore[TxT]
    projects: ProjectStore[TxT]
    idempotency: IdempotencyStore[TxT]
    audit: AuditStore[TxT]
    annotations: AnnotationStore[TxT]
    record_event: EventRecorder[TxT]
    masks: MaskStore[TxT]
    exports: ExportStore[TxT]
    scheduled_deletions: ScheduledDeletions[TxT]
    outbox: SweepOutbox[TxT]
    storage: ObjectStorage
    # None when no PACS is configured: the calls that need one answer FAILED_PRECONDITION.
    pacs: Pacs | None
    segmentations: SegmentationReader
    write_segmentation: SegmentationWriter
    clock: Clock
    events: LiveEvents
    # The access gate's: what checks a bearer token, and what reads it from the metadata.
    verifier: Verifier
    read_token: TokenReader
    # Any required probe failing turns every service NOT_SERVING; an optional one is
    # reported under its own name only.
    required_probes: Sequence[Probe]
    optional_probes: Sequence[Probe] = ()
