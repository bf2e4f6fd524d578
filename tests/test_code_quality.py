"""The static checks are part of the suite, so the one test command covers them too."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@pytest.mark.parametrize(
    "command",
    [
        ["ruff", "format", "--check", "src", "tests", "bench", "fuzz"],
        ["ruff", "check", "src", "tests", "bench", "fuzz"],
        ["mypy"],
        ["lint-imports"],
    ],
    ids=["ruff-format", "ruff-check", "mypy", "import-layers"],
)
def test_static_check_passes(command: list[str]) -> None:
    result = subprocess.run(
        [str(BIN / command[0]), *command[1:]],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_absolute_paths_of_this_machine_in_the_repository() -> None:
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=False
    ).stdout.split()
    offenders = [
        name
        for name in tracked
        if (ROOT / name).is_file() and str(ROOT) in (ROOT / name).read_text(errors="ignore")
    ]
    assert not offenders, offenders


# `x._name` where x is not `self` or `cls` reaches into another object's
# private state (issue 13: seven store modules wrote the Store's privates
# about 140 times).  Entries are "path:expression", each with its reason;
# keep this short.
PRIVATE_ACCESS_ALLOWED: dict[str, str] = {}
CHECKED_TREES = ("src", "tests", "bench", "fuzz")
PRIVATE_NAME_CALLS = {"getattr", "setattr", "delattr", "hasattr"}


def private_accesses(source: str, path: str) -> list[str]:
    """Every read or write of another object's `_private` attribute in `source`.

    Dunder names are public protocol, not private.  `getattr(x, "_y")` and
    friends with a constant name count too, so the check cannot be dodged
    by spelling the attribute as a string; so does importing another
    module's `_private` name.
    """

    def private(name: str) -> bool:
        return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))

    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and private(node.attr):
            owner = node.value
            if isinstance(owner, ast.Name) and owner.id in {"self", "cls"}:
                continue
            found.append((node.lineno, ast.unparse(node)))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in PRIVATE_NAME_CALLS
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and private(node.args[1].value)
        ):
            found.append((node.lineno, ast.unparse(node)))
        elif isinstance(node, ast.ImportFrom) and node.module != "__future__":
            found.extend(
                (node.lineno, f"from {node.module} import {alias.name}")
                for alias in node.names
                if private(alias.name)
            )
    return [
        f"{path}:{line}: {expression}"
        for line, expression in sorted(found)
        if f"{path}:{expression}" not in PRIVATE_ACCESS_ALLOWED
    ]


def test_no_module_reads_or_writes_another_objects_private_attributes() -> None:
    """Goal: no `_private` of another object or module is used, in the product or around it.

    Method: `private_accesses` over every Python file of src/, and of the
    tests, the benchmarks and the fuzzers: a test that reaches into a
    private pins an implementation detail and breaks when it moves.
    """
    offenders = []
    for path in sorted(path for tree in CHECKED_TREES for path in (ROOT / tree).rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        offenders += private_accesses(path.read_text(), relative)
    assert not offenders, "\n".join(offenders)


def test_the_private_access_check_finds_what_it_looks_for() -> None:
    source = (
        "class A:\n"
        "    def __eq__(self, other):\n"
        "        return other._value == self._value and cls._x and self.__dict__\n"
        "def f(store):\n"
        "    store._tables = {}\n"
        "    return getattr(store, '_clock'), store.__class__\n"
        "from syncmesh.store.sqlite.capture import _capture_parameters, capture\n"
    )
    assert private_accesses(source, "m.py") == [
        "m.py:3: other._value",
        "m.py:5: store._tables",
        "m.py:6: getattr(store, '_clock')",
        "m.py:7: from syncmesh.store.sqlite.capture import _capture_parameters",
    ]
