"""Structured JSON logs.

Log lines never carry tokens, request bodies, presigned URLs or database
error details (PostgreSQL puts offending values, which may be patient data,
into its DETAIL text): callers log identifiers, codes and durations only.
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
import warnings
from datetime import UTC, datetime
from typing import Any

_STANDARD_ATTRS = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: UTC time, level, logger, message, and every `extra` field. An
    exception becomes a traceback with database error texts withheld; keeping patient data out of
    messages and extras is the caller's part.
    """

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(
            (key, value) for key, value in vars(record).items() if key not in _STANDARD_ATTRS
        )
        if record.exc_info and record.exc_info[1] is not None:
            entry["error"] = redacted_traceback(record.exc_info[1])
        return json.dumps(entry, default=str)


def redacted_traceback(error: BaseException) -> str:
    """The traceback with database error texts reduced to their SQLSTATE."""
    lines = traceback.format_exception(error)
    chained: BaseException | None = error
    while chained is not None:
        sqlstate = getattr(chained, "sqlstate", None)
        if sqlstate is not None or type(chained).__module__.startswith("psycopg"):
            summary = f"{type(chained).__module__}.{type(chained).__qualname__}"
            redacted = f"{summary}: sqlstate={sqlstate} (text withheld: may hold data)\n"
            lines = [redacted if line.startswith(summary) else line for line in lines]
        chained = chained.__cause__ or chained.__context__
    return "".join(lines)


# DICOM libraries log and warn with the values they handle: highdicom names SOP Instance UIDs
# at WARNING, pydicom quotes invalid element values (which may be patient data), and both
# also raise Python warnings that go to stderr around our handler.
_QUIET_LIBRARIES = ("highdicom", "pydicom")


def quiet_dicom_libraries() -> None:
    """Keep the DICOM libraries' logs and warnings out of ours, whatever LOG_LEVEL says; our
    adapters log what went wrong without the values. Idempotent."""
    for name in _QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)
        # filterwarnings drops an identical earlier filter before adding this one.
        warnings.filterwarnings("ignore", module=rf"{name}(\.|$)")


def configure(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    quiet_dicom_libraries()
