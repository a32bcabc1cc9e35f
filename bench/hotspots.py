"""Hot spots in a py-spy raw profile (`py-spy record --format raw`), in three views.

    .venv/bin/python -m bench.hotspots bench/results/unary_read.profile.txt

- leaf by package: which library the CPU was in when sampled (self time);
- attributed to our code: each sample charged to the deepest pacs_grpc frame on its stack, so
  a function of ours is charged for the library work it asked for (what a fix in our code can
  remove); samples with no pacs_grpc frame under the event loop are gRPC and asyncio machinery;
- inclusive, ours: the share of samples with the function anywhere on the stack (below the
  event loop: the server's entry points would be on every one).
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path
from typing import Any

OURS = "pacs_grpc/"
TOP = 15
# "function (path/to/file.py:123)": the frame py-spy writes, line number dropped to group.
_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")
_PACKAGES = (
    ("pacs_grpc", "pacs_grpc/"),
    ("grpc", "grpc/"),
    ("psycopg", "psycopg"),
    ("asyncio", "asyncio/"),
    ("asyncio", "(selectors.py"),
    ("contextlib", "(contextlib.py"),
    ("jwt/cryptography", "jwt/"),
    ("jwt/cryptography", "cryptography/"),
    ("logging", "logging/"),
    ("json", "json/"),
    ("protobuf", "protobuf/"),
    ("generated pacs.v1", "pacs/v1/"),
)


def _parse(path: Path) -> list[tuple[list[str], int]]:
    stacks = []
    for line in path.read_text().splitlines():
        frames, _, count = line.rpartition(" ")
        if frames and count.isdigit():
            stacks.append(([_function(f) for f in frames.split(";")], int(count)))
    return stacks


def _function(frame: str) -> str:
    match = _FRAME.match(frame)
    if match is None:
        return frame
    return f"{match['function']} ({match['file']})"


def _package(function: str) -> str:
    for name, marker in _PACKAGES:
        if marker in function:
            return name
    return "other"


def _below_event_loop(frames: list[str]) -> list[str]:
    """The frames the event loop runs: the server's entry points above it are on every stack."""
    for index, frame in enumerate(frames):
        if "asyncio/" in frame:
            return frames[index:]
    return frames


def summarize(path: Path) -> dict[str, Any]:
    stacks = _parse(path)
    total = sum(count for _, count in stacks)
    leaf: Counter[str] = Counter()
    attributed: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for frames, count in stacks:
        leaf[_package(frames[-1])] += count
        ours = [f for f in _below_event_loop(frames) if OURS in f]
        attributed[ours[-1] if ours else "(event loop and gRPC, no pacs_grpc frame)"] += count
        for function in set(ours):
            inclusive[function] += count

    def shares(counter: Counter[str]) -> list[dict[str, Any]]:
        return [
            {"where": where, "samples": n, "percent": 100.0 * n / total}
            for where, n in counter.most_common(TOP)
        ]

    return {
        "samples": total,
        "leaf_by_package": shares(leaf),
        "attributed_to_our_code": shares(attributed),
        "inclusive_ours": shares(inclusive),
    }


def report(summary: dict[str, Any]) -> None:
    print(f"\nserver profile: {summary['samples']} samples (py-spy --gil: Python running)")
    for key, title in (
        ("leaf_by_package", "where the CPU was (leaf frame's package)"),
        ("attributed_to_our_code", "charged to the deepest pacs_grpc frame"),
        ("inclusive_ours", "pacs_grpc functions anywhere on the stack"),
    ):
        print(f"  {title}:")
        for row in summary[key]:
            print(f"    {row['percent']:5.1f}%  {row['where']}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("raw_profile", type=Path)
    report(summarize(parser.parse_args(argv).raw_profile))


if __name__ == "__main__":
    main()
