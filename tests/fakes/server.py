"""The server's whole outside world as in-memory fakes: an Adapters for bootstrap.compose.

ServerFakes joins the store fakes (tests/fakes/identity.py, annotations.py, masks.py,
outbox.py), storage and the PACS (storage.py, pacs.py) over one FakeDatabase (database.py), and
adds what only the assembled server needs: a token verifier that knows a fixed set of bearer
strings, an event source with the EventHub's start and stop, health probes that always answer,
and a SEG reader that knows the files a test registered.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field

from pacs_grpc.adapters.auth.verifier import bearer_token
from pacs_grpc.bootstrap import Adapters
from pacs_grpc.domain.annotation import AnnotationEvent
from pacs_grpc.domain.errors import InvalidArgument, Unauthenticated
from pacs_grpc.domain.identity import Principal
from pacs_grpc.domain.segments import LabelMap, SegmentationRead
from tests.fakes import builders
from tests.fakes.annotations import FakeEventSource
from tests.fakes.builders import World
from tests.fakes.database import FakeTx
from tests.fakes.mask_builders import fake_segmentation, png
from tests.fakes.masks import (
    FakeExportStore,
    FakeMaskStore,
    FakeScheduledDeletions,
    MaskTables,
    install,
)
from tests.fakes.outbox import FakeSweepOutbox
from tests.fakes.pacs import FakePacs
from tests.fakes.storage import FakeObjectStorage


@dataclass
class FakeVerifier:
    """Bearer strings the test handed out, each standing for a verified Principal."""

    principals: dict[str, Principal] = field(default_factory=dict)
    # Every token asked about, in order.
    asked: list[str] = field(default_factory=list)

    async def verify(self, token: str) -> Principal:
        self.asked.append(token)
        found = self.principals.get(token)
        if found is None:
            raise Unauthenticated("invalid token")
        return found


@dataclass
class FakeLiveEvents:
    """FakeEventSource with the EventHub's life cycle; `log` records start and stop."""

    source: FakeEventSource
    log: list[str] = field(default_factory=list)

    async def start(self) -> None:
        self.log.append("events started")

    async def stop(self) -> None:
        self.log.append("events stopped")

    def subscribe(
        self, project_id: int, *, study_uid: str | None, after_event_id: int
    ) -> AbstractAsyncContextManager[AsyncIterator[AnnotationEvent]]:
        return self.source.subscribe(project_id, study_uid=study_uid, after_event_id=after_event_id)


@dataclass
class FakeProbe:
    """A dependency that always answers."""

    name: str
    checks: int = 0

    async def check(self) -> None:
        self.checks += 1


@dataclass(frozen=True)
class FakeLabelMap:
    """A label map's shape is all the use cases look at."""

    shape: tuple[int, ...]


@dataclass
class FakeSegmentationReader:
    """Knows the SEG files a test registered (their bytes, what reading them gives)."""

    files: dict[bytes, SegmentationRead] = field(default_factory=dict)

    def read(self, data: bytes, *, max_voxels: int, field: str) -> SegmentationRead:
        found = self.files.get(data)
        if found is None:
            raise InvalidArgument(field, "is not a DICOM Segmentation")
        return found

    def encode_label_maps(self, maps: Sequence[LabelMap]) -> list[bytes]:
        return [png(1_000 + n) for n in range(len(maps))]


@dataclass
class ServerFakes:
    world: World
    tables: MaskTables
    masks: FakeMaskStore
    exports: FakeExportStore
    scheduled: FakeScheduledDeletions
    outbox: FakeSweepOutbox
    storage: FakeObjectStorage
    pacs: FakePacs
    segmentations: FakeSegmentationReader
    events: FakeLiveEvents
    verifier: FakeVerifier
    probes: tuple[FakeProbe, ...]

    def adapters(self, *, with_pacs: bool = True) -> Adapters[FakeTx]:
        w = self.world
        return Adapters(
            transactions=w.transactions,
            users=w.users,
            projects=w.projects,
            idempotency=w.idempotency,
            audit=w.audit,
            annotations=w.annotations,
            record_event=w.record_event,
            masks=self.masks,
            exports=self.exports,
            scheduled_deletions=self.scheduled,
            outbox=self.outbox,
            storage=self.storage,
            pacs=self.pacs if with_pacs else None,
            segmentations=self.segmentations,
            write_segmentation=fake_segmentation,
            clock=w.clock,
            events=self.events,
            verifier=self.verifier,
            read_token=bearer_token,
            required_probes=self.probes,
        )

    def token_for(self, principal: Principal) -> str:
        """A bearer string the verifier takes for `principal`."""
        token = f"token-{len(self.verifier.principals) + 1}"
        self.verifier.principals[token] = principal
        return token


def server_fakes(probe_names: Iterable[str] = ("postgresql", "object_storage")) -> ServerFakes:
    world = builders.world()
    tables = install(world.db)
    return ServerFakes(
        world=world,
        tables=tables,
        masks=FakeMaskStore(world.db),
        exports=FakeExportStore(world.db),
        scheduled=FakeScheduledDeletions(world.db),
        outbox=FakeSweepOutbox(world.db),
        storage=FakeObjectStorage(world.clock),
        pacs=FakePacs(),
        segmentations=FakeSegmentationReader(),
        events=FakeLiveEvents(world.events),
        verifier=FakeVerifier(),
        probes=tuple(FakeProbe(name) for name in probe_names),
    )
