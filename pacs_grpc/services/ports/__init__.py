"""Every port of the use cases: what they need from the outside world, as protocols.

The adapters implement them (pacs_grpc.adapters: PostgreSQL stores, object storage, the PACS,
the SEG codec, the clock, the token verifier, health probes); unit tests implement them with
in-memory fakes (tests/fakes). Stores take the transaction handle their Transactions port
opened; use cases only pass it on, and are generic in its type (TxT), so the composition root
can only join stores and transactions of one kind. The access gate and the health monitor
(pacs_grpc.api) use the token and probe ports.

May import: pacs_grpc.domain only.
"""

from pacs_grpc.services.ports.annotations import (
    AnnotationAccessLookup,
    AnnotationStore,
    EventRecorder,
    EventSource,
    LiveEvents,
    TrashPurger,
)
from pacs_grpc.services.ports.auth import TokenReader, Verifier
from pacs_grpc.services.ports.health import Probe
from pacs_grpc.services.ports.identity import AuditStore, IdempotencyStore, ProjectStore, UserStore
from pacs_grpc.services.ports.masks import (
    DeletionQueue,
    ExportStore,
    GroupAccessLookup,
    MaskStore,
    ScheduledDeletions,
)
from pacs_grpc.services.ports.outbox import ExpiredTickets, SweepOutbox
from pacs_grpc.services.ports.pacs import Pacs, SegmentationReader, SegmentationWriter
from pacs_grpc.services.ports.storage import DeletesObjects, ObjectStorage
from pacs_grpc.services.ports.transactions import (
    Clock,
    Transactions,
    TxT,
    TxT_co,
    TxT_contra,
)

__all__ = [
    "AnnotationAccessLookup",
    "AnnotationStore",
    "AuditStore",
    "Clock",
    "DeletesObjects",
    "DeletionQueue",
    "EventRecorder",
    "EventSource",
    "ExpiredTickets",
    "ExportStore",
    "GroupAccessLookup",
    "IdempotencyStore",
    "LiveEvents",
    "MaskStore",
    "ObjectStorage",
    "Pacs",
    "Probe",
    "ProjectStore",
    "ScheduledDeletions",
    "SegmentationReader",
    "SegmentationWriter",
    "SweepOutbox",
    "TokenReader",
    "Transactions",
    "TrashPurger",
    "TxT",
    "TxT_co",
    "TxT_contra",
    "UserStore",
    "Verifier",
]
