"""The docs stay true to the files: the module tree and the links between pages.

docs/architecture.md lists the package one line per module; a module added,
moved or removed without the tree changing fails here.  A link to a page or
a section that no longer exists (docs/design.md was retired to a pointer)
fails here too.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ARCHITECTURE = ROOT / "docs" / "architecture.md"
PACKAGE = ROOT / "src" / "syncmesh"
INDENT = 2  # spaces per level of a tree block
TREE_ENTRY = re.compile(r"(?P<indent> *)(?P<name>[^\s]+)(?: +.*)?$")
LINK = re.compile(r"\[[^\]]*\]\((?P<target>[^)\s]+)\)")


def tree_blocks(markdown: str) -> list[list[str]]:
    """The ```text blocks whose first line is a directory (`name/`): the module trees."""
    blocks = re.findall(r"^```text\n(.*?)^```$", markdown, flags=re.MULTILINE | re.DOTALL)
    return [block.splitlines() for block in blocks if block.split("\n", 1)[0].endswith("/")]


def tree_paths(lines: list[str]) -> set[str]:
    """The paths a tree block names, relative to its first line's parent ("a/b/c.py", "a/")."""
    parents: list[str] = []
    paths = set()
    for number, line in enumerate(lines, 1):
        match = TREE_ENTRY.fullmatch(line)
        assert match, f"tree line {number} is not `name  description`: {line!r}"
        depth, remainder = divmod(len(match["indent"]), INDENT)
        assert remainder == 0, f"tree line {number} is not indented by {INDENT} spaces a level"
        assert depth <= len(parents), f"tree line {number} is indented below no directory"
        del parents[depth:]
        path = "".join(parents) + match["name"]
        paths.add(path)
        if path.endswith("/"):
            parents.append(match["name"])
    return paths


def files_on_disk(directory: Path) -> set[str]:
    """Every Python module under `directory`, and every directory that holds one."""
    found = set()
    for module in directory.rglob("*.py"):
        relative = module.relative_to(directory.parent)
        found.add(relative.as_posix())
        found.update(f"{parent.as_posix()}/" for parent in relative.parents if parent.parts)
    return found


def test_a_tree_block_is_read_as_paths() -> None:
    lines = [
        "pkg/",
        "  __init__.py       the package",
        "  sub/",
        "    deep.py         one level down",
        "  top.py",
    ]
    assert tree_paths(lines) == {
        "pkg/",
        "pkg/__init__.py",
        "pkg/sub/",
        "pkg/sub/deep.py",
        "pkg/top.py",
    }


def test_the_module_tree_in_architecture_md_matches_the_files() -> None:
    """Goal: architecture.md's tree names every module of src/syncmesh, and nothing else.

    Method: the tree blocks of the page are read into paths and compared
    with the Python files (and their directories) on disk; a listed entry
    that is not Python (a directory of static files) must exist.
    """
    [tree] = [block for block in tree_blocks(ARCHITECTURE.read_text()) if block[0] == "syncmesh/"]
    listed = tree_paths(tree)
    on_disk = files_on_disk(PACKAGE)
    missing = sorted(on_disk - listed)
    assert not missing, f"modules on disk that docs/architecture.md's tree lacks: {missing}"
    absent = sorted(path for path in listed - on_disk if not (PACKAGE.parent / path).exists())
    assert not absent, f"entries of docs/architecture.md's tree that do not exist: {absent}"


def heading_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives a page's headings.

    Lower case, punctuation dropped, spaces as hyphens, `-n` for repeats.
    """
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    for line in outside_code(markdown):
        heading = re.match(r"#{1,6}\s+(.*)", line)
        if heading:
            slug = re.sub(r"[^\w\- ]", "", heading[1].strip().lower()).replace(" ", "-")
            repeat = seen.get(slug, 0)
            seen[slug] = repeat + 1
            anchors.add(slug if repeat == 0 else f"{slug}-{repeat}")
    return anchors


def outside_code(markdown: str) -> list[str]:
    lines, fenced = [], False
    for line in markdown.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def broken_links(page: Path, root: Path = ROOT) -> list[str]:
    """Relative links of `page` to a file that does not exist, or to a section it lacks.

    Each problem names the page relative to `root`.
    """
    broken = []
    for line in outside_code(page.read_text()):
        for match in LINK.finditer(line):
            target = match["target"]
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            destination = page.parent / path if path else page
            if not destination.exists():
                broken.append(f"{page.relative_to(root)}: {target} (no such file)")
            elif (
                anchor
                and destination.suffix == ".md"
                and anchor not in heading_anchors(destination.read_text())
            ):
                broken.append(f"{page.relative_to(root)}: {target} (no such section)")
    return broken


def test_the_link_check_finds_what_it_looks_for(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other\n\n## The `first` part\n\n## Other\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](other.md#the-first-part) [ok](other.md#other-1) [ok](#mine) [web](https://x.org/#a)\n"
        "# Mine\n"
        "[gone](gone.md) [no section](other.md#second)\n"
        "```\n[in code](nowhere.md)\n```\n"
    )
    assert broken_links(page, tmp_path) == [
        "page.md: gone.md (no such file)",
        "page.md: other.md#second (no such section)",
    ]


def test_no_doc_links_to_a_page_or_section_that_does_not_exist() -> None:
    pages = [
        *sorted((ROOT / "docs").rglob("*.md")),
        *sorted(PACKAGE.rglob("*.md")),
        *sorted(ROOT.glob("*.md")),
    ]
    assert len(pages) > 20  # the glob found the docs
    broken = [problem for page in pages for problem in broken_links(page)]
    assert not broken, "\n".join(broken)
