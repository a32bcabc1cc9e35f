"""The README's configuration table is generated from the settings' declarations and kept so."""

from __future__ import annotations

import dataclasses
import pathlib
import typing
from collections import Counter

import pytest

from pacs_grpc.config import (
    DatabaseSettings,
    OidcSettings,
    PacsSettings,
    RateLimitSettings,
    Settings,
    StorageSettings,
    documented_settings,
)
from pacs_grpc.config.variables import REQUIRED, Setting, all_settings, nested_groups, settings_of
from pacs_grpc.edge.envoy_config import EnvoySettings
from tools import settings_table

GROUPS = (
    Settings,
    DatabaseSettings,
    StorageSettings,
    OidcSettings,
    RateLimitSettings,
    PacsSettings,
)


def test_the_readme_table_is_the_generated_one() -> None:
    readme = settings_table.README.read_text(encoding="utf-8")
    assert settings_table.current_section(readme) == settings_table.render_table(), (
        "README.md's configuration table differs from the settings declared in "
        f"pacs_grpc/config: run `.venv/bin/{settings_table.COMMAND}` and commit README.md"
    )


@pytest.mark.parametrize("group", GROUPS, ids=lambda group: group.__name__)
def test_every_field_is_a_variable_or_a_nested_group(group: type[Settings]) -> None:
    declared = {s.attribute for s in settings_of(group)} | set(nested_groups(group))
    assert declared == {field.name for field in dataclasses.fields(group)}


def test_every_variable_is_documented_once() -> None:
    names = [s.name for s in documented_settings()]
    assert [name for name, count in Counter(names).items() if count > 1] == []
    assert set(names) >= {s.name for s in all_settings(Settings)}
    assert "MIGRATION_DATABASE_URL" in names


@pytest.mark.parametrize(
    "setting",
    [s for s in documented_settings() if s.default not in (REQUIRED, "")],
    ids=lambda s: s.name,
)
def test_a_default_lies_within_its_bounds_and_reads_back(setting: Setting) -> None:
    if setting.kind.bounded:
        assert setting.within_bounds(setting.default), setting.describe_bounds()
    assert setting.read({setting.name: _as_text(setting.default)}) == setting.default


def test_secrets_show_no_default_and_are_named_secrets() -> None:
    secrets = [s for s in documented_settings() if s.secret]
    assert {s.name for s in secrets} >= {
        "DATABASE_URL",
        "MIGRATION_DATABASE_URL",
        "S3_ACCESS_KEY",
        "S3_SECRET_KEY",
        "PACS_PASSWORD",
        "PACS_CLIENT_SECRET",
    }
    rows = _rows(settings_table.render_table(secrets))
    for setting in secrets:
        default, meaning = rows[setting.name][1], rows[setting.name][3]
        assert default in ("required", "unset", "`DATABASE_URL`")
        assert meaning.endswith("a secret, never printed")


def test_a_secret_with_a_default_is_refused() -> None:
    password = next(s for s in documented_settings() if s.name == "PACS_PASSWORD")
    with pytest.raises(ValueError, match="PACS_PASSWORD is a secret with a default"):
        settings_table.render_table([dataclasses.replace(password, default="hunter2")])


def test_rows_show_defaults_and_bounds_in_the_units_they_are_read_in() -> None:
    rows = _rows(settings_table.render_table())
    assert rows["MAX_PAGE_SIZE"][1:3] == ["500", "between 1 and 10000"]
    assert rows["MAX_MASK_BYTES"][1:3] == ["67108864 (64 MiB)", "between 1 KiB and 5 GiB"]
    assert rows["WATCH_RECHECK_SECONDS"][1:3] == ["2", "between 0.1 and 5"]
    assert rows["SHUTDOWN_GRACE_SECONDS"][1:3] == ["20", "greater than 0"]
    assert rows["GRPC_REFLECTION"][1:3] == ["`true`", "`true` or `false`"]
    assert rows["LOG_LEVEL"][1:3] == ["`INFO`", "`DEBUG`, `INFO`, `WARNING` or `ERROR`"]
    assert rows["S3_ENDPOINT"][1] == "required"
    assert rows["PACS_VALIDATE"][1] == "`enforce` with a URL, else `off`"


def test_the_tool_rewrites_only_its_section_and_check_reports_staleness(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    readme = tmp_path / "README.md"
    stale = f"# Title\n\nbefore\n{settings_table.BEGIN}\n| old |\n{settings_table.END}\nafter\n"
    readme.write_text(stale, encoding="utf-8")

    assert settings_table.main(["--check", "--readme", str(readme)]) == 1
    assert settings_table.COMMAND in capsys.readouterr().err
    assert readme.read_text(encoding="utf-8") == stale

    assert settings_table.main(["--readme", str(readme)]) == 0
    text = readme.read_text(encoding="utf-8")
    assert text.startswith(f"# Title\n\nbefore\n{settings_table.BEGIN}\n")
    assert text.endswith(f"{settings_table.END}\nafter\n")
    assert "| old |" not in text
    assert settings_table.main(["--check", "--readme", str(readme)]) == 0


def test_a_readme_without_markers_is_refused() -> None:
    with pytest.raises(ValueError, match="settings:begin"):
        settings_table.replace_section("# no markers\n", settings_table.render_table())


def _as_text(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return ",".join(typing.cast(tuple[str, ...], value))
    return str(value)


def _rows(table: str) -> dict[str, list[str]]:
    rows = {}
    for line in table.splitlines():
        if line.startswith("| `"):
            cells = [cell.strip() for cell in line.strip("|").split(" | ")]
            rows[cells[0].strip("`")] = cells
    return rows


ENVOY_SETTINGS = settings_of(EnvoySettings)


def test_the_readme_envoy_table_is_the_generated_one() -> None:
    readme = settings_table.README.read_text(encoding="utf-8")
    assert settings_table.current_section(readme, settings_table.ENVOY) == (
        settings_table.ENVOY.render()
    ), (
        "README.md's Envoy settings table differs from the settings declared in "
        f"pacs_grpc/edge/envoy_config.py: run `.venv/bin/{settings_table.COMMAND}`"
    )


def test_every_envoy_field_is_a_variable_but_the_fixed_openapi_bound() -> None:
    declared = {s.attribute for s in ENVOY_SETTINGS}
    fields = {field.name for field in dataclasses.fields(EnvoySettings)}
    assert fields - declared == {"openapi_max_bytes"}
    names = [s.name for s in ENVOY_SETTINGS]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("setting", ENVOY_SETTINGS, ids=lambda s: s.name)
def test_an_envoy_default_lies_within_its_bounds_and_reads_back(setting: Setting) -> None:
    if setting.kind.bounded:
        assert setting.within_bounds(setting.default), setting.describe_bounds()
    assert setting.read({setting.name: _as_text(setting.default)}) == setting.default


def test_envoy_rows_show_defaults_and_allowed_values() -> None:
    rows = _rows(settings_table.ENVOY.render())
    assert rows["ENVOY_LISTEN_PORT"][1:3] == ["8080", "between 1 and 65535"]
    assert rows["ENVOY_XFF_TRUSTED_HOPS"][1:3] == ["0", "between 0 and 10"]
    assert rows["ENVOY_MAX_RESPONSE_BYTES"][1:3] == ["33554432 (32 MiB)", "at least 1"]
    assert rows["ENVOY_CONFIG_DIR"][1:3] == ["`/etc/envoy`", "an absolute path"]
    assert rows["CORS_ALLOWED_ORIGINS"][1] == "none"
    assert "pacs_grpc/edge/envoy_config.py" in settings_table.ENVOY.render().splitlines()[0]


def test_the_tool_rewrites_both_tables_and_check_reports_a_stale_envoy_one(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    readme = tmp_path / "README.md"
    envoy = settings_table.ENVOY
    stale = (
        f"{settings_table.BEGIN}\n{settings_table.render_table()}{settings_table.END}\n"
        f"between\n{envoy.begin}\n| old |\n{envoy.end}\nafter\n"
    )
    readme.write_text(stale, encoding="utf-8")

    assert settings_table.main(["--check", "--readme", str(readme)]) == 1
    assert settings_table.COMMAND in capsys.readouterr().err
    assert settings_table.main(["--readme", str(readme)]) == 0
    text = readme.read_text(encoding="utf-8")
    assert settings_table.current_section(text, envoy) == envoy.render()
    assert "| old |" not in text
    assert text.endswith(f"{envoy.end}\nafter\n")
    assert settings_table.main(["--check", "--readme", str(readme)]) == 0
