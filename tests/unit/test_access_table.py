"""Each RPC's policy, declared once in the contract as its (pacs.v1.rpc) option."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FileDescriptor, MethodDescriptor
from pacs.v1 import annotation_pb2, identity_pb2, mask_pb2, options_pb2

from pacs_grpc.api.access import (
    ACCESS_BY_METHOD,
    access_by_method,
    audit_resource_type,
    declared_policies,
    is_public,
)
from pacs_grpc.api.gate import AccessGate
from pacs_grpc.domain.access import Access
from pacs_grpc.domain.errors import PermissionDenied
from pacs_grpc.domain.identity import Principal

RpcPolicy = options_pb2.RpcPolicy
FILES = (identity_pb2.DESCRIPTOR, annotation_pb2.DESCRIPTOR, mask_pb2.DESCRIPTOR)


def _methods(files: Iterable[FileDescriptor] = FILES) -> dict[str, MethodDescriptor]:
    return {
        f"/{service.full_name}/{method.name}": method
        for file in files
        for service in file.services_by_name.values()
        for method in service.methods
    }


def _policy(method: MethodDescriptor) -> RpcPolicy:
    return method.GetOptions().Extensions[options_pb2.rpc]


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def test_every_rpc_of_the_contract_declares_a_whole_policy() -> None:
    unspecified = {
        field.name: 0 for field in RpcPolicy.DESCRIPTOR.fields if field.enum_type is not None
    }
    for path, method in _methods().items():
        assert method.GetOptions().HasExtension(options_pb2.rpc), f"{path} declares no policy"
        policy = _policy(method)
        left_out = [name for name, zero in unspecified.items() if getattr(policy, name) == zero]
        assert not left_out, f"{path} leaves {left_out} unspecified"
        assert policy.audit_resource, f"{path} names no audit resource"


def test_the_access_table_is_exactly_the_contract() -> None:
    assert set(ACCESS_BY_METHOD) == set(_methods())
    for path, method in _methods().items():
        declared = RpcPolicy.Access.Name(_policy(method).access)
        assert ACCESS_BY_METHOD[path].name == declared.removeprefix("ACCESS_")


def test_every_access_of_the_contract_is_one_the_server_checks() -> None:
    declarable = {
        name.removeprefix("ACCESS_")
        for name in RpcPolicy.Access.DESCRIPTOR.values_by_name
        if name != "ACCESS_UNSPECIFIED"
    }
    assert declarable == {access.name for access in Access}


def test_reads_never_need_more_than_the_viewer_role() -> None:
    reads = {p: m for p, m in _methods().items() if re.match(r"(Get|List|Watch)[A-Z]", m.name)}
    assert reads
    for path in reads:
        assert ACCESS_BY_METHOD[path] in (Access.AUTHENTICATED, Access.PROJECT_VIEWER), path


def _probe_file(**declared: dict[str, Any]) -> FileDescriptor:
    """A service outside the contract whose methods declare the given policy fields."""
    proto = descriptor_pb2.FileDescriptorProto(
        name="probe/v1/probe.proto", package="probe.v1", syntax="proto3"
    )
    proto.message_type.add(name="Empty")
    service = proto.service.add(name="ProbeService")
    for name, fields in declared.items():
        method = service.method.add(
            name=name, input_type=".probe.v1.Empty", output_type=".probe.v1.Empty"
        )
        if fields:
            method.options.Extensions[options_pb2.rpc].CopyFrom(RpcPolicy(**fields))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return pool.FindFileByName(proto.name)


def test_a_method_without_a_declared_access_is_left_out_of_the_table() -> None:
    probe = _probe_file(
        Undeclared={},
        Unspecified={"retry": RpcPolicy.RETRY_SAFE, "audit_resource": "probe"},
        Declared={"access": RpcPolicy.ACCESS_PROJECT_VIEWER},
    )
    table = access_by_method(declared_policies([probe]))
    assert table == {"/probe.v1.ProbeService/Declared": Access.PROJECT_VIEWER}


class _Verifier:
    def __init__(self) -> None:
        self.verified = 0

    async def verify(self, token: str) -> Principal:
        self.verified += 1
        return Principal(subject="s-1", username="prober")


class _Directory:
    async def resolve(self, principal: Principal, *, refresh: bool) -> int:
        return 7


def _gate(verifier: _Verifier) -> AccessGate:
    return AccessGate(
        verifier=verifier,
        read_token=lambda metadata: "token",
        directory=_Directory(),  # type: ignore[arg-type]
        db=None,  # type: ignore[arg-type]
        audit=None,  # type: ignore[arg-type]
        admin_role="pacs-admin",
    )


async def test_the_gate_refuses_a_method_without_a_declared_access_before_the_token() -> None:
    verifier = _Verifier()
    gate = _gate(verifier)
    for method in ("/pacs.v1.MaskService/Unknown", "/probe.v1.ProbeService/Declared"):
        with pytest.raises(PermissionDenied):
            await gate.open(method, (), "r")
    assert verifier.verified == 0


async def test_the_gate_opens_the_audit_trail_on_the_declared_resource_type() -> None:
    call = await _gate(_Verifier()).open("/pacs.v1.MaskService/ExportMaskGroup", (), "r")
    assert call is not None
    assert call.access is Access.PROJECT_ANNOTATOR
    assert call.audit.resource_type == "mask_group_export"


def test_audit_resources_name_a_message_of_the_contract() -> None:
    # A stream of changes names the changed resource's events (WatchAnnotations).
    messages = {_snake(name) for file in FILES for name in file.message_types_by_name}
    for path, method in _methods().items():
        resource = _policy(method).audit_resource
        named = resource.removesuffix("_events") if method.server_streaming else resource
        assert named in messages, f"{path}: {resource!r} names no message of the contract"
        assert audit_resource_type(path) == resource
    assert audit_resource_type("/pacs.v1.MaskService/ExportMaskGroup") == "mask_group_export"
    assert audit_resource_type("/pacs.v1.Unknown/Method") is None


def test_only_probes_and_discovery_are_public() -> None:
    assert is_public("/grpc.health.v1.Health/Check")
    assert is_public("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")
    assert not any(is_public(method) for method in _methods())
    assert not is_public("/pacs.v1.Unknown/Method")
