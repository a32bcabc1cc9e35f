from __future__ import annotations

from pacs.v1 import annotation_pb2, identity_pb2, mask_pb2

from pacs_grpc.api.access import ACCESS_BY_METHOD, is_public


def _methods_in_descriptors() -> set[str]:
    return {
        f"/{service.full_name}/{method.name}"
        for module in (identity_pb2, annotation_pb2, mask_pb2)
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    }


def test_every_rpc_of_the_contract_is_in_the_table() -> None:
    missing = _methods_in_descriptors() - set(ACCESS_BY_METHOD)
    assert not missing, f"add these to pacs_grpc/api/access.py: {sorted(missing)}"


def test_the_table_names_no_method_the_contract_lacks() -> None:
    assert set(ACCESS_BY_METHOD) <= _methods_in_descriptors()


def test_only_probes_and_discovery_are_public() -> None:
    assert is_public("/grpc.health.v1.Health/Check")
    assert is_public("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")
    assert not any(is_public(method) for method in _methods_in_descriptors())
    assert not is_public("/pacs.v1.Unknown/Method")
