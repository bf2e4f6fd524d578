"""A site's own writes on its subject (node/origin.py): what it publishes, what is refused.

Property tests on random batches of rows written by several sites: what
`own_rows` keeps for a site is exactly its own content and is never refused
by `refuse_foreign` for that site; any row carrying another site's cell is
refused on that site's subject.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from syncmesh.model import Cell, ChangeBatch, RowChange, RowState, Stamp
from syncmesh.node.origin import own_rows, refuse_foreign

SITES = ("a", "b", "c")
COLUMNS = ("x", "y", "z")

stamps = st.builds(Stamp, st.integers(1, 1_000), st.sampled_from(SITES))


@st.composite
def row_changes(draw: st.DrawFn, key: int) -> RowChange:
    cl = draw(st.integers(1, 4))
    cells = {}
    if cl % 2 == 1:
        for column in COLUMNS:
            if draw(st.booleans()):
                cells[column] = Cell(draw(st.integers()), draw(stamps))
    return RowChange("t", (key,), RowState(cl, draw(stamps), cells))


@st.composite
def batches(draw: st.DrawFn) -> ChangeBatch:
    count = draw(st.integers(0, 8))
    rows = [draw(row_changes(key)) for key in range(count)]
    return ChangeBatch.of_rows("inc", 0, 10, 10, {"a": 5}, rows, {"t": COLUMNS})


def own_content(change: RowChange, site: str) -> bool:
    state = change.state
    cl_own = state.cl_stamp is not None and state.cl_stamp.site_id == site
    if not state.alive:
        return cl_own
    return cl_own or any(cell.stamp.site_id == site for cell in state.cells.values())


@given(batches(), st.sampled_from(SITES))
def test_a_site_publishes_exactly_its_own_content(batch: ChangeBatch, site: str) -> None:
    published = own_rows(batch, site)
    assert published.vector is None
    expected = [change.pk for change in batch.rows if own_content(change, site)]
    assert [change.pk for change in published.rows] == expected
    originals = {change.pk: change for change in batch.rows}
    for change in published.rows:
        assert all(cell.stamp.site_id == site for cell in change.state.cells.values())
        original = originals[change.pk].state
        assert (change.state.cl, change.state.cl_stamp) == (original.cl, original.cl_stamp)
        for column, cell in original.cells.items():
            if cell.stamp.site_id == site:
                assert change.state.cells[column] == cell


@given(batches(), st.sampled_from(SITES))
def test_what_a_site_publishes_is_never_refused_on_its_subject(
    batch: ChangeBatch, site: str
) -> None:
    published = own_rows(batch, site)
    kept, refused, example = refuse_foreign(published, site)
    assert (refused, example) == (0, "")
    assert kept.rows == published.rows


@given(batches(), st.sampled_from(SITES))
def test_rows_claiming_another_origin_are_refused(batch: ChangeBatch, site: str) -> None:
    kept, refused, _ = refuse_foreign(batch, site)
    foreign = [
        change
        for change in batch.rows
        if any(cell.stamp.site_id != site for cell in change.state.cells.values())
        or (
            change.state.cl_stamp is not None
            and change.state.cl_stamp.site_id != site
            and (not change.state.alive or not change.state.cells)
        )
    ]
    assert refused == len(foreign)
    assert [change.pk for change in kept.rows] == [
        change.pk for change in batch.rows if change not in foreign
    ]
    assert kept.vector is None


def test_a_refused_row_is_named_with_the_site_it_claims() -> None:
    claimed = Stamp(7, "b")
    rows = [
        RowChange("t", (1,), RowState(1, Stamp(5, "a"), {"x": Cell("ok", Stamp(5, "a"))})),
        RowChange("t", (2,), RowState(1, Stamp(5, "a"), {"y": Cell("no", claimed)})),
        RowChange("t", (3,), RowState(2, claimed, {})),
    ]
    batch = ChangeBatch.of_rows("inc", 0, 9, 9, None, rows, {"t": COLUMNS})
    kept, refused, example = refuse_foreign(batch, "a")
    assert refused == 2
    assert [change.pk for change in kept.rows] == [(1,)]
    assert example == "table 't', key (2): column 'y' claims a write of site b"
