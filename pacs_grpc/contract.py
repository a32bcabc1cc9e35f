"""The released contract as the server reads it: the pacs.v1 files it serves, and each RPC's
declared (pacs.v1.rpc) policy, walked from the generated descriptors in one place.

The gate's access table (pacs_grpc.api.access) and Envoy's routes (pacs_grpc.edge) both read
it. May import: the generated pacs.v1 code only.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Final

from google.protobuf.descriptor import FileDescriptor, MethodDescriptor
from pacs.v1 import annotation_pb2, identity_pb2, mask_pb2, options_pb2

RpcPolicy = options_pb2.RpcPolicy

# The files whose services the server serves and Envoy transcodes.
CONTRACT_FILES: Final[tuple[FileDescriptor, ...]] = (
    identity_pb2.DESCRIPTOR,
    annotation_pb2.DESCRIPTOR,
    mask_pb2.DESCRIPTOR,
)


@dataclass(frozen=True)
class DeclaredMethod:
    """One RPC: its path ("/pacs.v1.MaskService/PushMasks"), descriptor and declared policy
    (None when the method carries no (pacs.v1.rpc) option)."""

    path: str
    descriptor: MethodDescriptor
    policy: RpcPolicy | None


def declared_methods(files: Iterable[FileDescriptor] = CONTRACT_FILES) -> Iterator[DeclaredMethod]:
    """Every method of every service in `files`, in declaration order."""
    for file in files:
        for service in file.services_by_name.values():
            for method in service.methods:
                options = method.GetOptions()
                policy = None
                if options.HasExtension(options_pb2.rpc):
                    policy = RpcPolicy()
                    policy.CopyFrom(options.Extensions[options_pb2.rpc])
                yield DeclaredMethod(f"/{service.full_name}/{method.name}", method, policy)
