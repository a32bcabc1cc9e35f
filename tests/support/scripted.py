"""A scripted gRPC service for client tests: what each method received, and failures to
inject."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.message import Message


@dataclass
class Script:
    """The requests each method received, and how many of its next calls fail UNAVAILABLE."""

    requests: dict[str, list[Any]] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, method: str, request: Message, context: grpc.ServicerContext) -> None:
        with self.lock:
            self.requests.setdefault(method, []).append(request)
            failing = self.failures.get(method, 0)
            if failing:
                self.failures[method] = failing - 1
        if failing:
            context.abort(grpc.StatusCode.UNAVAILABLE, "replica going away")
