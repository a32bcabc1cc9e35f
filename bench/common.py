"""What every benchmark shares: the local stack, a logged-in admin, load, percentiles, output.

Each benchmark starts the real stack (embedded PostgreSQL, SeaweedFS, the dev token issuer and
`pacs-grpc serve`) in a scratch directory, measures its baseline and the service side by side in
one run, and writes bench/results/<name>.json and <name>.png. These machines are small and shared
(the client shares the CPUs with the server and the database), so only ratios measured in the
same run mean anything; the JSON records the load average to show how busy the machine was.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psutil
from google.protobuf import struct_pb2
from grpc import aio
from pacs.v1 import annotation_pb2, annotation_pb2_grpc, identity_pb2, identity_pb2_grpc

from pacs_devstack.stack import LocalStack, StackConfig
from tests.support.users import ApiUser, login

RESULTS = Path(__file__).parent / "results"
REPO = Path(__file__).parent.parent
# A study UID under an example root; benchmarks number studies beneath it.
STUDY_ROOT = "1.2.826.0.1.3680043.10.999"


# ------------------------------------------------------------------------------------------------
# The stack and a caller


@contextlib.contextmanager
def local_stack(
    name: str, *, environment: Mapping[str, str] | None = None, durable: bool = False
) -> Iterator[LocalStack]:
    """The stack in a scratch directory, torn down afterwards; call from sync code only
    (migrations run their own event loop). Not `durable` unless asked: PostgreSQL then runs
    without fsync, as the test suite's does."""
    scratch = Path(tempfile.mkdtemp(prefix=f"pacs-bench-{name}-"))
    # The embedded PostgreSQL runs as an unprivileged user when we are root.
    scratch.chmod(0o755)
    stack = LocalStack(
        StackConfig(data_dir=scratch, durable=durable, environment=dict(environment or {}))
    )
    try:
        stack.start_dependencies()
        stack.migrate()
        stack.start_server(log_path=scratch / "server.log")
        yield stack
    finally:
        stack.stop()
        shutil.rmtree(scratch, ignore_errors=True)


@dataclass
class Session:
    """A logged-in platform administrator on one channel, with the stubs benchmarks call."""

    channel: aio.Channel
    user: ApiUser
    identity: identity_pb2_grpc.IdentityServiceAsyncStub = field(init=False)
    annotations: annotation_pb2_grpc.AnnotationServiceAsyncStub = field(init=False)

    def __post_init__(self) -> None:
        self.identity = identity_pb2_grpc.IdentityServiceStub(self.channel)
        self.annotations = annotation_pb2_grpc.AnnotationServiceStub(self.channel)

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return self.user.metadata()

    async def create_project(self, name: str) -> int:
        reply = await self.identity.CreateProject(
            identity_pb2.CreateProjectRequest(project=identity_pb2.Project(name=name)),
            metadata=self.metadata,
        )
        return reply.project.id

    async def create_annotation(
        self, project_id: int, study_uid: str, data: Mapping[str, Any] | None = None
    ) -> annotation_pb2.Annotation:
        reply = await self.annotations.CreateAnnotation(
            new_annotation(project_id, study_uid, data), metadata=self.metadata
        )
        return reply.annotation


@contextlib.asynccontextmanager
async def admin_session(address: str, stack: LocalStack) -> AsyncIterator[Session]:
    """A platform administrator (so every project is readable) on a fresh channel to `address`."""
    assert stack.issuer is not None, "benchmarks use the dev token issuer"
    async with aio.insecure_channel(address) as channel:
        user = await login(channel, stack.issuer, "bench", admin=True)
        yield Session(channel, user)


def annotation_data() -> dict[str, Any]:
    """A typical viewer drawing: a closed polygon of a dozen points with a label."""
    points = [[100.0 + 7.5 * i, 200.0 + (i % 4) * 3.25] for i in range(12)]
    return {"type": "polygon", "label": "lesion", "points": points, "closed": True}


def realistic_annotation_data(index: int) -> dict[str, Any]:
    """A drawing as a viewer saves it, about 1 KiB of JSON: a 48-point polygon with
    two-decimal coordinates, a label and reader metadata; `index` varies shape and fields."""
    cx, cy = 256.0 + (index % 7) * 11.5, 240.0 + (index % 5) * 9.25
    radius = 38.0 + (index % 3) * 4.5
    angles = (2 * math.pi * i / 48 for i in range(48))
    points = [
        [round(cx + radius * math.cos(a), 2), round(cy + radius * 0.8 * math.sin(a), 2)]
        for a in angles
    ]
    return {
        "type": "polygon",
        "label": f"lesion {index % 12 + 1}",
        "points": points,
        "closed": True,
        "meta": {
            "reader_role": ("radiologist", "resident", "technologist")[index % 3],
            "confidence": round(0.55 + (index % 9) * 0.05, 2),
            "tags": ["liver", "follow-up", f"series-{index % 4 + 1}"],
        },
    }


def new_annotation(
    project_id: int, study_uid: str, data: Mapping[str, Any] | None = None
) -> annotation_pb2.CreateAnnotationRequest:
    """A polygon annotation carrying `data`, by default `annotation_data()`."""
    struct = struct_pb2.Struct()
    struct.update(annotation_data() if data is None else data)
    return annotation_pb2.CreateAnnotationRequest(
        annotation=annotation_pb2.Annotation(
            project_id=project_id, study_uid=study_uid, annotation_type="polygon",
            annotation_data=struct, viewer_software="bench-viewer 1.0",
        )
    )  # fmt: skip


# ------------------------------------------------------------------------------------------------
# Load and percentiles


def percentile(values: Sequence[float], pct: float) -> float:
    """The pct-th percentile (0-100), interpolating between the nearest ranks."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * pct / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def latency_summary(seconds: Sequence[float]) -> dict[str, float]:
    """p50, p99 and mean in milliseconds, and how many calls they cover."""
    return {
        "calls": len(seconds),
        "p50_ms": percentile(seconds, 50) * 1000,
        "p99_ms": percentile(seconds, 99) * 1000,
        "mean_ms": sum(seconds) / len(seconds) * 1000 if seconds else float("nan"),
    }


@dataclass
class LoadResult:
    """Calls that finished inside the measured window, plus totals over the run."""

    concurrency: int
    window_seconds: float
    latencies: list[float]
    errors: int
    # Every call of the run, warm-up and tail included: what reached the server.
    total_ok: int
    total_errors: int
    first_error: str | None

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.window_seconds

    def summary(self) -> dict[str, Any]:
        return {
            "concurrency": self.concurrency,
            "window_seconds": self.window_seconds,
            "rps": self.rps,
            "errors": self.errors,
            "total_ok": self.total_ok,
            "total_errors": self.total_errors,
            "first_error": self.first_error,
            **latency_summary(self.latencies),
        }


async def closed_loop(
    call: Callable[[int], Awaitable[object]],
    *,
    concurrency: int,
    seconds: float,
    warmup_seconds: float = 1.0,
    errors: tuple[type[BaseException], ...] = (grpc.RpcError,),
) -> LoadResult:
    """`concurrency` workers each calling `call(worker_index)` back to back.

    Rate and latency count the calls that finish inside the measured window (after the
    warm-up), which is the throughput the server sustained there whatever the latency. No call
    is cancelled: every one that started has finished when this returns, which lets callers
    check the totals against the database.
    """
    window_start = time.perf_counter() + warmup_seconds
    window_end = window_start + seconds
    spans: list[tuple[float, float]] = []
    failures: list[tuple[float, str]] = []
    total_ok = 0

    async def worker(index: int) -> None:
        nonlocal total_ok
        while (started := time.perf_counter()) < window_end:
            try:
                await call(index)
            except errors as exc:
                failures.append((time.perf_counter(), _describe(exc)))
            else:
                spans.append((started, time.perf_counter()))
                total_ok += 1

    def inside(end: float) -> bool:
        return window_start <= end <= window_end

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    latencies = [end - start for start, end in spans if inside(end)]
    return LoadResult(
        concurrency=concurrency,
        window_seconds=seconds,
        latencies=latencies,
        errors=sum(1 for ended, _ in failures if inside(ended)),
        total_ok=total_ok,
        total_errors=len(failures),
        first_error=failures[0][1] if failures else None,
    )


def _describe(exc: BaseException) -> str:
    if isinstance(exc, aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    return type(exc).__name__


async def timed_calls(
    call: Callable[[], Awaitable[object]], count: int, warmup: int
) -> list[float]:
    """Latencies of `count` sequential calls after `warmup` unrecorded ones."""
    for _ in range(warmup):
        await call()
    latencies = []
    for _ in range(count):
        started = time.perf_counter()
        await call()
        latencies.append(time.perf_counter() - started)
    return latencies


@contextlib.asynccontextmanager
async def server_profile(pid: int, seconds: float, name: str) -> AsyncIterator[Path]:
    """py-spy records process `pid` for `seconds` while the block runs load (at least as long).

    Yields the raw stacks file (bench/results/<name>.profile.txt, see bench.hotspots); it is
    complete once the block has exited.
    """
    py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if py_spy is None:
        raise SystemExit("profiling needs py-spy: .venv/bin/pip install py-spy")
    RESULTS.mkdir(exist_ok=True)
    raw = RESULTS / f"{name}.profile.txt"
    recorder = await asyncio.create_subprocess_exec(
        py_spy, "record", "--pid", str(pid), "--duration", str(round(seconds)),
        # Only the thread holding the GIL: idle pool threads blocked in C would otherwise
        # look busy, and the Python work is what a change to our code can remove.
        "--gil", "--format", "raw", "--output", str(raw),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        yield raw
    finally:
        _, stderr = await recorder.communicate()
    if recorder.returncode != 0:
        raise RuntimeError(f"py-spy failed: {stderr.decode(errors='replace').strip()}")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time process `pid` has used so far."""
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


# ------------------------------------------------------------------------------------------------
# Output


def write_results(name: str, data: Mapping[str, Any]) -> Path:
    """bench/results/<name>.json: the figures and the conditions they were measured under."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    document = {"benchmark": name, "machine": machine(), **data}
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path


def machine() -> dict[str, Any]:
    return {
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "commit": _commit(),
    }


def _commit() -> str | None:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO, capture_output=True, text=True, timeout=5, check=True,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


@dataclass(frozen=True)
class Panel:
    """One chart: a group of bars per label in `groups`, one bar per series in each group."""

    title: str
    ylabel: str
    groups: Sequence[str]
    series: Mapping[str, Sequence[float]]
    log_scale: bool = False


def write_chart(name: str, title: str, panels: Sequence[Panel]) -> Path:
    """bench/results/<name>.png: the panels side by side, drawn without a display."""
    # Figure without pyplot: no global state and no GUI backend; PNG goes through Agg.
    from matplotlib.figure import Figure

    RESULTS.mkdir(exist_ok=True)
    figure = Figure(figsize=(max(7.0, 5.2 * len(panels)), 4.2), layout="constrained")
    figure.suptitle(title)
    axes_list = figure.subplots(1, len(panels), squeeze=False)[0]
    for axes, panel in zip(axes_list, panels, strict=True):
        width = 0.8 / max(len(panel.series), 1)
        for position, (label, values) in enumerate(panel.series.items()):
            offsets = [
                i + (position - (len(panel.series) - 1) / 2) * width for i in range(len(values))
            ]
            bars = axes.bar(offsets, values, width, label=label)
            axes.bar_label(bars, fmt="%.4g", fontsize=7)
        axes.set_xticks(range(len(panel.groups)), list(panel.groups))
        axes.set_title(panel.title)
        axes.set_ylabel(panel.ylabel)
        if panel.log_scale:
            axes.set_yscale("log")
        if len(panel.series) > 1:
            axes.legend(fontsize=8)
    path = RESULTS / f"{name}.png"
    figure.savefig(path, dpi=110)
    return path


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A plain aligned table; floats with three significant decimals."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    print("  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True)))
    for row in cells:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)
