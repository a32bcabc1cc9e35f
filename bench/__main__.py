"""Every benchmark in turn, each on a fresh local stack: what `make bench` runs.

    .venv/bin/python -m bench [NAME ...]        e.g. python -m bench unary_read list_scale

Each prints its table and writes bench/results/<name>.json and <name>.png; run one alone with
its own options as `python -m bench.<name> --help` describes. A benchmark that fails is
reported and the others still run; the exit code says whether all of them completed.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback

# In the order of the issue that asked for them.
BENCHMARKS = (
    "mask_upload",
    "unary_read",
    "list_scale",
    "rest_vs_grpc",
    "create_annotation",
    "export_seg",
    "pacs_check",
    "update_annotation",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help=", ".join(BENCHMARKS))
    names = parser.parse_args(argv).names or list(BENCHMARKS)
    unknown = set(names) - set(BENCHMARKS)
    if unknown:
        parser.error(f"no such benchmark: {', '.join(sorted(unknown))}")
    failed = []
    for name in names:
        print(f"\n=== bench.{name} ===", flush=True)
        started = time.monotonic()
        try:
            importlib.import_module(f"bench.{name}").main([])
        except Exception:  # noqa: BLE001 - one broken benchmark must not hide the others
            traceback.print_exc()
            failed.append(name)
        print(f"=== bench.{name}: {time.monotonic() - started:.0f} s ===", flush=True)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
