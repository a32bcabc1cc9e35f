"""Calling the REST routes (the google.api.http rules) through Envoy with JSON, via urllib3."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import urllib3
from google.protobuf import descriptor_pb2
from pacs.v1 import annotation_pb2, identity_pb2, mask_pb2

HTTP_METHODS = ("get", "put", "post", "delete", "patch")


def contract_routes() -> set[tuple[str, str]]:
    """(METHOD, path template) of every google.api.http rule in the pacs.v1 contract."""
    from google.api import annotations_pb2

    routes: set[tuple[str, str]] = set()
    for module in (identity_pb2, annotation_pb2, mask_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                options = descriptor_pb2.MethodOptions()
                options.ParseFromString(method.GetOptions().SerializeToString())
                if not options.HasExtension(annotations_pb2.http):
                    continue
                rule = options.Extensions[annotations_pb2.http]
                kind = rule.WhichOneof("pattern")
                assert kind in HTTP_METHODS, f"{method.full_name}: unexpected rule {kind}"
                routes.add((kind.upper(), getattr(rule, kind)))
    return routes


@dataclass
class RestReply:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        assert self.headers.get("content-type", "").startswith("application/json"), (
            f"HTTP {self.status} is not JSON: {self.headers.get('content-type')!r} {self.body!r}"
        )
        return json.loads(self.body)


@dataclass
class RestClient:
    """Calls routes by template, e.g. ("GET", "/api/projects/{project_id}"), and records
    which templates were called so a test can show it covered the contract."""

    base_url: str
    http: urllib3.PoolManager
    called: set[tuple[str, str]] = field(default_factory=set)

    def call(
        self,
        method: str,
        template: str,
        *,
        token: str | None = None,
        body: Any = None,
        query: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        **path: object,
    ) -> RestReply:
        self.called.add((method, template))
        url = self.base_url + template.format(**path)
        if query:
            url += "?" + urlencode(query)
        sent = dict(headers or {})
        if token is not None:
            sent["authorization"] = f"Bearer {token}"
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            sent.setdefault("content-type", "application/json")
        response = self.http.request(method, url, body=data, headers=sent)
        return RestReply(
            response.status, {k.lower(): v for k, v in response.headers.items()}, response.data
        )

    def ok(self, method: str, template: str, **kwargs: Any) -> Any:
        """The JSON of a call that must succeed."""
        reply = self.call(method, template, **kwargs)
        assert reply.status == 200, f"{method} {template}: HTTP {reply.status} {reply.body!r}"
        return reply.json()
