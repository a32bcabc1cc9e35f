"""A steady mixed load of RPCs against a server, recording how every call ended.

Reliability tests run it while they break something, then check the record: which codes
clients saw, how long calls took against their deadlines, and which writes were acknowledged.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from dataclasses import dataclass, field

import grpc
from google.protobuf import struct_pb2
from grpc import aio
from pacs.v1 import annotation_pb2, annotation_pb2_grpc

from tests.support.users import ApiUser

STUDY_UID = "1.2.826.0.1.3680043.10.1"


@dataclass(frozen=True)
class Outcome:
    kind: str
    started: float
    ended: float
    code: grpc.StatusCode
    annotation_id: int | None = None

    @property
    def seconds(self) -> float:
        return self.ended - self.started


@dataclass
class MixedLoad:
    """Workers that create, read and list annotations of one project until stopped."""

    address: str
    user: ApiUser
    project_id: int
    deadline_seconds: float = 3.0
    workers: int = 6
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _known_ids: list[int] = field(default_factory=list)

    async def run(self) -> None:
        async with aio.insecure_channel(self.address) as channel:
            stub = annotation_pb2_grpc.AnnotationServiceStub(channel)
            await asyncio.gather(*(self._worker(stub, n) for n in range(self.workers)))

    def stop(self) -> None:
        self._stop.set()

    def acknowledged_writes(self) -> set[int]:
        return {o.annotation_id for o in self.outcomes if o.annotation_id is not None}

    async def _worker(self, stub: annotation_pb2_grpc.AnnotationServiceAsyncStub, n: int) -> None:
        for turn in itertools.count():
            if self._stop.is_set():
                return
            kind = ("create", "get", "list")[(turn + n) % 3]
            if kind == "get" and not self._known_ids:
                kind = "create"
            started = time.monotonic()
            annotation_id = None
            try:
                annotation_id = await self._call(stub, kind)
                code = grpc.StatusCode.OK
            except aio.AioRpcError as error:
                code = error.code()
            self.outcomes.append(Outcome(kind, started, time.monotonic(), code, annotation_id))
            if code is not grpc.StatusCode.OK:
                await asyncio.sleep(0.05)  # a client backing off, not a tight error loop

    async def _call(
        self, stub: annotation_pb2_grpc.AnnotationServiceAsyncStub, kind: str
    ) -> int | None:
        if kind == "create":
            data = struct_pb2.Struct()
            data.update({"finding": "nodule"})
            reply = await stub.CreateAnnotation(
                annotation_pb2.CreateAnnotationRequest(
                    annotation=annotation_pb2.Annotation(
                        project_id=self.project_id, study_uid=STUDY_UID,
                        annotation_type="measurement", annotation_data=data,
                    ),
                    request_id=str(uuid.uuid4()),
                ),
                metadata=self.user.metadata(), timeout=self.deadline_seconds,
            )  # fmt: skip
            self._known_ids.append(reply.annotation.id)
            return reply.annotation.id
        if kind == "get":
            await stub.GetAnnotation(
                annotation_pb2.GetAnnotationRequest(annotation_id=self._known_ids[-1]),
                metadata=self.user.metadata(), timeout=self.deadline_seconds,
            )  # fmt: skip
            return None
        await stub.ListAnnotations(
            annotation_pb2.ListAnnotationsRequest(
                project_id=self.project_id, study_uid=STUDY_UID, page_size=20
            ),
            metadata=self.user.metadata(), timeout=self.deadline_seconds,
        )  # fmt: skip
        return None
