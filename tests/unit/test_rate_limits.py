"""Per-user limits as pure logic, on a clock the test moves, with budgets from the contract."""

from __future__ import annotations

import pytest
from google.protobuf.descriptor import MethodDescriptor
from pacs.v1 import annotation_pb2, identity_pb2, mask_pb2, options_pb2

from pacs_grpc.api.rate_limits import (
    STREAM_RETRY_SECONDS,
    CallLimits,
    StreamSlots,
    TokenBuckets,
)
from pacs_grpc.domain.errors import ResourceExhausted

TICKETS = "/pacs.v1.MaskService/CreateUploadUrls"
COMPLETE = "/pacs.v1.MaskService/CompleteUpload"
PUSH = "/pacs.v1.MaskService/PushMasks"
WATCH = "/pacs.v1.AnnotationService/WatchAnnotations"
SUBJECT = "5f0c2a1e-7b7d-4a58-9d0e-000000000001"
RpcPolicy = options_pb2.RpcPolicy


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _limits(clock: Clock, **overrides: int) -> tuple[CallLimits, list[str]]:
    refused: list[str] = []
    values = {
        "tickets_per_minute": 3,
        "completions_per_minute": 3,
        "pushes_per_minute": 10,
        "watches_per_minute": 10,
        "max_streams_per_user": 2,
    }
    values.update(overrides)
    return CallLimits(**values, clock=clock, on_refused=refused.append), refused


def test_a_bucket_grants_a_minutes_worth_at_once_then_says_when_the_next_token_comes() -> None:
    clock = Clock()
    buckets = TokenBuckets(clock=clock)
    assert [buckets.take("a", 6) for _ in range(6)] == [0.0] * 6
    # 6 a minute is one token every 10 s.
    assert buckets.take("a", 6) == pytest.approx(10.0)
    clock.now += 4
    assert buckets.take("a", 6) == pytest.approx(6.0)
    clock.now += 6
    assert buckets.take("a", 6) == 0.0
    assert buckets.take("a", 6) == pytest.approx(10.0)


def test_a_refused_take_costs_nothing() -> None:
    clock = Clock()
    buckets = TokenBuckets(clock=clock)
    for _ in range(2):
        buckets.take("a", 2)
    for _ in range(50):
        assert buckets.take("a", 2) > 0
    clock.now += 30
    assert buckets.take("a", 2) == 0.0


def test_buckets_of_different_keys_are_independent() -> None:
    buckets = TokenBuckets(clock=Clock())
    for _ in range(5):
        buckets.take("flooder", 5)
    assert buckets.take("flooder", 5) > 0
    assert buckets.take("other", 5) == 0.0


def test_a_bucket_that_refilled_is_forgotten() -> None:
    clock = Clock()
    buckets = TokenBuckets(clock=clock)
    for user in range(100):
        buckets.take(f"user-{user}", 60)
    assert len(buckets) == 100
    clock.now += 1.0  # 60 a minute refills one token a second: every bucket is full again
    buckets.take("late", 60)
    assert len(buckets) == 1


def test_past_the_cap_the_least_recently_used_bucket_goes() -> None:
    clock = Clock()
    buckets = TokenBuckets(clock=clock, max_keys=3)
    for key in ("a", "b", "c"):
        buckets.take(key, 1)
    buckets.take("a", 1)  # refused, but "a" is now the most recently used
    buckets.take("d", 1)
    assert len(buckets) == 3
    # "b" was dropped: it starts afresh, while "a" still owes its token.
    assert buckets.take("b", 1) == 0.0
    assert buckets.take("a", 1) > 0


def test_stream_slots_count_per_key_and_forget_keys_with_none_open() -> None:
    slots = StreamSlots()
    slots.acquire("a")
    slots.acquire("a")
    slots.acquire("b")
    assert (slots.open_count("a"), slots.open_count("b")) == (2, 1)
    slots.release("a")
    slots.release("b")
    assert (slots.open_count("a"), len(slots)) == (1, 1)
    slots.release("a")
    assert len(slots) == 0


def test_over_the_rate_the_call_is_refused_with_a_hint_in_seconds() -> None:
    clock = Clock()
    limits, refused = _limits(clock)
    for _ in range(3):
        limits.admit(TICKETS, SUBJECT).release()
    with pytest.raises(ResourceExhausted) as raised:
        limits.admit(TICKETS, SUBJECT)
    error = raised.value
    assert error.retry_after_seconds == pytest.approx(20.0)
    assert error.message == ("too many ticket requests: at most 3 a minute per user; retry in 20 s")
    assert SUBJECT not in error.message
    assert refused == ["tickets"]
    # Completions have a bucket of their own.
    limits.admit(COMPLETE, SUBJECT).release()


def test_one_users_flood_leaves_another_user_untouched() -> None:
    limits, refused = _limits(Clock())
    for _ in range(3):
        limits.admit(TICKETS, "flooder").release()
    for _ in range(100):
        with pytest.raises(ResourceExhausted):
            limits.admit(TICKETS, "flooder")
    assert len(refused) == 100
    for _ in range(3):
        limits.admit(TICKETS, "neighbour").release()


def test_streams_hold_a_slot_until_released() -> None:
    limits, refused = _limits(Clock())
    first = limits.admit(WATCH, SUBJECT)
    limits.admit(WATCH, SUBJECT)
    with pytest.raises(ResourceExhausted) as raised:
        limits.admit(WATCH, SUBJECT)
    assert raised.value.retry_after_seconds == STREAM_RETRY_SECONDS
    assert "at most 2 per user" in raised.value.message
    assert refused == ["watches"]
    # Pushes are counted apart from watches, and other users apart from this one.
    limits.admit(PUSH, SUBJECT)
    limits.admit(WATCH, "someone-else")
    first.release()
    first.release()  # releasing twice frees one slot, not two
    limits.admit(WATCH, SUBJECT)
    with pytest.raises(ResourceExhausted):
        limits.admit(WATCH, SUBJECT)


def test_a_stream_refused_for_its_slots_takes_no_token() -> None:
    limits, _ = _limits(Clock(), watches_per_minute=3, max_streams_per_user=1)
    held = limits.admit(WATCH, SUBJECT)
    for _ in range(10):
        with pytest.raises(ResourceExhausted, match="open"):
            limits.admit(WATCH, SUBJECT)
    held.release()
    # Two tokens of three are left: the refusals took none.
    limits.admit(WATCH, SUBJECT).release()
    limits.admit(WATCH, SUBJECT).release()
    with pytest.raises(ResourceExhausted, match="a minute"):
        limits.admit(WATCH, SUBJECT)


def test_zero_switches_a_limit_off_and_other_methods_are_never_limited() -> None:
    limits, _ = _limits(Clock(), tickets_per_minute=0, max_streams_per_user=0)
    for _ in range(1000):
        limits.admit(TICKETS, SUBJECT).release()
        limits.admit("/pacs.v1.AnnotationService/GetAnnotation", SUBJECT)
    held = [limits.admit(PUSH, SUBJECT) for _ in range(10)]
    assert len(held) == 10
    assert limits.limit_names == ("tickets", "completions", "pushes", "watches", "downloads")


def test_an_import_and_its_upload_ticket_share_the_completion_and_ticket_buckets() -> None:
    limits, _ = _limits(Clock(), tickets_per_minute=2, completions_per_minute=1)
    limits.admit("/pacs.v1.MaskService/CreateSegmentationUpload", SUBJECT).release()
    limits.admit(TICKETS, SUBJECT).release()
    with pytest.raises(ResourceExhausted, match="a minute"):
        limits.admit("/pacs.v1.MaskService/CreateSegmentationUpload", SUBJECT)
    limits.admit("/pacs.v1.MaskService/ImportSegmentation", SUBJECT).release()
    with pytest.raises(ResourceExhausted, match="a minute"):
        limits.admit("/pacs.v1.MaskService/CompleteUpload", SUBJECT)


def test_an_export_shares_the_completion_bucket_and_its_list_the_download_bucket() -> None:
    limits, _ = _limits(Clock(), completions_per_minute=1, downloads_per_minute=1)
    limits.admit("/pacs.v1.MaskService/ExportMaskGroup", SUBJECT).release()
    with pytest.raises(ResourceExhausted, match="completions"):
        limits.admit("/pacs.v1.MaskService/CompleteUpload", SUBJECT)
    limits.admit("/pacs.v1.MaskService/ListMaskGroupExports", SUBJECT).release()
    with pytest.raises(ResourceExhausted, match="download URL requests"):
        limits.admit("/pacs.v1.MaskService/CreateDownloadUrls", SUBJECT)


def _contract() -> dict[str, tuple[MethodDescriptor, RpcPolicy]]:
    return {
        f"/{service.full_name}/{method.name}": (
            method,
            method.GetOptions().Extensions[options_pb2.rpc],
        )
        for module in (identity_pb2, annotation_pb2, mask_pb2)
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    }


def test_each_rpc_draws_from_the_budget_its_contract_declares() -> None:
    for method, (_, policy) in _contract().items():
        limits, refused = _limits(
            Clock(),
            tickets_per_minute=1,
            completions_per_minute=1,
            pushes_per_minute=1,
            watches_per_minute=1,
            downloads_per_minute=1,
            max_streams_per_user=0,
        )
        limits.admit(method, SUBJECT).release()
        budget = RpcPolicy.RateLimit.Name(policy.rate_limit)
        if budget == "RATE_LIMIT_NONE":
            for _ in range(100):
                limits.admit(method, SUBJECT).release()
            continue
        with pytest.raises(ResourceExhausted, match="a minute"):
            limits.admit(method, SUBJECT)
        # The metric label is the budget's own name.
        assert refused == [budget.removeprefix("RATE_LIMIT_").lower()], method


def test_streams_and_only_streams_hold_a_slot_and_draw_from_a_budget() -> None:
    for method, (descriptor, policy) in _contract().items():
        streaming = descriptor.client_streaming or descriptor.server_streaming
        assert policy.holds_stream_slot == streaming, method
        if streaming:
            assert policy.rate_limit != RpcPolicy.RATE_LIMIT_NONE, method
            limits, _ = _limits(Clock(), max_streams_per_user=1)
            limits.admit(method, SUBJECT)
            with pytest.raises(ResourceExhausted, match="open"):
                limits.admit(method, SUBJECT)


def test_every_budget_of_the_contract_is_one_the_server_counts() -> None:
    budgets = {
        name.removeprefix("RATE_LIMIT_").lower()
        for name in RpcPolicy.RateLimit.DESCRIPTOR.values_by_name
        if name not in ("RATE_LIMIT_UNSPECIFIED", "RATE_LIMIT_NONE")
    }
    limits, _ = _limits(Clock())
    assert set(limits.limit_names) == budgets


def test_a_shared_budget_says_which_calls_share_it() -> None:
    limits, _ = _limits(Clock(), completions_per_minute=1)
    limits.admit("/pacs.v1.MaskService/ImportSegmentation", SUBJECT).release()
    with pytest.raises(ResourceExhausted) as raised:
        limits.admit("/pacs.v1.MaskService/ExportMaskGroup", SUBJECT)
    assert raised.value.message.startswith(
        "too many completions, imports and exports: at most 1 a minute per user"
    )
