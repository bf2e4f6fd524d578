"""The static checks are part of the suite, so the one test command covers them too."""

from __future__ import annotations

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
