"""What each RPC needs of its caller, read from the contract. Deny by default.

Every pacs.v1 RPC declares its policy once, as its (pacs.v1.rpc) option
(protos/pacs/v1/options.proto): the access it needs, its rate-limit budget and
its audit resource type here on the server, its retry rule and default
deadline in the Python client (pacs.client.retry). A method that declares no
access and is not public is refused before any handler runs. Project-scoped
requirements are checked inside the use case, against the project of the
resource, in the same query that reads it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType

from google.protobuf.descriptor import FileDescriptor

from pacs_grpc.contract import CONTRACT_FILES, RpcPolicy, declared_methods
from pacs_grpc.domain.access import Access

_ACCESS: Mapping[RpcPolicy.Access.ValueType, Access] = {
    RpcPolicy.ACCESS_AUTHENTICATED: Access.AUTHENTICATED,
    RpcPolicy.ACCESS_PLATFORM_ADMIN: Access.PLATFORM_ADMIN,
    RpcPolicy.ACCESS_PROJECT_VIEWER: Access.PROJECT_VIEWER,
    RpcPolicy.ACCESS_PROJECT_ANNOTATOR: Access.PROJECT_ANNOTATOR,
    RpcPolicy.ACCESS_PROJECT_OWNER: Access.PROJECT_OWNER,
    RpcPolicy.ACCESS_PROJECT_REVIEWER: Access.PROJECT_REVIEWER,
}


def declared_policies(files: Iterable[FileDescriptor]) -> dict[str, RpcPolicy]:
    """Method path ("/pacs.v1.MaskService/PushMasks") to the policy it declares; a method
    without the option is left out."""
    return {m.path: m.policy for m in declared_methods(files) if m.policy is not None}


def access_by_method(policies: Mapping[str, RpcPolicy]) -> dict[str, Access]:
    """The methods a caller may reach at all, with what they need; an undeclared or
    unspecified access leaves the method out, so the gate refuses it."""
    return {
        method: _ACCESS[policy.access]
        for method, policy in policies.items()
        if policy.access in _ACCESS
    }


POLICY_BY_METHOD: Mapping[str, RpcPolicy] = MappingProxyType(declared_policies(CONTRACT_FILES))
ACCESS_BY_METHOD: dict[str, Access] = access_by_method(POLICY_BY_METHOD)


def audit_resource_type(method: str) -> str | None:
    """The resource type the method's audit row names unless its use case says otherwise."""
    policy = POLICY_BY_METHOD.get(method)
    if policy is None or not policy.audit_resource:
        return None
    return policy.audit_resource


# Probes and service discovery carry no data and must work without a token.
PUBLIC_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)


def is_public(method: str) -> bool:
    return method.startswith(PUBLIC_PREFIXES)
