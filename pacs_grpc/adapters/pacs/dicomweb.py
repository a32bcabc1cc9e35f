"""The hospital's PACS over DICOMweb (QIDO-RS, WADO-RS metadata, STOW-RS), with dicomweb-client.

dicomweb-client is synchronous (requests), so every call runs in this adapter's own bounded
pool of worker threads: a slow PACS can hold at most `max_concurrency` threads, never the
event loop nor the threads storage uses. Every request is bounded by PACS_TIMEOUT_SECONDS, and
a circuit breaker makes calls fail at once while the PACS is known to be down.

What the PACS said, mapped for the use cases (pacs_grpc.services.ports.Pacs):
* 2xx: the answer; an empty QIDO answer or a 404 is "not there" (False / None);
* connection errors, timeouts, 5xx, 429, 401/403 (our credentials) and unreadable answers:
  Unavailable, which counts towards opening the breaker.

Positive existence answers are remembered (a bounded, expiring cache): the PACS does not
forget studies, and creating annotations must stay fast. "Not there" is never remembered:
a study may be arriving in the PACS while a viewer already annotates it.

UIDs are client-chosen and identify patients' examinations, so they go only into requests to
the PACS: never into logs, metric labels or error texts. dicomweb-client logs the URLs it
asks for, and requests' errors carry them, so this module silences the one and replaces the
other.
"""

from __future__ import annotations

import asyncio
import email.message
import io
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, TypeVar

import pydicom
import requests
from dicomweb_client import DICOMwebClient
from pacs.client.tokens import ClientCredentials, TokenError
from requests.adapters import HTTPAdapter

from pacs_grpc.adapters.pacs.tokens import (
    BearerAuth,
)
from pacs_grpc.adapters.storage.breaker import BreakerState, CircuitBreaker, run_admitted
from pacs_grpc.config import PacsSettings
from pacs_grpc.domain.errors import ResourceExhausted, Unavailable
from pacs_grpc.domain.pacs import SourceInstance, SourceSeries

_log = logging.getLogger(__name__)
_UNAVAILABLE = "the PACS is unavailable; retry later"
# Series whose instance lists are remembered (each up to a few thousand small records).
_SERIES_CACHE_SIZE = 64
# Connecting takes a PACS on the same network well under a second; a dead host should not
# hold a worker for the whole read timeout.
_CONNECT_TIMEOUT_MAX = 3.0

# Outcomes a request is counted under (pacs_grpc.api.metrics): a fixed set.
OK, NOT_FOUND, FAILED, REFUSED = "ok", "not_found", "error", "refused"

_K = TypeVar("_K", bound=Hashable)
_V = TypeVar("_V")
_T = TypeVar("_T")


class TtlCache(Generic[_K, _V]):
    """At most `size` entries, each for `seconds`; the least recently used goes first.

    Used from the event loop only (answers are stored after the worker returns), so it needs
    no lock.
    """

    def __init__(
        self, size: int, seconds: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._size = size
        self._seconds = seconds
        self._clock = clock
        self._entries: OrderedDict[_K, tuple[float, _V]] = OrderedDict()

    def get(self, key: _K) -> _V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires_at, value = entry
        if self._clock() >= expires_at:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return value

    def put(self, key: _K, value: _V) -> None:
        if self._size <= 0:
            return
        self._entries[key] = (self._clock() + self._seconds, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


class _NotFound:
    """What a worker returns for a 404: the PACS does not have it."""


_NOT_FOUND = _NotFound()


def create_session(
    settings: PacsSettings,
) -> tuple[requests.Session, ClientCredentials | None]:
    """A session with the PACS's credentials and a connection pool as large as the worker pool."""
    session = requests.Session()
    adapter = HTTPAdapter(
        pool_connections=1, pool_maxsize=settings.max_concurrency + 1, max_retries=0
    )
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    # Proxies and .netrc from the environment are for people's shells, not for this link.
    session.trust_env = False
    tokens = None
    if settings.auth == "basic":
        session.auth = (settings.username, settings.password)
    elif settings.auth == "client_credentials":
        tokens = ClientCredentials(
            settings.token_url,
            settings.client_id,
            settings.client_secret,
            scope=settings.token_scope or None,
            timeout=settings.timeout_seconds,
        )
        session.auth = BearerAuth(tokens)
    return session, tokens


def quiet_library_logs() -> None:
    """dicomweb-client logs request URLs and UIDs at INFO and DEBUG, and urllib3 logs request
    lines at DEBUG: neither may reach our logs, whatever LOG_LEVEL says."""
    logging.getLogger("dicomweb_client").setLevel(logging.CRITICAL + 1)
    logging.getLogger("urllib3.connectionpool").setLevel(logging.INFO)


class DicomWebPacs:
    """Implements pacs_grpc.services.ports.Pacs."""

    def __init__(
        self,
        settings: PacsSettings,
        *,
        breaker: CircuitBreaker | None = None,
        on_request: Callable[[str, str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        quiet_library_logs()
        self._session, self._tokens = create_session(settings)
        timeout = (min(settings.timeout_seconds, _CONNECT_TIMEOUT_MAX), settings.timeout_seconds)
        self._timeout = timeout
        self._client = DICOMwebClient(settings.dicomweb_url, session=self._session, timeout=timeout)
        # The breaker decides when to try again; the library's own retries (up to five, with
        # exponential back-off) would outlast every caller's deadline.
        self._client.set_http_retry_params(retry=False)
        self.breaker = breaker or CircuitBreaker(
            failure_threshold=settings.breaker_failures,
            open_seconds=settings.breaker_open_seconds,
            dependency="the PACS",
        )
        self._on_request = on_request or (lambda operation, outcome: None)
        self._executor = ThreadPoolExecutor(
            max_workers=settings.max_concurrency, thread_name_prefix="pacs"
        )
        self._known: TtlCache[tuple[str, ...], bool] = TtlCache(
            settings.cache_size, settings.cache_seconds, clock=clock
        )
        self._series: TtlCache[tuple[str, str], SourceSeries] = TtlCache(
            min(settings.cache_size, _SERIES_CACHE_SIZE), settings.cache_seconds, clock=clock
        )
        self.settings = settings
        self._closed = False

    # -- the port ---------------------------------------------------------------------------

    async def study_exists(self, study_uid: str) -> bool:
        key = (study_uid,)
        if self._known.get(key):
            return True
        found = await self._search(
            lambda: self._client.search_for_studies(
                search_filters={"StudyInstanceUID": study_uid}, limit=1
            )
        )
        if found:
            self._known.put(key, True)
        return found

    async def series_exists(self, study_uid: str, series_uid: str) -> bool:
        key = (study_uid, series_uid)
        if self._known.get(key):
            return True
        found = await self._search(
            lambda: self._client.search_for_series(
                study_uid, search_filters={"SeriesInstanceUID": series_uid}, limit=1
            )
        )
        if found:
            # A series found within the study proves the study too.
            self._known.put((study_uid,), True)
            self._known.put(key, True)
        return found

    async def instance_exists(self, study_uid: str, series_uid: str, sop_uid: str) -> bool:
        key = (study_uid, series_uid, sop_uid)
        if self._known.get(key):
            return True
        found = await self._search(
            lambda: self._client.search_for_instances(
                study_uid, series_uid, search_filters={"SOPInstanceUID": sop_uid}, limit=1
            )
        )
        if found:
            self._known.put((study_uid,), True)
            self._known.put((study_uid, series_uid), True)
            self._known.put(key, True)
        return found

    async def source_series(
        self, study_uid: str, series_uid: str, *, fresh: bool = False
    ) -> SourceSeries | None:
        key = (study_uid, series_uid)
        if not fresh:
            cached = self._series.get(key)
            if cached is not None:
                return cached
        metadata = await self.series_metadata(study_uid, series_uid)
        if not metadata:
            return None
        series = source_series_from(study_uid, series_uid, metadata)
        self._series.put(key, series)
        self._known.put((study_uid,), True)
        self._known.put(key, True)
        return series

    async def series_metadata(self, study_uid: str, series_uid: str) -> list[dict[str, Any]]:
        answer = await self._call(
            "metadata", lambda: self._client.retrieve_series_metadata(study_uid, series_uid)
        )
        return [] if isinstance(answer, _NotFound) else list(answer)

    async def retrieve_instance(
        self, study_uid: str, series_uid: str, sop_uid: str, *, max_bytes: int
    ) -> bytes | None:
        """WADO-RS of one instance as its Part-10 file; None when the PACS has no such instance.

        The body is read in chunks and abandoned past `max_bytes` (ResourceExhausted): a
        client names the instance, so its size must not decide how much memory a call takes.
        """
        url = (
            f"{self.settings.dicomweb_url.rstrip('/')}/studies/{study_uid}"
            f"/series/{series_uid}/instances/{sop_uid}"
        )
        answer = await self._call(
            "wado", lambda: _retrieve(self._session, url, self._timeout, max_bytes)
        )
        if isinstance(answer, _NotFound):
            return None
        if isinstance(answer, _TooLarge):
            raise ResourceExhausted(
                f"the PACS's instance is larger than the import limit of {max_bytes} bytes"
            )
        return answer

    async def store(self, parts: list[bytes]) -> list[str]:
        """STOW-RS; the SOP Instance UIDs the PACS refused (FailedSOPSequence)."""
        answer = await self._call("stow", lambda: _store(self._client, parts))
        if isinstance(answer, _NotFound):
            raise Unavailable("the PACS has no STOW-RS service at PACS_DICOMWEB_URL")
        return answer

    # -- health and life cycle --------------------------------------------------------------

    async def ping(self, timeout_seconds: float) -> None:
        """One cheap QIDO-RS query (any study, limit 1), for the health probe."""
        probe = DICOMwebClient(
            self.settings.dicomweb_url,
            session=self._session,
            timeout=(min(timeout_seconds, _CONNECT_TIMEOUT_MAX), timeout_seconds),
        )
        probe.set_http_retry_params(retry=False)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(
            self._executor, lambda: _raising_safely(lambda: probe.search_for_studies(limit=1))
        )

    def close(self) -> None:
        """Stop taking calls; threads still waiting on the PACS end with their timeout."""
        self._closed = True
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._session.close()

    # -- plumbing ---------------------------------------------------------------------------

    async def _search(self, query: Callable[[], list[dict[str, Any]]]) -> bool:
        answer = await self._call("qido", query)
        return not isinstance(answer, _NotFound) and len(answer) > 0

    async def _call(self, operation: str, work: Callable[[], _T]) -> _T | _NotFound:
        if self._closed:
            raise Unavailable(_UNAVAILABLE)
        try:
            trial = self.breaker.before_call()
        except Unavailable:
            self._on_request(operation, REFUSED)
            raise
        return await run_admitted(
            self.breaker, trial, self._executor, lambda: self._guarded(operation, work)
        )

    def _guarded(self, operation: str, work: Callable[[], _T]) -> _T | _NotFound:
        """In the worker thread: run, tell the breaker how the PACS did, map the outcome.

        Unavailable is raised outside the except blocks, so it carries no chained error:
        requests' errors name the URL, UIDs included.
        """
        failure: tuple[str, bool] | None = None
        try:
            answer = work()
        except requests.HTTPError as error:
            status = error.response.status_code if error.response is not None else 0
            if status == 404:
                self.breaker.record_success()
                self._on_request(operation, NOT_FOUND)
                return _NOT_FOUND
            failure = (f"HTTP {status}", _breaks(status))
        except TokenError as error:
            failure = (str(error), True)
        except (requests.RequestException, ValueError) as error:
            # Connection refused or reset, timeouts, and answers that are not JSON or DICOM.
            failure = (type(error).__name__, True)
        except BaseException:
            self.breaker.release()
            raise
        if failure is not None:
            reason, breaks = failure
            if breaks:
                self.breaker.record_failure()
            else:
                self.breaker.release()
            self._on_request(operation, FAILED)
            # A status code, an exception's class name or our own token error text: no URL.
            _log.warning("PACS request failed", extra={"operation": operation, "reason": reason})
            # The PACS answered and said no (a 4xx that says nothing of its health): retrying
            # as if it were away would not help, so the text says so (a status code, no UID).
            raise Unavailable(_UNAVAILABLE if breaks else f"refused by the PACS ({reason})")
        self.breaker.record_success()
        self._on_request(operation, OK)
        return answer


def _breaks(status: int) -> bool:
    """Whether an HTTP status means the PACS cannot serve us (vs. this one request was odd)."""
    return status >= 500 or status in (401, 403, 408, 429) or status == 0


def _raising_safely(work: Callable[[], object]) -> None:
    """For the probe: any failure, as an exception whose text carries no URL."""
    try:
        work()
    except requests.HTTPError as error:
        status = error.response.status_code if error.response is not None else 0
        raise PacsUnreachableError(f"HTTP {status}") from None
    except Exception as error:  # noqa: BLE001 - any failure means "not answering"
        raise PacsUnreachableError(type(error).__name__) from None


class PacsUnreachableError(RuntimeError):
    """The PACS did not answer the probe; the text names a status or an error class only."""


class _TooLarge:
    """What a worker returns for a body past its byte limit."""


# A multipart envelope's boundaries and part headers, on top of the file itself.
_ENVELOPE_BYTES = 64 * 1024
_CHUNK_BYTES = 256 * 1024


def _retrieve(
    session: requests.Session, url: str, timeout: tuple[float, float], max_bytes: int
) -> bytes | _TooLarge:
    """One instance's Part-10 bytes from a WADO-RS instance URL, at most `max_bytes`.

    The standard answer is multipart/related with one application/dicom part; some servers
    send the bare file, which is taken as it is. At most the body and one copy of its first
    part are held at once.
    """
    headers = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
    with session.get(url, headers=headers, stream=True, timeout=timeout) as response:
        response.raise_for_status()
        limit = max_bytes + _ENVELOPE_BYTES
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > limit:
            return _TooLarge()
        body = bytearray()
        for chunk in response.iter_content(_CHUNK_BYTES):
            body += chunk
            if len(body) > limit:
                return _TooLarge()
        content_type = response.headers.get("Content-Type", "")
    data = first_part(content_type, body)
    del body
    return _TooLarge() if len(data) > max_bytes else _with_preamble(data)


def first_part(content_type: str, body: bytes | bytearray) -> bytes:
    """The first part of a multipart body, or the body itself when it is not multipart.
    ValueError when a multipart body has no complete part.

    Split on bytes (RFC 2046 delimiters) rather than with the stdlib's MIME parser, which
    held several copies of a body that may be hundreds of megabytes.
    """
    if not content_type.lower().startswith("multipart/"):
        return bytes(body)
    header = email.message.Message()
    header["Content-Type"] = content_type
    boundary = header.get_boundary()
    if not boundary:
        raise ValueError("no boundary in the WADO-RS answer's Content-Type")
    delimiter = b"--" + boundary.encode("latin-1")
    if body.startswith(delimiter):
        start = 0
    else:
        start = body.find(b"\r\n" + delimiter)
        if start < 0:
            raise ValueError("no part in the WADO-RS answer")
        start += 2
    after = start + len(delimiter)
    if body[after : after + 2] == b"--":
        raise ValueError("no part in the WADO-RS answer")
    # The delimiter line (perhaps with transport padding), the part's headers, a blank line.
    line_end = body.find(b"\r\n", after)
    headers_end = body.find(b"\r\n\r\n", line_end) if line_end >= 0 else -1
    if headers_end < 0:
        raise ValueError("no part in the WADO-RS answer")
    content_start = headers_end + 4
    content_end = body.find(b"\r\n" + delimiter, content_start)
    if content_end < 0:
        raise ValueError("no complete part in the WADO-RS answer")
    with memoryview(body) as view:
        return bytes(view[content_start:content_end])


def _with_preamble(data: bytes) -> bytes:
    """The file with Part-10's 128-byte preamble and DICM prefix. Some PACSs (Orthanc among
    them) send what they were sent, and a STOW-RS client may have left the preamble out; the
    file meta group that follows is what matters, and readers require the prefix."""
    if data[128:132] == b"DICM" or not data.startswith(b"\x02\x00"):
        return data
    return bytes(128) + b"DICM" + data


def _store(client: DICOMwebClient, parts: list[bytes]) -> list[str]:
    # Parsed here, in the worker: a Segmentation can be megabytes.
    datasets = [pydicom.dcmread(io.BytesIO(part)) for part in parts]
    try:
        reply = client.store_instances(datasets)
    except requests.HTTPError as error:
        # 409: nothing stored; the reply still lists why, per instance.
        if error.response is None or error.response.status_code != 409:
            raise
        reply = pydicom.Dataset.from_json(error.response.json())
    failed = getattr(reply, "FailedSOPSequence", None) or []
    return [str(item.ReferencedSOPInstanceUID) for item in failed]


# -- DICOM JSON -----------------------------------------------------------------------------


def source_series_from(
    study_uid: str, series_uid: str, metadata: list[dict[str, Any]]
) -> SourceSeries:
    """The binding-relevant attributes of WADO-RS series metadata (PS3.18 F.2 DICOM JSON).

    Instances without Rows and Columns (documents, presentation states) are no images a
    slice can be drawn on, and are left out.
    """
    instances = []
    frame_of_reference = modality = None
    for item in metadata:
        sop_uid = _text(item, "00080018")
        rows, columns = _integer(item, "00280010"), _integer(item, "00280011")
        frame_of_reference = frame_of_reference or _text(item, "00200052")
        modality = modality or _text(item, "00080060")
        if sop_uid is None or rows is None or columns is None:
            continue
        position = _numbers(item, "00200032", 3)
        orientation = _numbers(item, "00200037", 6)
        instances.append(
            SourceInstance(
                sop_instance_uid=sop_uid,
                sop_class_uid=_text(item, "00080016") or "",
                rows=rows,
                columns=columns,
                instance_number=_integer(item, "00200013"),
                position=(position[0], position[1], position[2]) if position else None,
                orientation=_orientation(orientation),
            )
        )
    return SourceSeries(
        study_uid=study_uid,
        series_uid=series_uid,
        frame_of_reference_uid=frame_of_reference,
        modality=modality,
        instances=tuple(instances),
    )


def _orientation(
    values: list[float] | None,
) -> tuple[float, float, float, float, float, float] | None:
    if values is None:
        return None
    return (values[0], values[1], values[2], values[3], values[4], values[5])


def _values(item: dict[str, Any], tag: str) -> list[Any]:
    element = item.get(tag)
    if not isinstance(element, dict):
        return []
    values = element.get("Value")
    return values if isinstance(values, list) else []


def _text(item: dict[str, Any], tag: str) -> str | None:
    values = _values(item, tag)
    return str(values[0]) if values and isinstance(values[0], str) and values[0] else None


def _integer(item: dict[str, Any], tag: str) -> int | None:
    values = _values(item, tag)
    if not values:
        return None
    try:
        # IS may come as a number or, from some servers, as its string form.
        return int(float(values[0]))
    except (TypeError, ValueError):
        return None


def _numbers(item: dict[str, Any], tag: str, count: int) -> list[float] | None:
    values = _values(item, tag)
    if len(values) != count:
        return None
    try:
        return [float(v) for v in values]
    except (TypeError, ValueError):
        return None


class PacsProbe:
    """Health of the PACS, asked at most every `interval_seconds`: the PACS is the hospital's,
    and every replica probing it every second would be load it did not ask for."""

    name = "pacs"

    def __init__(
        self,
        pacs: DicomWebPacs,
        timeout_seconds: float,
        *,
        interval_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pacs = pacs
        self._timeout = timeout_seconds
        self._interval = interval_seconds
        self._clock = clock
        self._checked_at: float | None = None
        self._failure: str | None = None

    async def check(self) -> None:
        if self._pacs.breaker.state is BreakerState.OPEN:
            raise PacsUnreachableError("calls to the PACS are failing fast")
        now = self._clock()
        if self._checked_at is None or now - self._checked_at >= self._interval:
            self._checked_at = now
            try:
                await self._pacs.ping(self._timeout)
            except PacsUnreachableError as error:
                self._failure = str(error)
            else:
                self._failure = None
        if self._failure is not None:
            raise PacsUnreachableError(self._failure)
