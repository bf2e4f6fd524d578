"""A site's own writes on its subject (node/origin.py): what it publishes, what is refused.

Property tests on random batches of rows written by several sites: what
`own_rows` keeps for a site is exactly its own content and is never refused
by `refuse_foreign` for that site; any row carrying another site's cell is
refused on that site's subject.  The same for a relay subject (ADR 0014,
"Relaying WebSocket peers"): `relay_rows` keeps exactly the content of the
sites off the stream, never refused by `refuse_fleet_claims`, which refuses
every row claiming a fleet site's write.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from syncmesh.model import Cell, ChangeBatch, RowChange, RowState, Stamp
from syncmesh.node.origin import own_rows, refuse_fleet_claims, refuse_foreign, relay_rows

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


fleets = st.sets(st.sampled_from(SITES), min_size=1, max_size=len(SITES) - 1)


def relayed_content(change: RowChange, fleet: set[str]) -> bool:
    return any(own_content(change, site) for site in SITES if site not in fleet)


@given(batches(), fleets)
def test_a_relayer_publishes_exactly_the_content_of_sites_off_the_stream(
    batch: ChangeBatch, fleet: set[str]
) -> None:
    relayed = relay_rows(batch, fleet)
    assert relayed.vector is None
    assert [change.pk for change in relayed.rows] == [
        change.pk for change in batch.rows if relayed_content(change, fleet)
    ]
    originals = {change.pk: change for change in batch.rows}
    for change in relayed.rows:
        assert all(cell.stamp.site_id not in fleet for cell in change.state.cells.values())
        original = originals[change.pk].state
        # The life (causal length) travels with the cells, whoever stamped it.
        assert (change.state.cl, change.state.cl_stamp) == (original.cl, original.cl_stamp)
        for column, cell in original.cells.items():
            if cell.stamp.site_id not in fleet:
                assert change.state.cells[column] == cell


@given(batches(), fleets)
def test_what_a_relayer_publishes_is_never_refused_on_its_relay_subject(
    batch: ChangeBatch, fleet: set[str]
) -> None:
    relayed = relay_rows(batch, fleet)
    kept, refused, example = refuse_fleet_claims(relayed, fleet)
    assert (refused, example) == (0, "")
    assert kept.rows == relayed.rows


@given(batches(), fleets)
def test_rows_claiming_a_fleet_sites_write_are_refused_on_a_relay_subject(
    batch: ChangeBatch, fleet: set[str]
) -> None:
    kept, refused, _ = refuse_fleet_claims(batch, fleet)
    forged = [
        change
        for change in batch.rows
        if any(cell.stamp.site_id in fleet for cell in change.state.cells.values())
        or (
            change.state.cl_stamp is not None
            and change.state.cl_stamp.site_id in fleet
            and (not change.state.alive or not change.state.cells)
        )
    ]
    assert refused == len(forged)
    assert [change.pk for change in kept.rows] == [
        change.pk for change in batch.rows if change not in forged
    ]


def test_a_row_relayed_with_a_fleet_sites_life_keeps_it_and_a_claimed_delete_is_named() -> None:
    fleet_life, relayed = Stamp(5, "a"), Stamp(7, "c")
    rows = [
        # c (off the stream) updated a row that fleet site a inserted.
        RowChange("t", (1,), RowState(1, fleet_life, {"x": Cell("c's", relayed)})),
        RowChange("t", (2,), RowState(2, Stamp(8, "a"), {})),
    ]
    batch = ChangeBatch.of_rows("inc", 0, 9, 9, None, rows, {"t": COLUMNS})
    assert [change.pk for change in relay_rows(batch, {"a", "b"}).rows] == [(1,)]
    kept, refused, example = refuse_fleet_claims(batch, {"a", "b"})
    assert refused == 1
    assert [change.pk for change in kept.rows] == [(1,)]
    assert example == "table 't', key (2): a delete claimed for site a"
