"""gRPC-web over plain HTTP/1.1, framed by hand as a browser's client library does.

A gRPC-web body is a run of frames: one flag byte, a 4-byte big-endian length, the
payload. Flag 0x00 carries a protobuf message; flag 0x80 carries the trailers as
HTTP/1-style header lines. A call that fails before any message (as the Python server's
aborts do) is "trailers-only": HTTP 200, grpc-status in the headers, an empty body.
`application/grpc-web-text` is the same bytes in base64.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

import urllib3
from google.protobuf.message import Message

_M = TypeVar("_M", bound=Message)

MESSAGE_FLAG = 0x00
TRAILERS_FLAG = 0x80
_HEADER = struct.Struct(">BI")


def frame(payload: bytes, flag: int = MESSAGE_FLAG) -> bytes:
    return _HEADER.pack(flag, len(payload)) + payload


def parse_trailers(payload: bytes) -> dict[str, str]:
    trailers: dict[str, str] = {}
    for line in payload.decode("ascii").split("\r\n"):
        if line:
            name, _, value = line.partition(":")
            trailers[name.strip().lower()] = value.strip()
    return trailers


@dataclass
class GrpcWebReply:
    """One call's outcome: HTTP status and headers, the messages, then the gRPC status."""

    http_status: int
    headers: Mapping[str, str]
    messages: list[bytes] = field(default_factory=list)
    trailers: dict[str, str] = field(default_factory=dict)

    @property
    def grpc_status(self) -> int | None:
        """From the trailers frame, or from the headers of a trailers-only reply."""
        raw = self.trailers.get("grpc-status", self.headers.get("grpc-status"))
        return None if raw is None else int(raw)

    @property
    def grpc_message(self) -> str:
        return self.trailers.get("grpc-message", self.headers.get("grpc-message", ""))

    def message(self, message_type: type[_M]) -> _M:
        (only,) = self.messages
        return message_type.FromString(only)


class GrpcWebClient:
    """Calls one gRPC-web endpoint (Envoy's listener) with urllib3."""

    def __init__(self, base_url: str, http: urllib3.PoolManager) -> None:
        self._base_url = base_url.rstrip("/")
        self._http = http

    def unary(
        self,
        method: str,
        request: Message,
        *,
        metadata: Mapping[str, str] | None = None,
        text: bool = False,
    ) -> GrpcWebReply:
        """`method` is the full path, e.g. /pacs.v1.IdentityService/Login."""
        body = frame(request.SerializeToString())
        response = self._http.request(
            "POST",
            self._base_url + method,
            body=base64.b64encode(body) if text else body,
            headers=self._headers(metadata, text),
        )
        data = response.data
        if text:
            data = _decode_text(data)
        reply = GrpcWebReply(response.status, _lower(response.headers))
        for flag, payload in _frames_in(data):
            _add(reply, flag, payload)
        return reply

    def server_stream(
        self,
        method: str,
        request: Message,
        *,
        metadata: Mapping[str, str] | None = None,
        read_timeout: float = 10.0,
    ) -> ServerStream:
        """Start a server-streaming call; read its messages one at a time as they arrive."""
        response = self._http.request(
            "POST",
            self._base_url + method,
            body=frame(request.SerializeToString()),
            headers=self._headers(metadata, text=False),
            preload_content=False,
            timeout=urllib3.Timeout(connect=5.0, read=read_timeout),
        )
        return ServerStream(response)

    @staticmethod
    def _headers(metadata: Mapping[str, str] | None, text: bool) -> dict[str, str]:
        kind = "application/grpc-web-text" if text else "application/grpc-web+proto"
        return {"content-type": kind, "x-grpc-web": "1", "accept": kind, **(metadata or {})}


class ServerStream:
    """An open server-streaming gRPC-web call, read frame by frame."""

    def __init__(self, response: urllib3.BaseHTTPResponse) -> None:
        self._response = response
        self.reply = GrpcWebReply(response.status, _lower(response.headers))

    def next_message(self, message_type: type[_M]) -> _M | None:
        """The next message, or None once the trailers (the call's end) arrived."""
        while True:
            header = self._read_exactly(_HEADER.size)
            if header is None:
                return None
            flag, length = _HEADER.unpack(header)
            payload = self._read_exactly(length) if length else b""
            if payload is None:
                raise ConnectionError("the stream ended inside a frame")
            _add(self.reply, flag, payload)
            if flag == MESSAGE_FLAG:
                return message_type.FromString(payload)
            if flag & TRAILERS_FLAG:
                return None

    def close(self) -> None:
        self._response.release_conn()
        self._response.close()

    def __enter__(self) -> ServerStream:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _read_exactly(self, n: int) -> bytes | None:
        data = b""
        while len(data) < n:
            chunk = self._response.read(n - len(data))
            if not chunk:
                if data:
                    raise ConnectionError("the stream ended inside a frame")
                return None
            data += chunk
        return data


def _frames_in(data: bytes) -> Iterator[tuple[int, bytes]]:
    offset = 0
    while offset < len(data):
        flag, length = _HEADER.unpack_from(data, offset)
        start = offset + _HEADER.size
        yield flag, data[start : start + length]
        offset = start + length


def _add(reply: GrpcWebReply, flag: int, payload: bytes) -> None:
    if flag & TRAILERS_FLAG:
        reply.trailers.update(parse_trailers(payload))
    else:
        reply.messages.append(payload)


def _decode_text(data: bytes) -> bytes:
    # Each chunk the server flushed is base64 on its own, padding included.
    out, rest = b"", data.strip()
    while rest:
        end = rest.find(b"=")
        if end == -1:
            return out + base64.b64decode(rest)
        while end < len(rest) and rest[end : end + 1] == b"=":
            end += 1
        out, rest = out + base64.b64decode(rest[:end]), rest[end:]
    return out


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}
