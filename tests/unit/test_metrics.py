"""The metric registry and the pool collector, read back through the exposition format."""

from __future__ import annotations

import grpc
from prometheus_client.parser import text_string_to_metric_families

from pacs_grpc.api.access import ACCESS_BY_METHOD
from pacs_grpc.api.metrics import RPC_METHODS, Metrics, method_label

TICKETS = "/pacs.v1.MaskService/CreateUploadUrls"
WATCH = "/pacs.v1.AnnotationService/WatchAnnotations"


def _samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.render().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_every_method_of_the_access_table_is_a_known_label() -> None:
    assert set(ACCESS_BY_METHOD) <= RPC_METHODS
    assert method_label(TICKETS) == TICKETS
    assert method_label("/grpc.health.v1.Health/Check") == "/grpc.health.v1.Health/Check"


def test_methods_outside_the_table_share_one_label() -> None:
    assert method_label("/pacs.v1.MaskService/1.2.840.113619.2.55") == "unknown"
    assert method_label("/evil/" + "x" * 1000) == "unknown"


def test_rpcs_are_counted_by_method_and_code_and_timed_unless_streamed() -> None:
    metrics = Metrics()
    metrics.rpc_finished(TICKETS, grpc.StatusCode.OK, 0.012)
    metrics.rpc_finished(TICKETS, grpc.StatusCode.OK, 0.3)
    metrics.rpc_finished(TICKETS, grpc.StatusCode.RESOURCE_EXHAUSTED, 0.001)
    metrics.rpc_finished(WATCH, grpc.StatusCode.CANCELLED, None)
    metrics.rpc_finished("/x.Y/Z", grpc.StatusCode.UNIMPLEMENTED, 0.001)
    samples = _samples(metrics)
    handled = "pacs_rpc_handled_total"
    assert samples[(handled, (("code", "OK"), ("method", TICKETS)))] == 2
    assert samples[(handled, (("code", "RESOURCE_EXHAUSTED"), ("method", TICKETS)))] == 1
    assert samples[(handled, (("code", "CANCELLED"), ("method", WATCH)))] == 1
    assert samples[(handled, (("code", "UNIMPLEMENTED"), ("method", "unknown")))] == 1
    assert samples[("pacs_rpc_duration_seconds_count", (("method", TICKETS),))] == 3
    assert samples[("pacs_rpc_duration_seconds_bucket", (("le", "0.2"), ("method", TICKETS)))] == 2
    assert ("pacs_rpc_duration_seconds_count", (("method", WATCH),)) not in samples


def test_business_counters_and_the_backlog_gauge() -> None:
    metrics = Metrics()
    metrics.tickets_issued(100)
    metrics.tickets_issued(20)
    metrics.slices_completed(100)
    metrics.masks_pushed(3, 4096)
    metrics.rate_limited("tickets")
    metrics.storage_backlog(7)
    metrics.storage_backlog(5)
    samples = _samples(metrics)
    assert samples[("pacs_upload_tickets_issued_total", ())] == 120
    assert samples[("pacs_upload_slices_completed_total", ())] == 100
    assert samples[("pacs_pushed_masks_total", ())] == 3
    assert samples[("pacs_pushed_bytes_total", ())] == 4096
    assert samples[("pacs_rate_limited_total", (("limit", "tickets"),))] == 1
    assert samples[("pacs_storage_deletion_backlog", ())] == 5


def test_the_pool_collector_reads_the_stats_at_every_scrape() -> None:
    stats = {"pool_min": 2, "pool_max": 20, "pool_size": 4, "pool_available": 1}
    metrics = Metrics()
    metrics.watch_pool(lambda: stats)
    first = _samples(metrics)
    assert first[("pacs_db_pool_connections", ())] == 4
    assert first[("pacs_db_pool_idle_connections", ())] == 1
    assert first[("pacs_db_pool_max_connections", ())] == 20
    # psycopg_pool leaves out counters that are still zero.
    assert first[("pacs_db_pool_waiting", ())] == 0
    assert first[("pacs_db_pool_requests_total", ())] == 0
    stats.update(requests_waiting=3, requests_num=50, requests_wait_ms=1500, requests_errors=2)
    second = _samples(metrics)
    assert second[("pacs_db_pool_waiting", ())] == 3
    assert second[("pacs_db_pool_requests_total", ())] == 50
    assert second[("pacs_db_pool_wait_seconds_total", ())] == 1.5
    assert second[("pacs_db_pool_errors_total", ())] == 2


def test_two_applications_in_one_process_keep_their_own_counts() -> None:
    first, second = Metrics(), Metrics()
    first.tickets_issued(5)
    assert _samples(second)[("pacs_upload_tickets_issued_total", ())] == 0
    assert _samples(first)[("pacs_upload_tickets_issued_total", ())] == 5
