"""JSON Schemas of protobuf messages as their proto3 JSON looks through Envoy's transcoder.

Field names exactly as in the .proto (the transcoder preserves them), 64-bit
integers as decimal strings, enums by value name, and well-known types in their
canonical JSON forms. A field whose comment says "Output only" is marked
readOnly.

No property is `required`: proto3 has none, requests may leave any field out
(the server says which ones it needs), and one schema serves both directions.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from typing import Any

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor

Schema = dict[str, Any]

SCHEMAS = "#/components/schemas/"
_OUTPUT_ONLY = re.compile(r"\bOutput only\b")
_F = FieldDescriptor

# (format, minimum, maximum) of each integer type.
_INTEGERS: dict[int, tuple[str, int, int]] = {
    **dict.fromkeys(
        (_F.TYPE_INT32, _F.TYPE_SINT32, _F.TYPE_SFIXED32), ("int32", -(2**31), 2**31 - 1)
    ),
    **dict.fromkeys((_F.TYPE_UINT32, _F.TYPE_FIXED32), ("uint32", 0, 2**32 - 1)),
    **dict.fromkeys(
        (_F.TYPE_INT64, _F.TYPE_SINT64, _F.TYPE_SFIXED64), ("int64", -(2**63), 2**63 - 1)
    ),
    **dict.fromkeys((_F.TYPE_UINT64, _F.TYPE_FIXED64), ("uint64", 0, 2**64 - 1)),
}
_OTHER_SCALARS: dict[int, Schema] = {
    _F.TYPE_DOUBLE: {"type": "number", "format": "double"},
    _F.TYPE_FLOAT: {"type": "number", "format": "float"},
    _F.TYPE_BOOL: {"type": "boolean"},
    _F.TYPE_STRING: {"type": "string"},
    _F.TYPE_BYTES: {"type": "string", "format": "byte"},
}
# The JSON of a wrapper is the JSON of the value it wraps.
WRAPPERS: dict[str, int] = {
    "google.protobuf.DoubleValue": _F.TYPE_DOUBLE,
    "google.protobuf.FloatValue": _F.TYPE_FLOAT,
    "google.protobuf.Int64Value": _F.TYPE_INT64,
    "google.protobuf.UInt64Value": _F.TYPE_UINT64,
    "google.protobuf.Int32Value": _F.TYPE_INT32,
    "google.protobuf.UInt32Value": _F.TYPE_UINT32,
    "google.protobuf.BoolValue": _F.TYPE_BOOL,
    "google.protobuf.StringValue": _F.TYPE_STRING,
    "google.protobuf.BytesValue": _F.TYPE_BYTES,
}
_FIELD_PATH = r"[a-z][A-Za-z0-9]*(\.[a-z][A-Za-z0-9]*)*"
# Well-known types whose JSON is a string, so they can also travel in a URL.
STRING_WELL_KNOWN: dict[str, Schema] = {
    "google.protobuf.Timestamp": {
        "type": "string",
        "format": "date-time",
        "description": "RFC 3339, e.g. `2025-01-31T12:00:00Z`.",
    },
    "google.protobuf.Duration": {
        "type": "string",
        "pattern": r"^-?[0-9]+(\.[0-9]{1,9})?s$",
        "description": "Seconds with up to nine decimals and an `s` suffix, e.g. `1.5s`.",
    },
    "google.protobuf.FieldMask": {
        "type": "string",
        "pattern": f"^({_FIELD_PATH}(,{_FIELD_PATH})*)?$",
        "description": "Comma-separated field paths in lowerCamelCase, "
        "e.g. `annotationType,viewerSoftware`.",
    },
}
JSON_WELL_KNOWN: dict[str, Schema] = {
    "google.protobuf.Struct": {"type": "object", "description": "Any JSON object."},
    "google.protobuf.Value": {"description": "Any JSON value."},
    "google.protobuf.ListValue": {"type": "array", "description": "Any JSON array."},
    "google.protobuf.Empty": {"type": "object", "description": "An empty JSON object."},
    "google.protobuf.Any": {
        "type": "object",
        "properties": {"@type": {"type": "string"}},
        "required": ["@type"],
        "description": "A message of the type that `@type` names, with that type's fields.",
    },
}


def decimal_pattern(minimum: int, maximum: int) -> str:
    """A regex matching exactly the canonical decimal form of each integer in [minimum, maximum].

    64-bit integers travel as JSON strings; this bounds them as `minimum` and
    `maximum` bound a number. Needs minimum <= 0 <= maximum.
    """
    branches = ["0"]
    if maximum > 0:
        branches.append(_positive_up_to(maximum))
    if minimum < 0:
        branches.append("-" + _positive_up_to(-minimum))
    return f"^({'|'.join(branches)})$"


def _positive_up_to(limit: int) -> str:
    # 1..limit is: every shorter number, then for each position of `limit` its
    # digits before, a smaller digit there and any digits after, then `limit`.
    digits = str(limit)
    width = len(digits)
    branches = [f"[1-9][0-9]{{0,{width - 2}}}"] if width > 1 else []
    for position, digit in enumerate(digits):
        low, high = (1 if position == 0 else 0), int(digit) - 1
        if high >= low:
            rest = width - position - 1
            choice = str(low) if low == high else f"[{low}-{high}]"
            branches.append(digits[:position] + choice + (f"[0-9]{{{rest}}}" if rest else ""))
    branches.append(digits)
    return f"(?:{'|'.join(branches)})"


def plain_scalar(kind: int) -> Schema:
    """A scalar's schema where it is a plain value: in a URL, or a 32-bit or non-integer one."""
    if kind not in _INTEGERS:
        return dict(_OTHER_SCALARS[kind])
    name, low, high = _INTEGERS[kind]
    return {"type": "integer", "format": name, "minimum": low, "maximum": high}


def comments(files: descriptor_pb2.FileDescriptorSet) -> dict[str, str]:
    """Leading comments by full name (an enum value as `<enum full name>.<value>`)."""
    found: dict[str, str] = {}
    for file in files.file:
        names = dict(_location_names(file))
        for location in file.source_code_info.location:
            name = names.get(tuple(location.path))
            text = "\n".join(
                line.removeprefix(" ").rstrip() for line in location.leading_comments.split("\n")
            ).strip()
            if name is not None and text:
                found[name] = text
    return found


def _location_names(
    file: descriptor_pb2.FileDescriptorProto,
) -> Iterator[tuple[tuple[int, ...], str]]:
    # Paths follow FileDescriptorProto's field numbers: 4 messages, 5 enums, 6 services.
    package = file.package
    for index, message in enumerate(file.message_type):
        yield from _message_names(message, (4, index), package)
    for index, enum in enumerate(file.enum_type):
        yield from _enum_names(enum, (5, index), package)
    for index, service in enumerate(file.service):
        name = _join(package, service.name)
        yield (6, index), name
        for number, method in enumerate(service.method):
            yield (6, index, 2, number), f"{name}.{method.name}"


def _message_names(
    message: descriptor_pb2.DescriptorProto, path: tuple[int, ...], scope: str
) -> Iterator[tuple[tuple[int, ...], str]]:
    name = _join(scope, message.name)
    yield path, name
    for index, field in enumerate(message.field):
        yield (*path, 2, index), f"{name}.{field.name}"
    for index, nested in enumerate(message.nested_type):
        yield from _message_names(nested, (*path, 3, index), name)
    for index, enum in enumerate(message.enum_type):
        yield from _enum_names(enum, (*path, 4, index), name)


def _enum_names(
    enum: descriptor_pb2.EnumDescriptorProto, path: tuple[int, ...], scope: str
) -> Iterator[tuple[tuple[int, ...], str]]:
    name = _join(scope, enum.name)
    yield path, name
    for index, value in enumerate(enum.value):
        yield (*path, 2, index), f"{name}.{value.name}"


def _join(scope: str, name: str) -> str:
    return f"{scope}.{name}" if scope else name


class SchemaBuilder:
    """JSON Schemas of messages and enums, collected as components on first reference."""

    def __init__(self, descriptions: dict[str, str]) -> None:
        self._descriptions = descriptions
        self.components: dict[str, Schema] = {}
        self._queued: dict[str, Descriptor | EnumDescriptor] = {}

    def reference(self, target: Descriptor | EnumDescriptor) -> Schema:
        if target.full_name not in self.components:
            self._queued.setdefault(target.full_name, target)
        return {"$ref": SCHEMAS + target.full_name}

    def finish(self) -> dict[str, Schema]:
        """Builds every component referenced so far, and those they reference in turn."""
        while self._queued:
            name, target = self._queued.popitem()
            if name not in self.components:
                self.components[name] = self._component(target)
        return self.components

    def _component(self, target: Descriptor | EnumDescriptor) -> Schema:
        if isinstance(target, EnumDescriptor):
            return self.enum(target)
        name = target.full_name
        if name in WRAPPERS:
            return self._json_scalar(WRAPPERS[name])
        if name in STRING_WELL_KNOWN or name in JSON_WELL_KNOWN:
            return dict(STRING_WELL_KNOWN.get(name) or JSON_WELL_KNOWN[name])
        if name.startswith("google.protobuf."):
            raise ValueError(f"{name}: no JSON mapping known for this well-known type")
        return self.message(target)

    def enum(self, enum: EnumDescriptor) -> Schema:
        if enum.full_name == "google.protobuf.NullValue":
            return {"type": "null"}
        lines = [self._descriptions.get(enum.full_name, ""), ""]
        for value in enum.values:
            meaning = self._descriptions.get(f"{enum.full_name}.{value.name}", "")
            lines.append(f"- `{value.name}`" + (f": {meaning}" if meaning else ""))
        return {
            "type": "string",
            "enum": [value.name for value in enum.values],
            "description": "\n".join(lines).strip(),
        }

    def message(self, message: Descriptor, *, without: frozenset[str] = frozenset()) -> Schema:
        """The object schema of a message, leaving out the fields named in `without`."""
        schema: Schema = {"type": "object"}
        properties = {f.name: self._property(f) for f in message.fields if f.name not in without}
        if properties:
            schema["properties"] = properties
        if message.full_name in self._descriptions:
            schema["description"] = self._descriptions[message.full_name]
        # Proto JSON refuses two members of one oneof in the same object.
        pairs = [
            {"required": [first, second]}
            for members in _oneofs(message)
            for first, second in itertools.combinations(members, 2)
        ]
        if pairs:
            schema["not"] = {"anyOf": pairs}
        return schema

    def _property(self, field: FieldDescriptor) -> Schema:
        schema = dict(self.json_value(field))
        text = self._descriptions.get(field.full_name, "")
        oneof = field.containing_oneof
        if oneof is not None and len(oneof.fields) > 1:
            others = ", ".join(f.name for f in oneof.fields)
            text = f"{text}\n\nOne of: {others}; at most one may be set.".strip()
        if text:
            schema["description"] = text
        if _OUTPUT_ONLY.search(text):
            schema["readOnly"] = True
        return schema

    def json_value(self, field: FieldDescriptor) -> Schema:
        """The schema of a field's value in a JSON body."""
        if _is_map(field):
            value = message_of(field).fields_by_name["value"]
            return {"type": "object", "additionalProperties": self._single(value)}
        single = self._single(field)
        return {"type": "array", "items": single} if field.is_repeated else single

    def _single(self, field: FieldDescriptor) -> Schema:
        if field.type in (_F.TYPE_MESSAGE, _F.TYPE_GROUP):
            return self.reference(message_of(field))
        if field.type == _F.TYPE_ENUM:
            return self.reference(_enum_of(field))
        return self._json_scalar(field.type)

    def _json_scalar(self, kind: int) -> Schema:
        name, low, high = _INTEGERS.get(kind, ("", 0, 0))
        if not name.endswith("64"):
            return plain_scalar(kind)
        # JSON carries 64-bit integers as strings. One component per type: the
        # pattern that bounds them is long.
        self.components[name] = {
            "type": "string",
            "format": name,
            "pattern": decimal_pattern(low, high),
            "description": f'A {name} as a decimal string, e.g. `"42"`.',
        }
        return {"$ref": SCHEMAS + name}

    def url_value(self, field: FieldDescriptor) -> Schema | None:
        """The schema of a field's value in a path or query parameter; None if it has none."""
        if _is_map(field):
            return None
        if field.type == _F.TYPE_ENUM:
            single = self.reference(_enum_of(field))
        elif field.type in (_F.TYPE_MESSAGE, _F.TYPE_GROUP):
            name = message_of(field).full_name
            if name in WRAPPERS:
                single = plain_scalar(WRAPPERS[name])
            elif name in STRING_WELL_KNOWN:
                single = dict(STRING_WELL_KNOWN[name])
            else:
                return None
        else:
            single = plain_scalar(field.type)
        return {"type": "array", "items": single} if field.is_repeated else single

    def describe(self, full_name: str) -> str:
        return self._descriptions.get(full_name, "")


def _is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def _oneofs(message: Descriptor) -> list[list[str]]:
    # A proto3 `optional` field sits alone in a synthetic oneof: nothing to exclude.
    return [[f.name for f in oneof.fields] for oneof in message.oneofs if len(oneof.fields) > 1]


def message_of(field: FieldDescriptor) -> Descriptor:
    if field.message_type is None:
        raise ValueError(f"{field.full_name} is not a message field")
    return field.message_type


def _enum_of(field: FieldDescriptor) -> EnumDescriptor:
    if field.enum_type is None:
        raise ValueError(f"{field.full_name} is not an enum field")
    return field.enum_type


def field_at(message: Descriptor, path: str) -> FieldDescriptor:
    """The field a dotted path such as `annotation.study_uid` names, from `message`."""
    field: FieldDescriptor | None = None
    for part in path.split("."):
        if field is not None:
            message = message_of(field)
        field = message.fields_by_name.get(part)
        if field is None:
            raise ValueError(f"{message.full_name} has no field {part!r} (in {path!r})")
    assert field is not None
    return field
