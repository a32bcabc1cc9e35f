"""The README's Layout section names every package of the server, and only folders that exist,
and each package's docstring says what lives there."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVER = ROOT / "pacs_grpc"


def _layout_block() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Layout", 1)[1]
    return section.split("```", 2)[1]


def _named_paths(block: str) -> set[str]:
    """The paths the block names: top-level entries, and `  sub/` entries under pacs_grpc/."""
    paths: set[str] = set()
    parent = ""
    for line in block.splitlines():
        match = re.match(r"^(\s*)([\w./|-]+/|[\w.-]+\.py)\s", line + " ")
        if match is None:
            continue
        indent, name = match.groups()
        if not indent:
            parent = name if name.endswith("/") else ""
            paths.add(name.split("|")[0])
        elif parent and len(indent) == 2:
            paths.add(parent + name)
    return paths


def test_every_server_package_is_in_the_layout_and_every_listed_path_exists() -> None:
    named = _named_paths(_layout_block())
    for path in named:
        assert (ROOT / path).exists(), f"README Layout names {path}, which does not exist"
    packages = {
        str(init.parent.relative_to(ROOT)) + "/"
        for init in SERVER.rglob("__init__.py")
        if init.parent != SERVER
    }
    # A package is covered by its own line, by its parent's, or by its children's (adapters/ is
    # listed as adapters/postgres/, adapters/storage/, ...).
    inner = {n for n in named if n.startswith("pacs_grpc/") and n != "pacs_grpc/"}
    missing = {p for p in packages if not any(p.startswith(n) or n.startswith(p) for n in inner)}
    assert not missing, f"packages missing from the README's Layout: {sorted(missing)}"


def test_every_package_says_what_lives_there() -> None:
    for init in [SERVER / "__init__.py", *sorted(SERVER.rglob("*/__init__.py"))]:
        docstring = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        assert docstring, f"{init.relative_to(ROOT)} has no docstring"


def test_every_layer_package_says_what_it_may_import() -> None:
    """The layers' packages state their import rule in words (import-linter enforces it)."""
    silent = []
    for init in [SERVER / "__init__.py", *sorted(SERVER.rglob("*/__init__.py"))]:
        docstring = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))) or ""
        if "import" not in docstring.lower():
            silent.append(str(init.relative_to(ROOT)))
    assert not silent, f"package docstrings that do not say what they may import: {silent}"
