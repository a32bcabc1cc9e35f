"""Hypothesis strategies for any protobuf request message, built from its descriptor.

Values lean towards what reaches deep code paths: small ids that exist, UIDs that almost
validate, and the awkward cases (NUL bytes, huge numbers, long and non-ASCII strings,
unknown enum numbers, empty and duplicated repeated fields), and what once reached the
server as a fault: NaN and Infinity in a Struct, nesting past every limit, and page tokens
whose parts were altered by hand.
"""

from __future__ import annotations

import base64
import json
from typing import Any, cast

from google.protobuf import struct_pb2, timestamp_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

from pacs_grpc.domain import paging

_INT64 = (-(2**63), 2**63 - 1)
_INT32 = (-(2**31), 2**31 - 1)
_MAX_DEPTH = 3

_uids = st.sampled_from(
    ["1.2.3", "1.2.840.10008.1", "0", "1..2", "1.02.3", "1.2.", "a.b.c", "1" * 70, ""]
)
_texts = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=12).map(
        lambda t: t + "\x00"
    ),
    st.sampled_from(["", " ", "segmentation", "x-custom", "image/png", "%", "' or 1=1 --"]),
    st.integers(min_value=200, max_value=5000).map(lambda n: "é" * n),
    _uids,
)


def _integers(low: int, high: int) -> st.SearchStrategy[int]:
    return st.one_of(
        st.integers(min_value=max(low, -2), max_value=min(high, 60)),
        st.sampled_from([low, high, 0, -1]),
        st.integers(min_value=low, max_value=high),
    )


def _struct() -> st.SearchStrategy[struct_pb2.Struct]:
    def build(values: dict[str, Any]) -> struct_pb2.Struct:
        message = struct_pb2.Struct()
        message.update(values)
        return message

    # NaN and the infinities have no JSON form; Struct carries them anyway.
    leaves = st.one_of(st.none(), st.booleans(), st.floats(), _texts)
    nested = st.recursive(
        leaves,
        lambda inner: st.one_of(
            st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
        ),
        max_leaves=8,
    )
    return st.dictionaries(st.text(max_size=12), st.one_of(nested, _deep()), max_size=4).map(build)


def _deep() -> st.SearchStrategy[Any]:
    """Lists in lists, from within the JSON limit to past protobuf's own parse limit."""

    def wrap(depth: int) -> Any:
        value: Any = 1
        for _ in range(depth):
            value = [value]
        return value

    return st.integers(min_value=20, max_value=120).map(wrap)


def _page_tokens() -> st.SearchStrategy[str]:
    """Tokens shaped like the service's, with the parts a client could change.

    The fingerprints are those the list calls compute for common filters, so altered
    positions reach the code that reads them instead of stopping at the fingerprint.
    """
    fingerprints = st.sampled_from(
        [
            paging.filters_fingerprint("projects", False),
            paging.filters_fingerprint("projects", True),
        ]
        + [paging.filters_fingerprint(kind, n) for kind in ("groups", "masks") for n in (1, 2, 3)]
        + ["0" * 16, ""]
    )
    parts = st.one_of(
        st.integers(), st.floats(), st.text(max_size=30), st.none(), st.booleans(),
        st.just("2026-01-01T00:00:00+00:00"), st.lists(st.integers(), max_size=2),
    )  # fmt: skip
    payloads = st.builds(
        lambda f, p: json.dumps({"f": f, "p": p}, allow_nan=True),
        fingerprints,
        st.one_of(st.lists(parts, max_size=3), parts),
    )
    encoded = payloads.map(
        lambda text: base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")
    )
    return st.one_of(encoded, encoded.map(lambda t: t[:-1]), st.text(max_size=40))


def _timestamp() -> st.SearchStrategy[timestamp_pb2.Timestamp]:
    return st.builds(
        timestamp_pb2.Timestamp,
        seconds=st.integers(min_value=-62135596800, max_value=253402300799),
        nanos=st.integers(min_value=0, max_value=999_999_999),
    )


def _scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64):
        return _integers(*_INT64)
    if kind in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32):
        return _integers(*_INT32)
    if kind in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_UINT64):
        return _integers(0, 2**32 - 1)
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return st.floats(allow_nan=False, width=32)
    if kind == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    if kind == FieldDescriptor.TYPE_ENUM:
        assert field.enum_type is not None
        numbers = [v.number for v in field.enum_type.values]
        return st.one_of(st.sampled_from(numbers), st.integers(min_value=-3, max_value=99))
    return _texts


def message_of(message_class: type[Message]) -> st.SearchStrategy[Message]:
    return _message(cast(Descriptor, message_class.DESCRIPTOR), message_class, 0)


def _message(
    descriptor: Descriptor, message_class: type[Message], depth: int
) -> st.SearchStrategy[Message]:
    if descriptor.full_name == "google.protobuf.Struct":
        return _struct()
    if descriptor.full_name == "google.protobuf.Timestamp":
        return _timestamp()

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        message = message_class()
        for field in descriptor.fields:
            if not draw(st.booleans()):
                continue
            if field.message_type is not None:
                if depth >= _MAX_DEPTH or field.message_type.GetOptions().map_entry:
                    continue
                if _repeated(field):
                    container = getattr(message, field.name)
                    for _ in range(draw(st.integers(min_value=0, max_value=3))):
                        item = container.add()
                        item.CopyFrom(draw(_message(field.message_type, type(item), depth + 1)))
                else:
                    target = getattr(message, field.name)
                    target.CopyFrom(draw(_message(field.message_type, type(target), depth + 1)))
            elif _repeated(field):
                values = draw(st.lists(_scalar(field), max_size=4))
                getattr(message, field.name).extend(values)
            elif field.name == "page_token":
                setattr(message, field.name, draw(_page_tokens()))
            else:
                setattr(message, field.name, draw(_scalar(field)))
        return message

    return build()


def _repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated)
