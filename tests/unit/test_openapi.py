"""The OpenAPI document Envoy serves at /api/openapi.json, checked against the routes.

The routes come from deploy/envoy/pacs.binpb, the descriptor set Envoy's
transcoder serves, read here without the generator's help. The message schemas
are checked against real proto3 JSON of fully populated messages.
"""

from __future__ import annotations

import importlib.resources
import json
import pathlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

import pytest
from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pb2, json_format, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from grpc_tools import protoc
from hypothesis import example, given
from hypothesis import strategies as st
from openapi_schema_validator import OAS31Validator, oas31_format_checker
from openapi_spec_validator import validate

from tools import openapi
from tools.proto_schemas import SchemaBuilder, decimal_pattern

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCUMENT = ROOT / "deploy" / "envoy" / "openapi.json"
ENVOY_DESCRIPTOR = ROOT / "deploy" / "envoy" / "pacs.binpb"
VERBS = ("get", "put", "post", "delete", "patch")
INT64 = (-(2**63), 2**63 - 1)

Json = dict[str, Any]


@dataclass(frozen=True)
class Rule:
    rpc: str
    verb: str
    path: str
    variables: tuple[str, ...]
    body: str
    request: descriptor_pb2.DescriptorProto


def _rules(files: descriptor_pb2.FileDescriptorSet) -> Iterator[Rule]:
    messages = {
        f".{file.package}.{message.name}": message
        for file in files.file
        for message in file.message_type
    }
    for file in files.file:
        if file.package != openapi.PACKAGE:
            continue
        for service in file.service:
            for method in service.method:
                if not method.options.HasExtension(annotations_pb2.http):
                    continue
                rule: http_pb2.HttpRule = method.options.Extensions[annotations_pb2.http]
                for binding in (rule, *rule.additional_bindings):
                    verb = binding.WhichOneof("pattern")
                    assert verb in VERBS
                    template: str = getattr(binding, verb)
                    variables = tuple(re.findall(r"\{([^}=]+)(?:=\*)?\}", template))
                    path = re.sub(r"\{([^}=]+)(?:=\*)?\}", r"{\1}", template)
                    yield Rule(
                        f"{service.name}_{method.name}",
                        verb,
                        path,
                        variables,
                        binding.body,
                        messages[method.input_type],
                    )


def _operations(document: Json) -> dict[tuple[str, str], Json]:
    return {
        (verb, path): operation
        for path, item in document["paths"].items()
        for verb, operation in item.items()
    }


def _validator(document: Json, schema: Json) -> OAS31Validator:
    # The document's components travel along so that `#/components/...` resolves.
    root = {**schema, "components": document["components"]}
    return OAS31Validator(root, format_checker=oas31_format_checker)


def _resolve(document: Json, schema: Json) -> Json:
    while "$ref" in schema:
        schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


@pytest.fixture(scope="module")
def document() -> Json:
    loaded: Json = json.loads(DOCUMENT.read_text())
    return loaded


@pytest.fixture(scope="module")
def envoy_files() -> descriptor_pb2.FileDescriptorSet:
    return descriptor_pb2.FileDescriptorSet.FromString(ENVOY_DESCRIPTOR.read_bytes())


@pytest.fixture(scope="module")
def rules(envoy_files: descriptor_pb2.FileDescriptorSet) -> list[Rule]:
    found = list(_rules(envoy_files))
    assert found, "the descriptor set has no google.api.http rules"
    return found


@pytest.fixture(scope="module")
def fresh_files(tmp_path_factory: pytest.TempPathFactory) -> descriptor_pb2.FileDescriptorSet:
    """The protos compiled now, with the comments the descriptions come from."""
    out = tmp_path_factory.mktemp("openapi") / "with-source.binpb"
    protos = ROOT / "protos"
    names = sorted(str(path.relative_to(protos)) for path in protos.rglob("*.proto"))
    googleapis = pathlib.Path(http_pb2.__file__).parents[2]
    well_known = importlib.resources.files("grpc_tools") / "_proto"
    status = protoc.main(
        [
            "protoc",
            f"-I{protos}",
            f"-I{googleapis}",
            f"-I{well_known}",
            "--include_imports",
            "--include_source_info",
            f"--descriptor_set_out={out}",
            *names,
        ]
    )
    assert status == 0
    return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


def test_the_document_is_valid_openapi_3_1(document: Json) -> None:
    assert document["openapi"] == "3.1.0"
    validate(document)


def test_the_committed_document_is_what_the_protos_generate_now(
    document: Json, fresh_files: descriptor_pb2.FileDescriptorSet
) -> None:
    fresh = openapi.render(openapi.build_document(fresh_files))
    assert fresh == DOCUMENT.read_text(), "deploy/envoy/openapi.json is stale: run make generate"


def test_every_http_rule_is_exactly_one_operation_and_nothing_else(
    document: Json, rules: list[Rule]
) -> None:
    expected = {(rule.verb, rule.path): rule.rpc for rule in rules}
    assert len(expected) == len(rules), "two rules share a method and path"
    found = {key: operation["operationId"] for key, operation in _operations(document).items()}
    assert found == expected


def test_streaming_rpcs_have_no_operation(document: Json) -> None:
    ids = {operation["operationId"] for operation in _operations(document).values()}
    assert "AnnotationService_WatchAnnotations" not in ids
    assert "MaskService_PushMasks" not in ids


def test_path_variables_are_required_typed_path_parameters(
    document: Json, rules: list[Rule]
) -> None:
    operations = _operations(document)
    for rule in rules:
        parameters = operations[rule.verb, rule.path].get("parameters", [])
        in_path = [p for p in parameters if p["in"] == "path"]
        assert [p["name"] for p in in_path] == list(rule.variables), rule.rpc
        for parameter in in_path:
            assert parameter["required"] is True
            assert parameter["schema"]["type"] in {"integer", "string"}, rule.rpc


def test_query_parameters_are_the_fields_neither_in_the_path_nor_the_body(
    document: Json, rules: list[Rule]
) -> None:
    operations = _operations(document)
    for rule in rules:
        parameters = operations[rule.verb, rule.path].get("parameters", [])
        in_query = {p["name"] for p in parameters if p["in"] == "query"}
        top_level = {name.split(".")[0] for name in in_query}
        fields = {field.name: field for field in rule.request.field}
        assert top_level <= set(fields), rule.rpc
        assert not top_level & (set(rule.variables) | {rule.body}), rule.rpc
        if rule.body == "*":
            assert not in_query, rule.rpc
        # Every plain field the route leaves free can be set from the query string.
        free_scalars = {
            name
            for name, field in fields.items()
            if field.type != FieldDescriptor.TYPE_MESSAGE
            and name not in rule.variables
            and name != rule.body
            and rule.body != "*"
        }
        assert free_scalars <= in_query, rule.rpc


def test_request_bodies_follow_the_body_rule(document: Json, rules: list[Rule]) -> None:
    operations = _operations(document)
    for rule in rules:
        operation = operations[rule.verb, rule.path]
        if not rule.body:
            assert "requestBody" not in operation, rule.rpc
            continue
        schema = operation["requestBody"]["content"]["application/json"]["schema"]
        fields = {field.name: field for field in rule.request.field}
        if rule.body == "*":
            properties = set(_resolve(document, schema).get("properties", {}))
            assert properties == set(fields) - set(rule.variables), rule.rpc
            assert operation["requestBody"]["required"] is bool(properties), rule.rpc
        else:
            body_type = fields[rule.body].type_name.removeprefix(".")
            assert schema == {"$ref": f"#/components/schemas/{body_type}"}, rule.rpc
            assert operation["requestBody"]["required"] is True


def test_every_operation_needs_a_bearer_token(document: Json) -> None:
    assert document["security"] == [{"bearerAuth": []}]
    scheme = document["components"]["securitySchemes"]["bearerAuth"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    assert not any("security" in operation for operation in _operations(document).values())


def test_every_operation_documents_its_errors_as_grpc_status_json(document: Json) -> None:
    responses = document["components"]["responses"]
    for (verb, path), operation in _operations(document).items():
        codes = set(operation["responses"])
        assert {"200", "400", "401", "403", "404", "409", "429", "500", "503"} <= codes
        assert "default" in codes, f"{verb} {path}"
        for code in codes - {"200"}:
            name = operation["responses"][code]["$ref"].rsplit("/", 1)[-1]
            content = responses[name]["content"]
            assert content == {
                "application/json": {"schema": {"$ref": "#/components/schemas/google.rpc.Status"}}
            }
    status = {"$ref": "#/components/schemas/google.rpc.Status"}
    assert _validator(document, status).is_valid({"code": 5, "message": "annotation not found"})
    assert not _validator(document, status).is_valid({"message": "no code"})


def _sample_json(well_known: str) -> object | None:
    return {
        "google.protobuf.Timestamp": "2025-01-31T12:00:00.500Z",
        "google.protobuf.Duration": "1.5s",
        "google.protobuf.FieldMask": "annotationType,viewerSoftware",
        "google.protobuf.Struct": {"shape": [1, "two", None, {"closed": True}]},
        "google.protobuf.Value": [0.5, "mm", None],
        "google.protobuf.ListValue": [1, "a"],
    }.get(well_known)


_F = FieldDescriptor
_EXTREMES: dict[int, object] = {
    **dict.fromkeys((_F.TYPE_INT64, _F.TYPE_SINT64, _F.TYPE_SFIXED64), -(2**63)),
    **dict.fromkeys((_F.TYPE_UINT64, _F.TYPE_FIXED64), 2**64 - 1),
    **dict.fromkeys((_F.TYPE_INT32, _F.TYPE_SINT32, _F.TYPE_SFIXED32), -(2**31)),
    **dict.fromkeys((_F.TYPE_UINT32, _F.TYPE_FIXED32), 2**32 - 1),
    _F.TYPE_BOOL: True,
    _F.TYPE_STRING: "1.2.840.10008",
    _F.TYPE_BYTES: b"\x00\xff",
    _F.TYPE_DOUBLE: 1.5,
    _F.TYPE_FLOAT: 0.5,
}


def _populate(message: Message, depth: int = 0) -> None:
    """Sets every field, with values at the edges of their types' ranges."""
    for field in cast("list[FieldDescriptor]", message.DESCRIPTOR.fields):
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            entries = getattr(message, field.name)
            value_field = field.message_type.fields_by_name["value"]
            if value_field.message_type is None:
                entries["key"] = _EXTREMES[value_field.type]
            else:
                _populate(entries["key"], depth + 1)
        elif field.is_repeated:
            for _ in range(2):
                _set_one(message, field, depth, repeated=True)
        else:
            _set_one(message, field, depth, repeated=False)


def _set_one(message: Message, field: FieldDescriptor, depth: int, *, repeated: bool) -> None:
    target = getattr(message, field.name)
    if field.enum_type is not None:
        value: object = field.enum_type.values[-1].number
    elif field.message_type is not None:
        child = target.add() if repeated else target
        sample = _sample_json(field.message_type.full_name)
        if sample is not None:
            json_format.Parse(json.dumps(sample), child)
        elif depth < 3:
            _populate(child, depth + 1)
        return
    else:
        value = _EXTREMES[field.type]
    if repeated:
        target.append(value)
    else:
        setattr(message, field.name, value)


def _component_messages(
    document: Json, files: descriptor_pb2.FileDescriptorSet
) -> Iterator[tuple[str, Descriptor]]:
    pool = openapi.load_pool(files)
    for name in document["components"]["schemas"]:
        if name.startswith(f"{openapi.PACKAGE}."):
            try:
                yield name, pool.FindMessageTypeByName(name)
            except KeyError:
                continue  # an enum


def test_message_schemas_accept_the_proto3_json_envoy_prints(
    document: Json, envoy_files: descriptor_pb2.FileDescriptorSet
) -> None:
    checked = 0
    for name, descriptor in _component_messages(document, envoy_files):
        validator = _validator(document, {"$ref": f"#/components/schemas/{name}"})
        full = message_factory.GetMessageClass(descriptor)()
        _populate(full)
        for message in (full, message_factory.GetMessageClass(descriptor)()):
            printed = json_format.MessageToDict(
                message,
                preserving_proto_field_name=True,
                always_print_fields_with_no_presence=True,
            )
            errors = [error.message for error in validator.iter_errors(printed)]
            assert not errors, f"{name}: {errors}"
        checked += 1
    assert checked >= 20


def test_64_bit_integers_are_strings_and_bounded(document: Json) -> None:
    annotation = _validator(document, {"$ref": "#/components/schemas/pacs.v1.Annotation"})
    assert annotation.is_valid({"id": "9223372036854775807"})
    assert not annotation.is_valid({"id": 42})
    assert not annotation.is_valid({"id": "9223372036854775808"})
    assert not annotation.is_valid({"id": "042"})


def test_fields_marked_output_only_are_read_only(document: Json) -> None:
    properties = document["components"]["schemas"]["pacs.v1.Annotation"]["properties"]
    assert properties["id"]["readOnly"] is True
    assert properties["created_at"]["readOnly"] is True
    assert "readOnly" not in properties["study_uid"]


def test_one_oneof_member_at_a_time(envoy_files: descriptor_pb2.FileDescriptorSet) -> None:
    # PushMasks is gRPC-only, so its oneof is built here rather than read from the document.
    descriptor = openapi.load_pool(envoy_files).FindMessageTypeByName("pacs.v1.PushMasksRequest")
    builder = SchemaBuilder({})
    schema = builder.message(descriptor)
    document = {"components": {"schemas": builder.finish()}}
    validator = _validator(document, schema)
    assert validator.is_valid({"target": {"annotation_id": "1", "group_id": "2"}})
    assert validator.is_valid({"chunk": "AAE="})
    assert not validator.is_valid({"target": {"annotation_id": "1"}, "chunk": "AAE="})


@given(st.integers(min_value=-(2**65), max_value=2**65))
@example(INT64[0])
@example(INT64[1])
@example(INT64[0] - 1)
@example(INT64[1] + 1)
@example(0)
def test_the_int64_pattern_matches_exactly_the_int64_range(number: int) -> None:
    matches = re.fullmatch(decimal_pattern(*INT64), str(number)) is not None
    assert matches == (INT64[0] <= number <= INT64[1])


@pytest.mark.parametrize("text", ["", "-0", "007", "+1", "1.0", " 1", "1e3"])
def test_the_int64_pattern_refuses_non_canonical_text(text: str) -> None:
    assert re.fullmatch(decimal_pattern(*INT64), text) is None
