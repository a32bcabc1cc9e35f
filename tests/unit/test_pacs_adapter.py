"""The DICOMweb adapter's own rules, against a small real HTTP server on loopback.

The server plays a PACS (QIDO-RS answers) and a Keycloak token endpoint, so credentials,
token refresh, status mapping and the breaker are exercised through requests and
dicomweb-client exactly as in production. Orthanc itself is in
tests/integration/test_pacs_link.py.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from pacs.client.tokens import ClientCredentials, TokenError

from pacs_devstack.ports import free_port
from pacs_grpc.adapters.pacs.dicomweb import (
    DicomWebPacs,
    PacsProbe,
    PacsUnreachableError,
    TtlCache,
    source_series_from,
)
from pacs_grpc.adapters.storage.breaker import BreakerState, CircuitBreaker
from pacs_grpc.config import ConfigError, PacsSettings, Settings
from pacs_grpc.domain.errors import Unavailable

STUDY = "1.2.826.0.1.3680043.8.498.4242"
SECRET = "client-secret-value-42"


@dataclass
class FakeDicomWeb:
    """What the loopback server answers, and what it saw."""

    studies: set[str] = field(default_factory=set)
    status: int = 200
    require: str | None = None  # the Authorization header it accepts
    token_lifetime: int = 300
    tokens_issued: int = 0
    refuse_token: str | None = None  # a token it answers 401 to (revoked)
    seen: list[tuple[str, str | None]] = field(default_factory=list)


def _handler(state: FakeDicomWeb) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            form = parse_qs(self.rfile.read(length).decode())
            if form.get("client_secret") != [SECRET]:
                self._reply(401, {"error": "unauthorized_client"})
                return
            state.tokens_issued += 1
            token = f"token-{state.tokens_issued}"
            self._reply(200, {"access_token": token, "expires_in": state.token_lifetime})

        def do_GET(self) -> None:
            authorization = self.headers.get("Authorization")
            state.seen.append((self.path, authorization))
            if state.refuse_token and authorization == f"Bearer {state.refuse_token}":
                self._reply(401, {})
                return
            if state.require is not None and authorization != state.require:
                self._reply(401, {})
                return
            if state.status != 200:
                self._reply(state.status, {})
                return
            wanted = parse_qs(urlsplit(self.path).query).get("StudyInstanceUID", [""])[0]
            found = (
                [{"0020000D": {"vr": "UI", "Value": [wanted]}}] if wanted in state.studies else []
            )
            self._reply(200, found, content_type="application/dicom+json")

        def _reply(self, status: int, body: Any, content_type: str = "application/json") -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def fake() -> Iterator[tuple[FakeDicomWeb, str]]:
    state = FakeDicomWeb()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _pacs(url: str, **overrides: Any) -> DicomWebPacs:
    settings = PacsSettings(dicomweb_url=f"{url}/dicom-web", validate="enforce", **overrides)
    return DicomWebPacs(settings)


async def test_existence_is_asked_once_then_remembered_but_absence_is_not(
    fake: tuple[FakeDicomWeb, str],
) -> None:
    state, url = fake
    state.studies.add(STUDY)
    pacs = _pacs(url)
    try:
        assert await pacs.study_exists(STUDY)
        assert await pacs.study_exists(STUDY)
        assert len(state.seen) == 1
        assert not await pacs.study_exists(STUDY + ".1")
        assert not await pacs.study_exists(STUDY + ".1")
        assert len(state.seen) == 3
    finally:
        pacs.close()


async def test_basic_auth_is_sent(fake: tuple[FakeDicomWeb, str]) -> None:
    state, url = fake
    state.studies.add(STUDY)
    state.require = "Basic " + base64.b64encode(b"pacs-user:pacs-password").decode()
    pacs = _pacs(url, username="pacs-user", password="pacs-password")
    try:
        assert await pacs.study_exists(STUDY)
    finally:
        pacs.close()
    wrong = _pacs(url, username="pacs-user", password="wrong")
    try:
        with pytest.raises(Unavailable):
            await wrong.study_exists(STUDY)
    finally:
        wrong.close()


async def test_client_credentials_refresh_and_a_refused_token_is_replaced_once(
    fake: tuple[FakeDicomWeb, str],
) -> None:
    state, url = fake
    state.studies.add(STUDY)
    pacs = _pacs(url, token_url=f"{url}/token", client_id="pacs-server", client_secret=SECRET)
    try:
        assert await pacs.study_exists(STUDY)
        assert state.seen[-1][1] == "Bearer token-1"
        # The PACS stops accepting token-1 (revoked): one new token, one retry, no error.
        state.refuse_token = "token-1"
        assert await pacs.study_exists(STUDY + ".2") is False
        assert [auth for _, auth in state.seen[-2:]] == ["Bearer token-1", "Bearer token-2"]
        assert state.tokens_issued == 2
    finally:
        pacs.close()


def test_tokens_are_refreshed_ahead_of_expiry_and_kept_while_refresh_fails(
    fake: tuple[FakeDicomWeb, str],
) -> None:
    state, url = fake
    state.token_lifetime = 100
    now = [1000.0]
    tokens = ClientCredentials(
        f"{url}/token", "pacs-server", SECRET, refresh_margin=30, clock=lambda: now[0]
    )
    assert tokens.token() == "token-1"
    now[0] += 60
    assert tokens.token() == "token-1"
    now[0] += 11  # 71 s: inside the 30 s margin
    assert tokens.token() == "token-2"
    tokens._secret = "wrong"  # the realm rotated the secret under us
    now[0] += 71
    assert tokens.token() == "token-2"  # still valid: kept
    now[0] += 30  # expired
    with pytest.raises(TokenError) as failed:
        tokens.token()
    assert SECRET not in str(failed.value)
    assert "wrong" not in str(failed.value)
    assert "HTTP 401" in str(failed.value)


async def test_server_errors_are_unavailable_without_uids_and_open_the_breaker(
    fake: tuple[FakeDicomWeb, str], caplog: pytest.LogCaptureFixture
) -> None:
    state, url = fake
    state.status = 503
    pacs = _pacs(url, breaker_failures=2, breaker_open_seconds=30)
    try:
        with caplog.at_level(logging.DEBUG):
            for _ in range(2):
                with pytest.raises(Unavailable) as failed:
                    await pacs.study_exists(STUDY)
                assert STUDY not in str(failed.value)
                assert failed.value.__context__ is None
                assert failed.value.__cause__ is None
            assert pacs.breaker.state is BreakerState.OPEN
            seen = len(state.seen)
            with pytest.raises(Unavailable, match="the PACS is unavailable; retry in"):
                await pacs.study_exists(STUDY)
            assert len(state.seen) == seen  # failed fast: not asked
        logged = "\n".join(f"{r.getMessage()} {vars(r)}" for r in caplog.records)
        assert STUDY not in logged
        assert "PACS request failed" in logged
    finally:
        pacs.close()


async def test_a_4xx_answer_is_a_refusal_without_uids_that_leaves_the_breaker_closed(
    fake: tuple[FakeDicomWeb, str],
) -> None:
    state, url = fake
    state.status = 400
    pacs = _pacs(url, breaker_failures=1)
    try:
        with pytest.raises(Unavailable) as failed:
            await pacs.study_exists(STUDY)
        assert failed.value.message == "refused by the PACS (HTTP 400)"
        assert pacs.breaker.state is BreakerState.CLOSED
    finally:
        pacs.close()


async def test_a_half_open_trial_cancelled_while_queued_does_not_refuse_every_later_call() -> None:
    now = [0.0]
    breaker = CircuitBreaker(failure_threshold=1, open_seconds=5, clock=lambda: now[0])
    # No server needed: the trial's request never starts.
    pacs = DicomWebPacs(
        PacsSettings(
            dicomweb_url=f"http://127.0.0.1:{free_port()}/dicom-web",
            validate="enforce",
            max_concurrency=1,
        ),
        breaker=breaker,
    )
    gate = threading.Event()
    try:
        busy = pacs._executor.submit(gate.wait)  # the only worker is taken
        breaker.record_failure()
        now[0] += 5
        trial = asyncio.create_task(pacs.study_exists(STUDY))
        await asyncio.sleep(0.01)
        trial.cancel()
        with pytest.raises(asyncio.CancelledError):
            await trial
        gate.set()
        busy.result()
        assert breaker.before_call()  # the next call is the trial, not refused
    finally:
        gate.set()
        pacs.close()


async def test_a_closed_port_is_unavailable_and_the_probe_reports_it() -> None:
    pacs = _pacs(f"http://127.0.0.1:{free_port()}", breaker_failures=1)
    try:
        with pytest.raises(Unavailable):
            await pacs.study_exists(STUDY)
        assert pacs.breaker.state is BreakerState.OPEN
        probe = PacsProbe(pacs, 1.0, interval_seconds=10)
        with pytest.raises(PacsUnreachableError):
            await probe.check()
    finally:
        pacs.close()


async def test_the_probe_asks_the_pacs_at_most_once_per_interval(
    fake: tuple[FakeDicomWeb, str],
) -> None:
    state, url = fake
    now = [0.0]
    pacs = _pacs(url)
    probe = PacsProbe(pacs, 1.0, interval_seconds=10, clock=lambda: now[0])
    try:
        await probe.check()
        await probe.check()
        assert len(state.seen) == 1
        state.status = 500
        now[0] += 10
        with pytest.raises(PacsUnreachableError, match="HTTP 500"):
            await probe.check()
        with pytest.raises(PacsUnreachableError):
            await probe.check()  # the remembered answer, not a second request
        assert len(state.seen) == 2
    finally:
        pacs.close()


def test_the_cache_expires_entries_and_evicts_the_least_recently_used() -> None:
    now = [0.0]
    cache: TtlCache[str, bool] = TtlCache(2, 10, clock=lambda: now[0])
    cache.put("a", True)
    cache.put("b", True)
    assert cache.get("a")
    cache.put("c", True)  # evicts b, the least recently used
    assert cache.get("b") is None
    assert cache.get("a")
    assert cache.get("c")
    now[0] += 10
    assert cache.get("a") is None
    assert len(cache) == 1


def test_series_metadata_becomes_source_instances() -> None:
    def instance(uid: str, z: Any, number: Any, rows: int | None = 512) -> dict[str, Any]:
        item: dict[str, Any] = {
            "00080016": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.2"]},
            "00080018": {"vr": "UI", "Value": [uid]},
            "00080060": {"vr": "CS", "Value": ["CT"]},
            "00200052": {"vr": "UI", "Value": ["1.2.9"]},
            "00200013": {"vr": "IS", "Value": [number]},
            "00200032": {"vr": "DS", "Value": [0, "0.5", z]},
            "00200037": {"vr": "DS", "Value": [1, 0, 0, 0, 1, 0]},
            "00280011": {"vr": "US", "Value": [256]},
        }
        if rows is not None:
            item["00280010"] = {"vr": "US", "Value": [rows]}
        return item

    series = source_series_from(
        "1.2.1",
        "1.2.2",
        [instance("1.2.3", 5, "7"), instance("1.2.4", "2.5", 8), instance("1.2.5", 0, 9, None)],
    )
    assert series.frame_of_reference_uid == "1.2.9"
    assert series.modality == "CT"
    # The instance without Rows is no image a slice can be drawn on.
    assert [i.sop_instance_uid for i in series.instances] == ["1.2.3", "1.2.4"]
    first = series.instances[0]
    assert (first.rows, first.columns, first.instance_number) == (512, 256, 7)
    assert first.position == (0.0, 0.5, 5.0)
    assert first.orientation == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    assert series.instances[1].position == (0.0, 0.5, 2.5)


BASE = {
    "DATABASE_URL": "postgresql://app:pw@db:5432/pacs",
    "S3_ENDPOINT": "https://minio:9000",
    "S3_ACCESS_KEY": "a",
    "S3_SECRET_KEY": "s",
    "OIDC_ISSUER": "https://sso/realms/pacs",
    "OIDC_AUDIENCE": "pacs-api",
    "OIDC_JWKS_URL": "https://sso/realms/pacs/protocol/openid-connect/certs",
}


def test_pacs_settings_default_to_enforce_only_with_a_url() -> None:
    assert Settings.from_env(BASE).pacs.validate == "off"
    assert not Settings.from_env(BASE).pacs.configured
    linked = Settings.from_env({**BASE, "PACS_DICOMWEB_URL": "https://pacs.internal/dicom-web/"})
    assert linked.pacs.validate == "enforce"
    assert linked.pacs.dicomweb_url == "https://pacs.internal/dicom-web"
    assert linked.pacs.auth == "none"
    warn = Settings.from_env(
        {**BASE, "PACS_DICOMWEB_URL": "https://pacs/dicom-web", "PACS_VALIDATE": "warn"}
    )
    assert warn.pacs.validate == "warn"
    keycloak = Settings.from_env(
        {
            **BASE,
            "PACS_DICOMWEB_URL": "https://pacs/dicom-web",
            "PACS_TOKEN_URL": "https://sso/realms/pacs/protocol/openid-connect/token",
            "PACS_CLIENT_ID": "pacs-server",
            "PACS_CLIENT_SECRET": SECRET,
        }
    )
    assert keycloak.pacs.auth == "client_credentials"
    assert SECRET not in repr(keycloak)


@pytest.mark.parametrize(
    ("override", "variable"),
    [
        ({"PACS_VALIDATE": "enforce"}, "PACS_VALIDATE"),
        ({"PACS_DICOMWEB_URL": "pacs:8042"}, "PACS_DICOMWEB_URL"),
        ({"PACS_DICOMWEB_URL": "https://pacs/dicom-web?x=1"}, "PACS_DICOMWEB_URL"),
        ({"PACS_DICOMWEB_URL": "https://pacs/d", "PACS_VALIDATE": "strict"}, "PACS_VALIDATE"),
        ({"PACS_DICOMWEB_URL": "https://pacs/d", "PACS_USERNAME": "u"}, "PACS_PASSWORD"),
        (
            {
                "PACS_DICOMWEB_URL": "http://pacs.internal/d",
                "PACS_USERNAME": "u",
                "PACS_PASSWORD": "p",
            },
            "PACS_DICOMWEB_URL",
        ),
        ({"PACS_DICOMWEB_URL": "https://pacs/d", "PACS_TOKEN_URL": "https://sso/t"}, "PACS_CLIENT"),
        ({"PACS_DICOMWEB_URL": "https://pacs/d", "PACS_TIMEOUT_SECONDS": "0"}, "PACS_TIMEOUT"),
    ],
)
def test_pacs_settings_refuse_what_cannot_work(override: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({**BASE, **override})
    assert variable in str(refused.value)
