"""`scripts/test`, the README's test command: a missing tool is installed or a failure.

The script runs from a copy in a scratch "checkout" with a stand-in
virtualenv, with the set-up checks only (SYNCMESH_TEST_SETUP_ONLY), so the
branches for a machine without the `sqlite3` shell or Chromium run here
without uninstalling anything: a PATH without sqlite3, a Chromium path that
does not exist, and a stand-in apt-get that records what it was asked.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_S = 60.0
TOOLS = ("bash", "dirname", "id", "touch")  # what the script's set-up needs besides the tools


def checkout(tmp_path: Path, *, with_sqlite3: bool) -> tuple[Path, dict[str, str]]:
    """A scratch checkout holding scripts/test, and an environment with a bare PATH."""
    root = tmp_path / "clone"
    (root / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "test", root / "scripts" / "test")
    (root / "pyproject.toml").write_text("[project]\nname = 'stand-in'\n")
    venv_bin = root / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "python").write_text("#!/bin/sh\nexit 0\n")
    (venv_bin / "python").chmod(0o755)
    (root / ".venv" / ".test-extras").touch()  # newer than pyproject.toml: no pip
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in TOOLS + (("sqlite3",) if with_sqlite3 else ()):
        found = shutil.which(tool)
        assert found is not None, f"{tool} is needed to run this test"
        (bin_dir / tool).symlink_to(found)
    env = {
        "PATH": str(bin_dir),
        "HOME": str(tmp_path),
        "SYNCMESH_TEST_SETUP_ONLY": "1",
        "SYNCMESH_TEST_CHROMIUM": str(tmp_path / "no-chromium-here"),
    }
    return root, env


def run_script(root: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [shutil.which("bash") or "bash", str(root / "scripts" / "test")],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )


def test_without_root_a_missing_tool_fails_with_the_command_that_installs_it(
    tmp_path: Path,
) -> None:
    root, env = checkout(tmp_path, with_sqlite3=False)
    result = run_script(root, {**env, "SYNCMESH_TEST_AS_ROOT": "0"})
    assert result.returncode == 1, result.stderr
    assert "the tests need sqlite3 chromium" in result.stderr
    assert (
        "apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y sqlite3 chromium"
        in result.stderr
    )
    assert "set-up complete" not in result.stderr


def test_as_root_a_missing_tool_is_installed_with_apt_get(tmp_path: Path) -> None:
    root, env = checkout(tmp_path, with_sqlite3=True)
    chromium = Path(env["SYNCMESH_TEST_CHROMIUM"])
    calls = tmp_path / "apt-calls"
    apt = tmp_path / "fake-apt-get"
    # A stand-in apt-get: records its arguments, and "installs" Chromium.
    apt.write_text(
        f'#!/bin/sh\necho "$@" >> {calls}\n'
        f'case "$*" in *install*chromium*) printf "#!/bin/sh\\n" > {chromium};'
        f" {shutil.which('chmod')} 755 {chromium};; esac\n"
    )
    apt.chmod(0o755)
    result = run_script(root, {**env, "SYNCMESH_TEST_AS_ROOT": "1", "SYNCMESH_TEST_APT": str(apt)})
    assert result.returncode == 0, result.stderr
    assert calls.read_text().splitlines() == ["update -qq", "install -y -qq chromium"]
    assert "set-up complete" in result.stderr


def test_as_root_an_install_that_does_not_provide_the_tool_fails(tmp_path: Path) -> None:
    root, env = checkout(tmp_path, with_sqlite3=True)
    apt = tmp_path / "apt-that-does-nothing"
    apt.write_text("#!/bin/sh\nexit 0\n")
    apt.chmod(0o755)
    result = run_script(root, {**env, "SYNCMESH_TEST_AS_ROOT": "1", "SYNCMESH_TEST_APT": str(apt)})
    assert result.returncode == 1
    assert "still missing" in result.stderr


def test_with_every_tool_present_the_set_up_passes(tmp_path: Path) -> None:
    root, env = checkout(tmp_path, with_sqlite3=True)
    chromium = Path(env["SYNCMESH_TEST_CHROMIUM"])
    chromium.write_text("#!/bin/sh\n")
    chromium.chmod(0o755)
    result = run_script(root, {**env, "SYNCMESH_TEST_AS_ROOT": "0"})
    assert result.returncode == 0, result.stderr
    assert "set-up complete" in result.stderr


def test_ci_runs_exactly_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "exec bash scripts/test\n" in ci
    assert "bash scripts/test" in readme.split("```")[3]  # the second command block
    assert os.access(ROOT / "scripts" / "test", os.X_OK)
