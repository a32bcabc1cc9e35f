"""The sidecar's configuration as rendered from deploy/envoy/envoy.yaml."""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Any

import pytest
import yaml
from pacs.v1 import annotation_pb2, identity_pb2, mask_pb2, options_pb2

from pacs_grpc.config import ConfigError
from pacs_grpc.edge.contract_routes import (
    DEADLINE_MARGIN_SECONDS,
    UPSTREAM_CLUSTER,
    ContractMethod,
    contract_methods,
    method_routes,
)
from pacs_grpc.edge.envoy_config import EnvoyAssets, EnvoySettings, render_envoy_config

TEMPLATE = EnvoyAssets.shipped().template.read_text()

HCM = "envoy.filters.network.http_connection_manager"


def _render(settings: EnvoySettings | None = None) -> dict[str, Any]:
    text = render_envoy_config(TEMPLATE, settings or EnvoySettings())
    assert "${" not in text
    config: dict[str, Any] = yaml.safe_load(text)
    return config


def _manager(config: dict[str, Any]) -> dict[str, Any]:
    (listener,) = config["static_resources"]["listeners"]
    (chain,) = listener["filter_chains"]
    (hcm,) = [f for f in chain["filters"] if f["name"] == HCM]
    manager: dict[str, Any] = hcm["typed_config"]
    return manager


def _filter(config: dict[str, Any], suffix: str) -> dict[str, Any]:
    (found,) = [f for f in _manager(config)["http_filters"] if f["name"].endswith(suffix)]
    typed: dict[str, Any] = found["typed_config"]
    return typed


def _routes(config: dict[str, Any]) -> list[dict[str, Any]]:
    (host,) = _manager(config)["route_config"]["virtual_hosts"]
    routes: list[dict[str, Any]] = host["routes"]
    return routes


def test_production_defaults_listen_on_8080_and_call_the_server_on_loopback() -> None:
    config = _render()
    (listener,) = config["static_resources"]["listeners"]
    assert listener["address"]["socket_address"] == {"address": "0.0.0.0", "port_value": 8080}
    assert config["admin"]["address"]["socket_address"] == {
        "address": "127.0.0.1",
        "port_value": 9901,
    }
    (cluster,) = config["static_resources"]["clusters"]
    (endpoints,) = cluster["load_assignment"]["endpoints"]
    (endpoint,) = endpoints["lb_endpoints"]
    assert endpoint["endpoint"]["address"]["socket_address"] == {
        "address": "127.0.0.1",
        "port_value": 50051,
    }
    protocol = cluster["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ]
    assert "http2_protocol_options" in protocol["explicit_http_config"]
    (check,) = cluster["health_checks"]
    assert "grpc_health_check" in check
    assert _manager(config)["codec_type"] == "AUTO"


def test_filters_run_grpc_web_then_cors_then_the_transcoder_then_the_router() -> None:
    names = [
        f["name"].removeprefix("envoy.filters.http.") for f in _manager(_render())["http_filters"]
    ]
    main = [n for n in names if n in ("grpc_web", "cors", "grpc_json_transcoder", "router")]
    assert main == ["grpc_web", "cors", "grpc_json_transcoder", "router"]
    assert names[-1] == "router"
    # Rate limit and body limit apply before a REST call becomes gRPC.
    assert names.index("local_ratelimit") < names.index("grpc_json_transcoder")
    assert names.index("buffer") < names.index("grpc_json_transcoder")


def test_the_transcoder_knows_every_service_and_refuses_what_the_contract_lacks() -> None:
    transcoder = _filter(_render(), "grpc_json_transcoder")
    contract = {
        service.full_name
        for module in (identity_pb2, annotation_pb2, mask_pb2)
        for service in module.DESCRIPTOR.services_by_name.values()
    }
    assert set(transcoder["services"]) == contract
    assert transcoder["proto_descriptor"] == "/etc/envoy/pacs.binpb"
    assert transcoder["print_options"]["preserve_proto_field_names"] is True
    assert transcoder["convert_grpc_status"] is True
    assert transcoder["auto_mapping"] is False
    assert transcoder["request_validation_options"] == {
        "reject_unknown_method": True,
        "reject_unknown_query_parameters": True,
        "reject_binding_body_field_collisions": True,
    }


def test_cors_allows_exactly_the_configured_origins_and_exposes_grpc_status() -> None:
    origins = ("https://viewer.example", "http://localhost:3000")
    config = _render(EnvoySettings(cors_allowed_origins=origins))
    (host,) = _manager(config)["route_config"]["virtual_hosts"]
    policy = host["typed_per_filter_config"]["envoy.filters.http.cors"]
    assert policy["allow_origin_string_match"] == [{"exact": o} for o in origins]
    assert {"grpc-status", "grpc-message"} <= {
        h.strip() for h in policy["expose_headers"].split(",")
    }
    assert policy["forward_not_matching_preflights"] is False
    nobody = _manager(_render())["route_config"]["virtual_hosts"][0]
    assert (
        nobody["typed_per_filter_config"]["envoy.filters.http.cors"]["allow_origin_string_match"]
        == []
    )


def _buckets(limiter: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each descriptor's token bucket by its first entry's key."""
    return {d["entries"][0]["key"]: d["token_bucket"] for d in limiter["descriptors"]}


def test_limits_come_from_the_settings() -> None:
    config = _render(
        EnvoySettings(
            rate_limit_requests=7,
            rate_limit_interval_seconds=5,
            rate_limit_burst=20,
            anonymous_rate_limit_requests=2,
            anonymous_rate_limit_burst=3,
            rate_limit_max_clients=500,
            max_request_bytes=12345,
            request_timeout_seconds=9,
        )
    )
    limiter = _filter(config, "local_ratelimit")
    assert _buckets(limiter) == {
        "token": {"max_tokens": 20, "tokens_per_fill": 7, "fill_interval": "5s"},
        "anonymous": {"max_tokens": 3, "tokens_per_fill": 2, "fill_interval": "5s"},
    }
    # Only a request no descriptor matched would draw from the filter's own bucket.
    assert limiter["token_bucket"] == {"max_tokens": 3, "tokens_per_fill": 2, "fill_interval": "5s"}
    assert limiter["max_dynamic_descriptors"] == 500
    (retry,) = limiter["response_headers_to_add"]
    assert retry["header"] == {"key": "retry-after", "value": "5"}
    assert _filter(config, "buffer")["max_request_bytes"] == 12345
    assert _routes(config)[-1]["route"]["timeout"] == "9s"


def test_each_caller_draws_from_a_bucket_of_its_own() -> None:
    limiter = _filter(_render(), "local_ratelimit")
    by_token, anonymous = limiter["rate_limits"]
    # The key the key filter read from the token, when there is one...
    (token,) = by_token["actions"]
    assert token["metadata"]["descriptor_key"] == "token"
    assert token["metadata"]["metadata_key"] == {
        "key": "pacs.rate_limit",
        "path": [{"key": "token"}],
    }
    assert token["metadata"]["skip_if_absent"] is True
    # ...else the client's address, in a bucket kind of its own.
    marker, address = anonymous["actions"]
    assert marker["metadata"]["metadata_key"]["path"] == [{"key": "anonymous"}]
    assert marker["metadata"]["skip_if_absent"] is True
    assert address == {"remote_address": {}}
    entries = {d["entries"][0]["key"]: d["entries"] for d in limiter["descriptors"]}
    # Empty values are wildcards: one bucket per token, and per address.
    assert entries["token"] == [{"key": "token", "value": ""}]
    assert entries["anonymous"] == [
        {"key": "anonymous", "value": "true"},
        {"key": "remote_address", "value": ""},
    ]
    # A shared bucket drawn from as well would let one caller get everyone a 429.
    assert limiter["always_consume_default_token_bucket"] is False
    assert limiter["max_dynamic_descriptors"] == EnvoySettings().rate_limit_max_clients
    defaults = EnvoySettings()
    assert defaults.anonymous_rate_limit_burst < defaults.rate_limit_burst


def test_the_bucket_key_is_chosen_before_the_rate_limit_from_subject_and_signature() -> None:
    names = [f["name"] for f in _manager(_render())["http_filters"]]
    assert names.index("pacs.rate_limit_key") + 1 == names.index(
        "envoy.filters.http.local_ratelimit"
    )
    script = _filter(_render(), "pacs.rate_limit_key")["default_source_code"]["inline_string"]
    assert 'metadata:set("pacs.rate_limit", "token", key)' in script
    assert 'metadata:set("pacs.rate_limit", "anonymous", "true")' in script
    assert 'return sub .. " " .. signature' in script
    # string.Template's $$ became the Lua pattern's end anchor.
    assert '%.([%w_-]+)$")' in script
    assert "#authorization > 16391" in script


def test_the_client_address_is_the_peers_never_a_header_the_client_wrote() -> None:
    manager = _manager(_render())
    assert manager["use_remote_address"] is True
    assert manager["xff_num_trusted_hops"] == 0
    # No caller is internal: none may send Envoy's own x-envoy-* request headers.
    assert manager["internal_address_config"] == {"cidr_ranges": []}
    assert manager["preserve_external_request_id"] is True
    behind_a_proxy = _manager(_render(EnvoySettings(xff_trusted_hops=1)))
    assert behind_a_proxy["xff_num_trusted_hops"] == 1


def test_openapi_is_a_direct_response_from_the_file_beside_the_config() -> None:
    config = _render(EnvoySettings(config_dir=PurePosixPath("/srv/edge")))
    (route,) = [r for r in _routes(config) if r["match"].get("path") == "/api/openapi.json"]
    assert route["direct_response"]["body"] == {"filename": "/srv/edge/openapi.json"}
    limit = _manager(config)["route_config"]["max_direct_response_body_size_bytes"]
    assert limit >= 1024 * 1024
    assert _filter(config, "grpc_json_transcoder")["proto_descriptor"] == "/srv/edge/pacs.binpb"


def test_access_logs_never_carry_a_query_string_or_request_headers() -> None:
    (log,) = _manager(_render())["access_log"]
    fields = log["typed_config"]["log_format"]["json_format"]
    for name, value in fields.items():
        assert ":PATH)" not in value or "REQ_WITHOUT_QUERY" in value, name
        assert "AUTHORIZATION" not in value.upper(), name


def _methods_in_the_descriptors() -> list[ContractMethod]:
    return [
        ContractMethod(
            path=f"/{service.full_name}/{method.name}",
            client_streaming=method.client_streaming,
            server_streaming=method.server_streaming,
            default_timeout_seconds=method.GetOptions()
            .Extensions[options_pb2.rpc]
            .default_timeout_seconds,
        )
        for module in (identity_pb2, annotation_pb2, mask_pb2)
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    ]


METHODS = _methods_in_the_descriptors()
STREAMS = [m for m in METHODS if m.streaming]
LONG_CALLS = [m for m in METHODS if not m.streaming and m.default_timeout_seconds]


def _route_for(config: dict[str, Any], path: str) -> dict[str, Any]:
    """The route Envoy picks for a gRPC path: the first that matches (REST calls are
    transcoded to that path before the router picks)."""
    for route in _routes(config):
        match = route["match"]
        if match.get("path") == path or ("prefix" in match and path.startswith(match["prefix"])):
            return route
    raise AssertionError(f"no route matches {path}")


def test_the_contract_has_streams_and_long_calls_to_route() -> None:
    assert contract_methods() == tuple(METHODS)
    assert any(m.server_streaming for m in STREAMS)
    assert any(m.client_streaming for m in STREAMS)
    assert LONG_CALLS
    assert all(
        m.default_timeout_seconds > EnvoySettings().request_timeout_seconds for m in LONG_CALLS
    )


@pytest.mark.parametrize("method", STREAMS, ids=lambda m: m.path)
def test_every_stream_has_no_overall_timeout(method: ContractMethod) -> None:
    route = _route_for(_render(), method.path)
    assert route["match"] == {"path": method.path}
    assert route["route"]["cluster"] == UPSTREAM_CLUSTER
    assert route["route"]["timeout"] == "0s"
    # The client's grpc-timeout, if any, applies uncapped.
    assert route["route"]["max_stream_duration"] == {"grpc_timeout_header_max": "0s"}
    filters = route.get("typed_per_filter_config", {})
    # A client stream is not buffered whole (each message is bounded by the server)...
    buffered = not filters.get("envoy.filters.http.buffer", {}).get("disabled", False)
    assert buffered is not method.client_streaming
    # ...and a server stream may stay quiet for long while nothing changes.
    if method.server_streaming:
        assert route["route"]["idle_timeout"] == "3600s"


@pytest.mark.parametrize("method", LONG_CALLS, ids=lambda m: m.path)
def test_every_long_call_gets_its_contract_deadline_and_a_margin(method: ContractMethod) -> None:
    route = _route_for(_render(), method.path)
    seconds = method.default_timeout_seconds + DEADLINE_MARGIN_SECONDS
    assert route["match"] == {"path": method.path}
    assert route["route"] == {
        "cluster": UPSTREAM_CLUSTER,
        "timeout": f"{seconds}s",
        # Longer than the stream idle timeout's 5 minutes, which would cut it first.
        "idle_timeout": f"{seconds}s",
    }


def test_other_calls_get_the_request_timeout_and_long_ones_never_less() -> None:
    config = _render(EnvoySettings(request_timeout_seconds=9))
    ordinary = [m for m in METHODS if not m.streaming and m not in LONG_CALLS]
    assert ordinary
    for method in ordinary:
        assert _route_for(config, method.path)["route"]["timeout"] == "9s", method.path
    # A request timeout above a contract deadline covers the call without a route of its own.
    generous = _render(EnvoySettings(request_timeout_seconds=3600))
    for method in LONG_CALLS:
        assert _route_for(generous, method.path)["match"] == {"prefix": "/"}
    # A request timeout equal to a contract deadline would race the server: Envoy waits longer.
    longest = max(m.default_timeout_seconds for m in LONG_CALLS)
    near = _render(EnvoySettings(request_timeout_seconds=longest))
    for method in (m for m in LONG_CALLS if m.default_timeout_seconds == longest):
        timeout = _route_for(near, method.path)["route"]["timeout"]
        assert timeout == f"{longest + DEADLINE_MARGIN_SECONDS}s"


def test_method_routes_come_before_the_catch_all_and_reach_the_server() -> None:
    config = _render()
    routes = _routes(config)
    assert routes[-1]["match"] == {"prefix": "/"}
    assert [r["name"] for r in routes if "name" in r] == [
        m.path for m in METHODS if m in STREAMS or m in LONG_CALLS
    ]
    (cluster,) = config["static_resources"]["clusters"]
    assert {r["route"]["cluster"] for r in routes if "route" in r} == {cluster["name"]}


def test_the_rules_hold_for_any_method_shape() -> None:
    both = ContractMethod(
        "/x.S/Chat", client_streaming=True, server_streaming=True, default_timeout_seconds=0
    )
    quick = ContractMethod("/x.S/Quick", False, False, default_timeout_seconds=30)
    slow = ContractMethod("/x.S/Slow", False, False, default_timeout_seconds=60)
    chat, slow_route = method_routes([both, quick, slow], request_timeout_seconds=60)
    assert chat["route"]["idle_timeout"] == "3600s"
    assert chat["typed_per_filter_config"]["envoy.filters.http.buffer"]["disabled"] is True
    assert slow_route["route"]["timeout"] == f"{60 + DEADLINE_MARGIN_SECONDS}s"


def test_no_method_is_named_in_the_template() -> None:
    names = {m.path.rsplit("/", 1)[1] for m in METHODS}
    assert not {name for name in names if re.search(rf"\b{name}\b", TEMPLATE)}
    assert "pacs.v1." not in TEMPLATE


def test_settings_from_the_environment() -> None:
    settings = EnvoySettings.from_env(
        {
            "ENVOY_LISTEN_PORT": "9090",
            "GRPC_PORT": "6000",
            "CORS_ALLOWED_ORIGINS": " https://A.example , http://b.example:8080,",
            "ENVOY_RATE_LIMIT_REQUESTS": "50",
            "ENVOY_RATE_LIMIT_BURST": "75",
            "ENVOY_ANONYMOUS_RATE_LIMIT_REQUESTS": "3",
            "ENVOY_ANONYMOUS_RATE_LIMIT_BURST": "4",
            "ENVOY_RATE_LIMIT_MAX_CLIENTS": "99",
            "ENVOY_XFF_TRUSTED_HOPS": "2",
            "ENVOY_CONFIG_DIR": "/config",
        }
    )
    assert (settings.anonymous_rate_limit_requests, settings.anonymous_rate_limit_burst) == (3, 4)
    assert (settings.rate_limit_max_clients, settings.xff_trusted_hops) == (99, 2)
    assert (settings.listen_port, settings.upstream_port) == (9090, 6000)
    assert settings.cors_allowed_origins == ("https://a.example", "http://b.example:8080")
    assert (settings.rate_limit_requests, settings.rate_limit_burst) == (50, 75)
    assert settings.descriptor_path == PurePosixPath("/config/pacs.binpb")
    assert EnvoySettings.from_env({}) == EnvoySettings()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"ENVOY_LISTEN_PORT": "http"}, "ENVOY_LISTEN_PORT must be an integer, got 'http'"),
        ({"ENVOY_LISTEN_PORT": "70000"}, "ENVOY_LISTEN_PORT must be between 1 and 65535, got"),
        ({"GRPC_PORT": "-1"}, "GRPC_PORT must be between 1 and 65535, got -1"),
        ({"ENVOY_UPSTREAM_ADDRESS": "server.local"}, "ENVOY_UPSTREAM_ADDRESS must be an IP"),
        ({"ENVOY_RATE_LIMIT_BURST": "0"}, "ENVOY_RATE_LIMIT_BURST must be at least 1, got 0"),
        ({"ENVOY_ANONYMOUS_RATE_LIMIT_BURST": "0"}, "ENVOY_ANONYMOUS_RATE_LIMIT_BURST must be"),
        ({"ENVOY_RATE_LIMIT_MAX_CLIENTS": "0"}, "ENVOY_RATE_LIMIT_MAX_CLIENTS must be at least"),
        ({"ENVOY_XFF_TRUSTED_HOPS": "11"}, "ENVOY_XFF_TRUSTED_HOPS must be between 0 and 10"),
        ({"ENVOY_REQUEST_TIMEOUT_SECONDS": "0"}, "ENVOY_REQUEST_TIMEOUT_SECONDS must be at"),
        ({"CORS_ALLOWED_ORIGINS": "https://viewer.example/app"}, "CORS_ALLOWED_ORIGINS has"),
        ({"CORS_ALLOWED_ORIGINS": "*"}, "CORS_ALLOWED_ORIGINS has '*', which is not"),
        ({"ENVOY_CONFIG_DIR": "etc/envoy"}, "ENVOY_CONFIG_DIR must be an absolute path"),
    ],
)
def test_a_bad_variable_is_named_in_the_error_with_what_is_allowed(
    env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as error:
        EnvoySettings.from_env(env)
    assert str(error.value).startswith(message)


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"listen_port": 70000}, "ENVOY_LISTEN_PORT"),
        ({"admin_address": "localhost"}, "ENVOY_ADMIN_ADDRESS"),
        ({"xff_trusted_hops": 11}, "ENVOY_XFF_TRUSTED_HOPS"),
        ({"config_dir": PurePosixPath("etc/envoy")}, "ENVOY_CONFIG_DIR"),
        ({"cors_allowed_origins": ("*",)}, "CORS_ALLOWED_ORIGINS"),
        # Browsers send lower case, and Envoy compares exactly.
        ({"cors_allowed_origins": ("https://A.example",)}, "CORS_ALLOWED_ORIGINS"),
    ],
)
def test_values_given_in_code_obey_the_variables_rules(values: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        EnvoySettings(**values)
