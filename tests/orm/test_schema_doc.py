"""docs/schema.md's Django and Alembic examples, run as written.

Each section's blocks run in order, as one bash script in a temporary
directory, the way tests/test_docs_run.py runs the quickstart (its
`run_doc` does the running: free ports for 7401-7403, `set -e`, no process
left behind).  A `python` block whose first line is `# PATH` is the file
PATH as the doc shows it: the script writes it at that point.  One line is
added in front, and only this: `. .venv/bin/activate` (the doc's reader
has installed syncmesh with its extra in an activated virtualenv).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.test_docs_run import ROOT, assert_shown_and_printed, run_doc, section

SCHEMA_DOC = ROOT / "docs" / "schema.md"
FILE_BLOCK = re.compile(r"```python\n# (?P<path>[\w./]+)\n(?P<body>.*?)```", re.S)

pytestmark = pytest.mark.multiprocess


def with_files_written(text: str) -> str:
    """`text` with each `# PATH` python block turned into an sh block that writes PATH."""

    def as_sh(match: re.Match[str]) -> str:
        path, body = match["path"], match["body"]
        assert "SYNCMESH_DOC_EOF" not in body
        folder = str(Path(path).parent)
        mkdir = f"mkdir -p {folder}\n" if folder != "." else ""
        return f"```sh\n{mkdir}cat > {path} <<'SYNCMESH_DOC_EOF'\n{body}SYNCMESH_DOC_EOF\n```"

    return "```sh\n. .venv/bin/activate\n```\n" + FILE_BLOCK.sub(as_sh, text)


def test_every_example_file_is_written_by_the_runner() -> None:
    """The runner's own check: each file block of both sections becomes a written file."""
    doc = SCHEMA_DOC.read_text()
    shown = re.findall(r"```python\n# ([\w./]+)\n", doc)
    assert {"settings.py", "shop/models.py", "migrations/env.py"} <= set(shown)
    script = with_files_written(doc)
    assert "```python\n#" not in script
    assert all(f"cat > {path} <<'SYNCMESH_DOC_EOF'" in script for path in shown)


def test_the_django_example_runs_as_written(tmp_path: Path) -> None:
    django = section(SCHEMA_DOC.read_text(), "## Django", "## SQLAlchemy and Alembic")
    output = run_doc(with_files_written(django), tmp_path)
    assert_shown_and_printed(django, output, ["  Applying shop.0002_note_priority... OK"])
    assert "syncmesh: shop.db: " in output
    assert "problem:" not in output
    assert "health       ok" in output


def test_the_alembic_example_runs_as_written(tmp_path: Path) -> None:
    alembic = section(SCHEMA_DOC.read_text(), "## SQLAlchemy and Alembic", None)
    output = run_doc(with_files_written(alembic), tmp_path)
    assert "Running upgrade 0001 -> 0002" in output
    assert "syncmesh: items.db: " in output
    assert "problem:" not in output
    assert "health       ok" in output
