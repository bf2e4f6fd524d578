"""The newcomer's path, run as written: the README's "Five minutes" and docs/quickstart.md.

Each doc's `sh` blocks run in order, verbatim, as one bash script in a
temporary directory, the way a user pastes them, with `.venv` there being
this suite's virtualenv (made by the same `pip install` the docs show).
Two things differ from a user's terminal, and only these: the ports
7401-7403 become free ports, so parallel runs do not collide, and the
install block is not run again.  The script runs with `set -e`: a failing
command fails the test.

Then the output must hold what the doc shows: every output block free of
ids, times and placeholders verbatim, and the named lines of the others.
Every process the script started is gone at the end (the docs stop their
nodes themselves; whatever is left is killed, and the test fails).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.nodeproc import free_port

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
RUN_TIMEOUT_S = 90.0  # below pytest-timeout's 120 s, so the clean-up below runs
DOC_PORTS = ("7401", "7402", "7403")
# An output block with any of these is shown as an example, not verbatim.
EXAMPLE_ONLY = re.compile(r"[0-9a-f]{16}|\d+ ms|<|\bs ago\b|\.\.\.")


def section(text: str, start: str, end: str | None) -> str:
    begin = text.index(start)
    return text[begin : text.index(end, begin) if end else len(text)]


def blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of each fenced block, in order."""
    return [(lang, body) for lang, body in re.findall(r"```(\w*)\n(.*?)```", text, re.S)]


def run_doc(text: str, workdir: Path, *, skip: str | None = None) -> str:
    """Run `text`'s sh blocks as one script in `workdir`; the combined output."""
    ports = {port: str(free_port()) for port in DOC_PORTS}
    script = ["set -e"]
    for lang, body in blocks(text):
        if lang != "sh" or (skip is not None and skip in body):
            continue
        for doc_port, port in ports.items():
            body = body.replace(doc_port, port)
        script.append(body)
    (workdir / ".venv").symlink_to(VENV)
    path = workdir / "doc.sh"
    path.write_text("\n".join(script))
    env = {**os.environ, "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    env.pop("VIRTUAL_ENV", None)
    # Output to a file, not a pipe: nodes left running would hold a pipe open.
    log = workdir / "doc.out"
    with log.open("w") as sink:
        process = subprocess.Popen(
            ["bash", str(path)],
            cwd=workdir,
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        try:
            process.wait(timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            _kill_group(process.pid)
            process.wait(timeout=10)
            pytest.fail(
                f"the doc's commands did not finish in {RUN_TIMEOUT_S} s:\n{log.read_text()}"
            )
        finally:
            leftover = _kill_group(process.pid)
    output = log.read_text()
    node_logs = "".join(
        f"\n== {log_file.name}\n{log_file.read_text(errors='replace')}"
        for log_file in sorted(workdir.glob("*.log"))
    )
    assert process.returncode == 0, f"the doc's commands failed:\n{output}{node_logs}"
    assert not leftover, f"the doc left processes running: {leftover}\n{output}"
    return output


def _kill_group(group: int) -> list[int]:
    """Kill what is left of the script's process group; the pids that were left."""
    left = [
        int(pid)
        for pid in os.listdir("/proc")
        if pid.isdigit() and _group_of(int(pid)) == group and int(pid) != os.getpid()
    ]
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while any(_group_of(pid) == group for pid in left) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def _group_of(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except (ProcessLookupError, PermissionError):
        return None


def assert_shown_and_printed(doc: str, output: str, lines: list[str]) -> None:
    for line in lines:
        assert line in doc, f"the doc no longer shows {line!r}"
        assert line in output, f"the doc shows {line!r}, the commands printed:\n{output}"


def assert_verbatim_blocks(doc: str, output: str) -> int:
    """Every plain output block without ids, times or placeholders, printed as shown."""
    checked = 0
    for lang, body in blocks(doc):
        if lang or EXAMPLE_ONLY.search(body):
            continue
        assert body in output, f"the doc shows:\n{body}\nthe commands printed:\n{output}"
        checked += 1
    return checked


@pytest.mark.multiprocess
def test_readme_five_minutes_runs_as_written(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    five = section(readme, "## Five minutes", "## Choosing keys")
    output = run_doc(five, tmp_path)
    # The README shows the lines that matter "among other lines": each of them.
    [(_, shown)] = [(lang, body) for lang, body in blocks(five) if not lang]
    assert_shown_and_printed(five, output, shown.splitlines())
    assert "database is locked" not in output


@pytest.mark.multiprocess
def test_quickstart_runs_as_written(tmp_path: Path) -> None:
    quickstart = (ROOT / "docs" / "quickstart.md").read_text()
    steps = section(quickstart, "## Install", "## Going further")
    output = run_doc(steps, tmp_path, skip="pip install")
    assert assert_verbatim_blocks(steps, output) >= 4
    assert_shown_and_printed(
        steps,
        output,
        [
            "converged: 301 identical rows on all 3 nodes in",
            "  row 'doomed' is gone on every node",
            "renamed on c|edited on a",
            "health       ok",
            "streaming",
        ],
    )
    assert "database is locked" not in output
    assert "already served" not in output
