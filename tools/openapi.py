"""Writes the OpenAPI 3.1 document of the REST routes from the protos' google.api.http rules.

No maintained generator installs here: grpc-gateway's protoc-gen-openapiv2 and
gnostic's protoc-gen-openapi are Go programs, and PyPI and npm carry only their
option bindings. So this reads a descriptor set (built with source info, for the
descriptions) and describes what Envoy's gRPC-JSON transcoder serves: one
operation per http binding, path variables as required path parameters, the
request fields neither in the path nor in the body as query parameters, bodies
as the rule's `body` says, messages as tools/proto_schemas.py maps them, and
errors as google.rpc.Status JSON.

Usage, from the repository root: python -m tools.openapi DESCRIPTOR_SET OUTPUT_JSON
"""

from __future__ import annotations

import json
import pathlib
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass

from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor

from tools.proto_schemas import (
    JSON_WELL_KNOWN,
    SCHEMAS,
    Schema,
    SchemaBuilder,
    comments,
    field_at,
    message_of,
)

PACKAGE = "pacs.v1"
_PATH_VARIABLE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_.]*)(?:=([^}]*))?\}")
_OPENAPI_METHODS = frozenset({"get", "put", "post", "delete", "patch", "head", "options"})
_STATUS = "google.rpc.Status"
_STATUS_SCHEMA: Schema = {
    "type": "object",
    "description": "A failed call: the gRPC status the server ended it with.",
    "properties": {
        "code": {"type": "integer", "format": "int32", "description": "The gRPC status code."},
        "message": {"type": "string", "description": "What went wrong, for a developer."},
        "details": {"type": "array", "items": {"$ref": SCHEMAS + "google.protobuf.Any"}},
    },
    "required": ["code"],
}
# Every operation lists these. HTTP status: (component, what it means). The
# statuses are the ones Envoy maps the server's gRPC codes to; Envoy's own
# refusals (malformed JSON, unknown query parameter, body too large, server
# unreachable) come in the same JSON shape (local_reply_config in envoy.yaml).
_ERRORS: dict[str, tuple[str, str]] = {
    "400": (
        "BadRequest",
        "INVALID_ARGUMENT, FAILED_PRECONDITION or OUT_OF_RANGE: the request is malformed or "
        "invalid, or not allowed in the resource's state (a deactivated project).",
    ),
    "401": ("Unauthenticated", "UNAUTHENTICATED: the bearer token is missing or invalid."),
    "403": ("PermissionDenied", "PERMISSION_DENIED: the caller's role does not allow it."),
    "404": ("NotFound", "NOT_FOUND: no such resource, or none the caller may read."),
    "409": (
        "Conflict",
        "ALREADY_EXISTS or ABORTED: the resource exists, or it changed since the etag given "
        "was read.",
    ),
    "413": ("PayloadTooLarge", "RESOURCE_EXHAUSTED: the request body is larger than allowed."),
    "429": ("TooManyRequests", "RESOURCE_EXHAUSTED: too many calls; retry later."),
    "500": (
        "InternalError",
        "INTERNAL or UNKNOWN: an unexpected failure; the message carries an error id.",
    ),
    "503": (
        "Unavailable",
        "UNAVAILABLE: the server, its database or its storage is unreachable; retry later.",
    ),
    "default": ("OtherError", "Any other failure, e.g. 504 for DEADLINE_EXCEEDED."),
}
_INFO_DESCRIPTION = """\
The REST face of the PACS Extension Server's gRPC API, served by its Envoy sidecar.

- JSON field names are the proto field names (snake_case).
- 64-bit integers are decimal strings; enums are value names; timestamps are RFC 3339;
  field masks are comma-separated lowerCamelCase paths.
- Responses carry every field that is not a message even when it holds its default value
  (0, "", false, [] or {}); a message field that is not set is left out.
- Errors are `{"code", "message", "details"}` with the gRPC status code, under the HTTP status
  it maps to. Every call needs a Keycloak access token as `Authorization: Bearer ...`.
"""


@dataclass(frozen=True)
class Route:
    """One google.api.http binding of an RPC; `binding` 0 is the rule, 1... its additional ones."""

    rpc: MethodDescriptor
    verb: str
    template: str
    body: str
    response_body: str
    binding: int

    @property
    def service(self) -> str:
        return self.rpc.containing_service.name

    @property
    def request(self) -> Descriptor:
        return self.rpc.input_type

    @property
    def response(self) -> Descriptor:
        return self.rpc.output_type


def load_pool(files: descriptor_pb2.FileDescriptorSet) -> descriptor_pool.DescriptorPool:
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:
        pool.Add(file)
    return pool


def routes(
    files: descriptor_pb2.FileDescriptorSet, pool: descriptor_pool.DescriptorPool, package: str
) -> list[Route]:
    """Every http binding of every RPC in `package`, additional bindings included."""
    found: list[Route] = []
    for file in files.file:
        if file.package != package:
            continue
        for service in pool.FindFileByName(file.name).services_by_name.values():
            for method in service.methods:
                options = method.GetOptions()
                if not options.HasExtension(annotations_pb2.http):
                    continue
                if method.client_streaming or method.server_streaming:
                    raise ValueError(f"{method.full_name}: streaming RPCs have no REST route here")
                rule: http_pb2.HttpRule = options.Extensions[annotations_pb2.http]
                for binding, each in enumerate([rule, *rule.additional_bindings]):
                    verb, template = _pattern(each, method.full_name)
                    found.append(
                        Route(method, verb, template, each.body, each.response_body, binding)
                    )
    return found


def _pattern(rule: http_pb2.HttpRule, where: str) -> tuple[str, str]:
    kind = rule.WhichOneof("pattern")
    if kind == "custom":
        verb, template = rule.custom.kind.lower(), rule.custom.path
    elif kind is not None:
        verb, template = kind, getattr(rule, kind)
    else:
        raise ValueError(f"{where}: http rule without a pattern")
    if verb not in _OPENAPI_METHODS:
        raise ValueError(f"{where}: HTTP method {verb!r} has no OpenAPI operation")
    return verb, template


def openapi_path(template: str) -> tuple[str, list[str]]:
    """The OpenAPI path of an http rule template, and its variables' field paths in order."""
    names: list[str] = []

    def variable(match: re.Match[str]) -> str:
        if match.group(2) not in (None, "*"):
            raise ValueError(f"{template}: only single-segment variables have an OpenAPI form")
        names.append(match.group(1))
        return "{" + match.group(1) + "}"

    return _PATH_VARIABLE.sub(variable, template), names


def _first_sentence(text: str) -> str:
    paragraph = " ".join(text.split("\n\n", maxsplit=1)[0].split())
    return re.split(r"(?<=\.)\s", paragraph, maxsplit=1)[0]


class _OperationBuilder:
    def __init__(self, schemas: SchemaBuilder) -> None:
        self._schemas = schemas

    def operation(self, route: Route) -> tuple[str, Schema]:
        path, variables = openapi_path(route.template)
        text = self._schemas.describe(route.rpc.full_name)
        operation: Schema = {
            "operationId": f"{route.service}_{route.rpc.name}"
            + (f"_{route.binding}" if route.binding else ""),
            "tags": [route.service],
            "parameters": [self._path_parameter(route.request, name) for name in variables],
            "responses": self._responses(route),
        }
        if text:
            operation["summary"] = _first_sentence(text)
            if " ".join(text.split()) != operation["summary"]:
                operation["description"] = text
        bound = set(variables)
        if route.body:
            operation["requestBody"] = self._body(route, bound)
            bound.add(route.body)
        if route.body != "*":
            operation["parameters"] += [
                self._query_parameter(name, field)
                for name, field in self._query_fields(route.request, "", bound, ())
            ]
        if not operation["parameters"]:
            del operation["parameters"]
        return path, operation

    def _path_parameter(self, message: Descriptor, name: str) -> Schema:
        field = field_at(message, name)
        schema = self._schemas.url_value(field)
        if schema is None or field.is_repeated:
            raise ValueError(f"{message.full_name}.{name} cannot be a path parameter")
        return self._parameter(name, "path", schema, field)

    def _query_parameter(self, name: str, field: FieldDescriptor) -> Schema:
        schema = self._schemas.url_value(field)
        assert schema is not None
        return self._parameter(name, "query", schema, field)

    def _parameter(self, name: str, where: str, schema: Schema, field: FieldDescriptor) -> Schema:
        parameter: Schema = {
            "name": name,
            "in": where,
            "required": where == "path",
            "schema": schema,
        }
        text = self._schemas.describe(field.full_name)
        if text:
            parameter["description"] = text
        return parameter

    def _query_fields(
        self, message: Descriptor, prefix: str, bound: set[str], seen: tuple[str, ...]
    ) -> Iterator[tuple[str, FieldDescriptor]]:
        """Fields a query parameter can set: scalars, enums and string-like well-known types,
        also inside non-repeated message fields (as `outer.inner`)."""
        for field in message.fields:
            name = prefix + field.name
            if name in bound:
                continue
            if self._schemas.url_value(field) is not None:
                yield name, field
            elif field.type == FieldDescriptor.TYPE_MESSAGE and not field.is_repeated:
                inner, chain = message_of(field), (*seen, message.full_name)
                if not inner.full_name.startswith("google.") and inner.full_name not in chain:
                    yield from self._query_fields(inner, name + ".", bound, chain)

    def _body(self, route: Route, bound: set[str]) -> Schema:
        if route.body == "*":
            if any("." in name for name in bound):
                raise ValueError(f"{route.template}: nested path variable with body '*'")
            if bound:
                schema = self._schemas.message(route.request, without=frozenset(bound))
            else:
                schema = self._schemas.reference(route.request)
            carries_fields = any(f.name not in bound for f in route.request.fields)
            text = self._schemas.describe(route.request.full_name)
        else:
            field = field_at(route.request, route.body)
            schema = self._schemas.json_value(field)
            carries_fields = True
            text = self._schemas.describe(field.full_name)
        body: Schema = {
            "required": carries_fields,
            "content": {"application/json": {"schema": schema}},
        }
        if text:
            body["description"] = text
        return body

    def _responses(self, route: Route) -> Schema:
        if route.response_body:
            field = field_at(route.response, route.response_body)
            schema = self._schemas.json_value(field)
            text = self._schemas.describe(field.full_name)
        else:
            schema = self._schemas.reference(route.response)
            text = self._schemas.describe(route.response.full_name)
        responses: Schema = {
            "200": {
                "description": text or "OK.",
                "content": {"application/json": {"schema": schema}},
            }
        }
        for status, (name, _) in _ERRORS.items():
            responses[status] = {"$ref": f"#/components/responses/{name}"}
        return responses


def _error_responses() -> Schema:
    responses: Schema = {}
    for name, meaning in _ERRORS.values():
        content = {"application/json": {"schema": {"$ref": SCHEMAS + _STATUS}}}
        responses[name] = {"description": meaning, "content": content}
    return responses


def build_document(files: descriptor_pb2.FileDescriptorSet, package: str = PACKAGE) -> Schema:
    """The OpenAPI document of every http rule of the package's RPCs."""
    pool = load_pool(files)
    schemas = SchemaBuilder(comments(files))
    operations = _OperationBuilder(schemas)
    paths: dict[str, Schema] = {}
    services: set[str] = set()
    for route in routes(files, pool, package):
        path, operation = operations.operation(route)
        item = paths.setdefault(path, {})
        if route.verb in item:
            raise ValueError(f"{route.verb.upper()} {path} is bound twice")
        item[route.verb] = operation
        services.add(route.service)
    components = schemas.finish()
    # The error schema's details; the descriptor set need not hold any.proto.
    components.setdefault("google.protobuf.Any", dict(JSON_WELL_KNOWN["google.protobuf.Any"]))
    components[_STATUS] = _STATUS_SCHEMA
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "PACS Extension Server",
            "version": package.rsplit(".", 1)[-1],
            "description": _INFO_DESCRIPTION,
        },
        "tags": [
            {"name": name, "description": schemas.describe(f"{package}.{name}")}
            for name in sorted(services)
        ],
        "security": [{"bearerAuth": []}],
        "paths": paths,
        "components": {
            "schemas": components,
            "responses": _error_responses(),
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "A Keycloak access token of the realm the server trusts.",
                }
            },
        },
    }


def render(document: Schema) -> str:
    """Stable text: sorted keys, so regenerating an unchanged contract changes no byte."""
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(f"usage: {argv[0]} DESCRIPTOR_SET OUTPUT_JSON", file=sys.stderr)
        return 2
    files = descriptor_pb2.FileDescriptorSet.FromString(pathlib.Path(argv[1]).read_bytes())
    pathlib.Path(argv[2]).write_text(render(build_document(files)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
