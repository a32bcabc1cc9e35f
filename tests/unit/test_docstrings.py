"""Every public module of pacs_grpc, and every public top-level class in it, has a docstring.

The docstring states the contract (what a store runs inside, what a use case guarantees,
what a value's fields mean), so a reader need not open the code behind it. Read with ast:
nothing is imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

SERVER = Path(__file__).resolve().parents[2] / "pacs_grpc"


def _private(name: str) -> bool:
    """`_name` is private; dunders (`__init__`, `__main__`) are not."""
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _public_modules() -> list[Path]:
    return sorted(
        path
        for path in SERVER.rglob("*.py")
        if not any(_private(part) for part in path.relative_to(SERVER).with_suffix("").parts)
    )


def undocumented(source: str, where: str) -> list[str]:
    """The module itself, if it lacks a docstring, and each public top-level class that does."""
    tree = ast.parse(source)
    missing = [f"{where}: module"] if ast.get_docstring(tree) is None else []
    missing += [
        f"{where}:{node.lineno}: class {node.name}"
        for node in tree.body
        if isinstance(node, ast.ClassDef)
        and not _private(node.name)
        and ast.get_docstring(node) is None
    ]
    return missing


def test_every_public_module_and_class_has_a_docstring() -> None:
    offenders = [
        entry
        for path in _public_modules()
        for entry in undocumented(
            path.read_text(encoding="utf-8"), str(path.relative_to(SERVER.parent))
        )
    ]
    assert not offenders, "no docstring:\n" + "\n".join(offenders)


def test_the_walk_reaches_nested_packages_and_skips_private_modules() -> None:
    walked = {str(path.relative_to(SERVER)) for path in _public_modules()}
    expected = {"__init__.py", "__main__.py", "services/ports/masks.py", "bootstrap/wiring.py"}
    assert expected <= walked
    assert all(not _private(Path(name).stem) for name in walked)


def test_the_check_names_what_lacks_a_docstring() -> None:
    source = (
        "class Documented:\n"
        '    """Says what it promises."""\n'
        "class Bare:\n"
        "    x: int\n"
        "class _Private:\n"
        "    pass\n"
        "def function():\n"
        "    class Nested:\n"
        "        pass\n"
    )
    assert undocumented(source, "m.py") == ["m.py: module", "m.py:3: class Bare"]
    assert undocumented('"""A module."""\n' + source, "m.py") == ["m.py:4: class Bare"]
