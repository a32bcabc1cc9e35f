"""Writes the README's configuration tables from the settings' own declarations.

Each settings field declares its variable, default, bounds and help once (the server's in
pacs_grpc/config, the Envoy sidecar's in pacs_grpc/edge/envoy_config.py); this renders
them between the README's `settings:begin` and `settings:end` markers (the server) and
`envoy-settings:begin` and `envoy-settings:end` (the sidecar), so no table states a
default that is not used.

Usage, from the repository root: python -m tools.settings_table [--check]
(--check changes nothing and exits 1 when the table is stale).
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from pacs_grpc.config import Setting, documented_settings
from pacs_grpc.config.variables import REQUIRED, settings_of
from pacs_grpc.edge.envoy_config import EnvoySettings

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
BEGIN = "<!-- settings:begin -->"
END = "<!-- settings:end -->"
COMMAND = "python -m tools.settings_table"
_UNITS = (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024))


@dataclass(frozen=True)
class Table:
    """One generated table: its markers in the README and where its rows are declared."""

    begin: str
    end: str
    declared_in: str
    settings: Callable[[], Iterable[Setting]]

    def render(self) -> str:
        return render_table(self.settings(), declared_in=self.declared_in)


SERVER = Table(BEGIN, END, "pacs_grpc/config", documented_settings)
ENVOY = Table(
    "<!-- envoy-settings:begin -->",
    "<!-- envoy-settings:end -->",
    "pacs_grpc/edge/envoy_config.py",
    lambda: settings_of(EnvoySettings),
)
TABLES = (SERVER, ENVOY)


def render_table(
    settings: Iterable[Setting] | None = None, *, declared_in: str = SERVER.declared_in
) -> str:
    note = (
        f"<!-- Generated from the settings' declarations in {declared_in} by "
        f"`{COMMAND}`: edit those, not this table. -->"
    )
    rows = [
        note,
        "| variable | default | allowed | meaning |",
        "|---|---|---|---|",
    ]
    for setting in documented_settings() if settings is None else settings:
        meaning = setting.variable.help + ("; a secret, never printed" if setting.secret else "")
        cells = (f"`{setting.name}`", _default(setting), _allowed(setting), meaning)
        rows.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(rows) + "\n"


def replace_section(text: str, table: str, markers: Table = SERVER) -> str:
    """`text` with what lies between the markers replaced by `table`."""
    start, end = _section(text, markers)
    return text[: start + len(markers.begin)] + "\n" + table + text[end:]


def current_section(text: str, markers: Table = SERVER) -> str:
    start, end = _section(text, markers)
    return text[start + len(markers.begin) : end].removeprefix("\n")


def has_section(text: str, markers: Table) -> bool:
    return markers.begin in text or markers.end in text


def _section(text: str, markers: Table) -> tuple[int, int]:
    start, end = text.find(markers.begin), text.find(markers.end)
    if start < 0 or end < start:
        raise ValueError(f"the README has no {markers.begin} ... {markers.end} section")
    return start, end


def _default(setting: Setting) -> str:
    default = setting.default
    if setting.secret and default not in (REQUIRED, ""):
        # The README is public; a secret's default would be a published credential.
        raise ValueError(f"{setting.name} is a secret with a default value")
    if setting.variable.shown_default:
        return setting.variable.shown_default
    if default is REQUIRED:
        return "required"
    return _value(setting, default)


def _value(setting: Setting, default: object) -> str:
    if isinstance(default, bool):
        return f"`{str(default).lower()}`"
    if isinstance(default, int):
        return _quantity(setting, default, both=True)
    if isinstance(default, float):
        return f"{default:g}"
    if isinstance(default, tuple):
        return f"`{','.join(default)}`"
    return f"`{default}`" if default else "unset"


def _allowed(setting: Setting) -> str:
    bounds = setting.describe_bounds(lambda value: _quantity(setting, value, both=False))
    return bounds or setting.kind.accepts


def _quantity(setting: Setting, value: float, *, both: bool) -> str:
    """A byte count also in KiB, MiB or GiB where it is a whole number of them."""
    plain = str(value) if isinstance(value, int) else f"{value:g}"
    if not setting.name.endswith("_BYTES") or not isinstance(value, int):
        return plain
    for unit, size in _UNITS:
        if value >= size and value % size == 0:
            return f"{plain} ({value // size} {unit})" if both else f"{value // size} {unit}"
    return plain


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the table is stale")
    parser.add_argument("--readme", type=pathlib.Path, default=README)
    args = parser.parse_args(argv)
    text = args.readme.read_text(encoding="utf-8")
    # The server's table must be there; the sidecar's is rewritten where it is (its own
    # test requires it in the project's README).
    updated = replace_section(text, SERVER.render(), SERVER)
    if has_section(updated, ENVOY):
        updated = replace_section(updated, ENVOY.render(), ENVOY)
    if updated == text:
        return 0
    if args.check:
        print(f"{args.readme}: a configuration table is stale: run `{COMMAND}`", file=sys.stderr)
        return 1
    args.readme.write_text(updated, encoding="utf-8")
    print(f"{args.readme}: configuration tables rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
