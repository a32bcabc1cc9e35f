from __future__ import annotations

import json
import logging

import psycopg

from pacs_grpc.logs import JsonFormatter, redacted_traceback

SENTINEL = "PATIENT^SENTINEL 1.2.840.99999"


def _raise_unique_violation() -> psycopg.errors.UniqueViolation:
    try:
        raise psycopg.errors.UniqueViolation(f"duplicate key\nDETAIL: Key (email)=({SENTINEL})")
    except psycopg.errors.UniqueViolation as error:
        return error


def test_database_error_text_is_withheld_but_its_place_is_kept() -> None:
    text = redacted_traceback(_raise_unique_violation())
    assert SENTINEL not in text
    assert "psycopg.errors.UniqueViolation" in text
    assert "_raise_unique_violation" in text


def test_chained_database_error_is_redacted_too() -> None:
    try:
        try:
            raise _raise_unique_violation()
        except psycopg.Error as cause:
            raise RuntimeError("repository failed") from cause
    except RuntimeError as error:
        text = redacted_traceback(error)
    assert SENTINEL not in text
    assert "RuntimeError: repository failed" in text


def test_json_lines_carry_extra_fields() -> None:
    record = logging.LogRecord("pacs_grpc.rpc", logging.INFO, __file__, 1, "rpc", None, None)
    record.method = "/pacs.v1.AnnotationService/GetAnnotation"
    record.code = "OK"
    entry = json.loads(JsonFormatter().format(record))
    assert entry["method"] == "/pacs.v1.AnnotationService/GetAnnotation"
    assert entry["code"] == "OK"
    assert entry["level"] == "INFO"
    assert entry["message"] == "rpc"
