"""Writes the README's configuration table from the settings' own declarations.

Each settings field declares its variable, default, bounds and help once
(pacs_grpc/config); this renders them between the README's `settings:begin` and
`settings:end` markers, so the table never states a default the server does not use.

Usage, from the repository root: python -m tools.settings_table [--check]
(--check changes nothing and exits 1 when the table is stale).
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from collections.abc import Iterable

from pacs_grpc.config import Setting, documented_settings
from pacs_grpc.config.variables import REQUIRED

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
BEGIN = "<!-- settings:begin -->"
END = "<!-- settings:end -->"
COMMAND = "python -m tools.settings_table"
_NOTE = (
    "<!-- Generated from the settings' declarations in pacs_grpc/config by "
    f"`{COMMAND}`: edit those, not this table. -->"
)
_UNITS = (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024))


def render_table(settings: Iterable[Setting] | None = None) -> str:
    rows = [
        _NOTE,
        "| variable | default | allowed | meaning |",
        "|---|---|---|---|",
    ]
    for setting in documented_settings() if settings is None else settings:
        meaning = setting.variable.help + ("; a secret, never printed" if setting.secret else "")
        cells = (f"`{setting.name}`", _default(setting), _allowed(setting), meaning)
        rows.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(rows) + "\n"


def replace_section(text: str, table: str) -> str:
    """`text` with what lies between the markers replaced by `table`."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"the README has no {BEGIN} ... {END} section")
    return text[: start + len(BEGIN)] + "\n" + table + text[end:]


def current_section(text: str) -> str:
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"the README has no {BEGIN} ... {END} section")
    return text[start + len(BEGIN) : end].removeprefix("\n")


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
    updated = replace_section(text, render_table())
    if updated == text:
        return 0
    if args.check:
        print(f"{args.readme}: the configuration table is stale: run `{COMMAND}`", file=sys.stderr)
        return 1
    args.readme.write_text(updated, encoding="utf-8")
    print(f"{args.readme}: configuration table rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
