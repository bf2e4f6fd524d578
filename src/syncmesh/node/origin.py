"""Which rows of a batch are a site's own writes: what it publishes, what it may claim.

On a fleet stream (docs/adr/0014-nats-stream-model.md) a site's subject is
its identity: the NATS server lets it publish only there.  So a site
publishes only its own writes (`own_rows`), and a receiver refuses, on a
site's subject, any row that claims another origin (`refuse_foreign`).

A row's *own content* for site S is the cells S stamped, and its causal
length if S stamped that (S inserted, deleted or re-inserted the row).  A
live row whose causal length another site stamped may still carry S's
cells: S wrote columns of a row someone else inserted.  It must carry that
causal length, the life its cells belong to (a receiver on an older life
would otherwise drop them), and that is no claim of a write: the causal
length's stamp only says which life.  A deleted row carries no cells, so
its causal length is the whole of it and must be S's own.

A node on the stream also relays the writes of its WebSocket peers that
are not on it, on a relay subject of its own (`relay_rows`): the same cut
with a set of writers, the sites off the stream.  There a receiver refuses
every row that claims a fleet site's write (`refuse_fleet_claims`): those
come only on that site's own subject.

Pure functions on the positional rows of `model.TableRows`; no I/O.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Collection

from syncmesh.model import CELL_FIELDS, ChangeBatch, SqlValue, TableRows


def own_rows(batch: ChangeBatch, site_id: str) -> ChangeBatch:
    """`batch` with only `site_id`'s own content: other sites' cells blanked, empty rows gone.

    Same slice and sites table; the vector is dropped (a vector claims
    the sender's whole state, and the stream carries only its own writes).
    """
    return rows_of(batch, {site_id})


def relay_rows(batch: ChangeBatch, fleet: Collection[str]) -> ChangeBatch:
    """`batch` with only the content of sites *not* in `fleet`: what a mixed node relays.

    A site on the fleet stream publishes its own writes on its own subject;
    a WebSocket-only peer of a mixed node has no subject, so the mixed node
    publishes that peer's content on its relay subject (ADR 0014, "Relaying
    WebSocket peers").  Content of a fleet site is left out: it is that
    site's to publish, and receivers refuse it on a relay subject.
    """
    return rows_of(batch, {site for site in batch.sites if site not in fleet})


def rows_of(batch: ChangeBatch, writers: Collection[str]) -> ChangeBatch:
    """`batch` with only the content of `writers`: the others' cells blanked, empty rows gone.

    A live row keeps its causal length whoever stamped it when one of its
    cells is kept (the life the cells belong to); a deleted row is kept
    only when one of `writers` stamped its causal length.
    """
    own = {index for index, site in enumerate(batch.sites) if site in writers}
    if not own:
        return dataclasses.replace(batch, tables=(), vector=None)
    tables = []
    for table in batch.tables:
        rows = [row for row in (_own_part(table, raw, own) for raw in table.rows) if row]
        if rows:
            tables.append(dataclasses.replace(table, rows=rows))
    return dataclasses.replace(batch, tables=tuple(tables), vector=None)


def _own_part(table: TableRows, row: list[SqlValue], own: set[int]) -> list[SqlValue] | None:
    base = table.key_count
    cl, cl_site = row[base], row[base + 2]
    cl_own = cl_site in own
    if cl % 2 == 0:  # type: ignore[operator]
        return list(row) if cl_own else None
    kept = list(row)
    own_cells = 0
    for at in range(base + 3, table.width, CELL_FIELDS):
        if kept[at + 1] is None:
            continue
        if kept[at + 2] in own:
            own_cells += 1
        else:
            kept[at] = kept[at + 1] = kept[at + 2] = kept[at + 3] = None
    return kept if cl_own or own_cells else None


def refuse_foreign(batch: ChangeBatch, site_id: str) -> tuple[ChangeBatch, int, str]:
    """`batch` without the rows that claim an origin other than `site_id`.

    Returns the batch of the rows kept (and no vector), how many were
    refused, and the first refused row described in words (for the log).
    A row is refused when a cell names another site, when a deleted row's
    causal length does, or when a live row whose causal length names
    another site carries no cell of `site_id` (it claims nothing of its own).
    """
    return _refuse(batch, lambda site: site == site_id, f"site {site_id}")


def refuse_fleet_claims(batch: ChangeBatch, fleet: Collection[str]) -> tuple[ChangeBatch, int, str]:
    """`batch` without the rows that claim a write of a site in `fleet`: a relay subject's check.

    A relayer may publish only the content of sites that are not on the
    stream (`relay_rows`); a fleet site's writes come on its own subject,
    which only it may publish on.  So on a relay subject a cell or a
    delete stamped by a fleet site (or by no site we can name) is a
    forgery, refused as `refuse_foreign` refuses one on a site's subject.
    """
    return _refuse(
        batch, lambda site: site is not None and site not in fleet, "a site off the stream"
    )


def _refuse(
    batch: ChangeBatch, may_write: Callable[[str | None], bool], who: str
) -> tuple[ChangeBatch, int, str]:
    refused = 0
    example = ""
    tables = []
    for table in batch.tables:
        kept = []
        for row in table.rows:
            problem = _foreign_claim(table, row, batch.sites, may_write, who)
            if problem is None:
                kept.append(row)
                continue
            refused += 1
            if not example:
                key = ", ".join(repr(value) for value in row[: table.key_count])
                example = f"table {table.table!r}, key ({key}): {problem}"
        if kept:
            tables.append(dataclasses.replace(table, rows=kept))
    return dataclasses.replace(batch, tables=tuple(tables), vector=None), refused, example


def _foreign_claim(
    table: TableRows,
    row: list[SqlValue],
    sites: tuple[str, ...],
    may_write: Callable[[str | None], bool],
    who: str,
) -> str | None:
    base = table.key_count
    cl, cl_site = row[base], row[base + 2]
    cl_owner = _site_at(sites, cl_site)
    own_cells = 0
    for index, at in enumerate(range(base + 3, table.width, CELL_FIELDS)):
        if row[at + 1] is None:
            continue
        writer = _site_at(sites, row[at + 2])
        if not may_write(writer):
            return f"column {table.columns[index]!r} claims a write of site {writer}"
        own_cells += 1
    if cl_owner is None or may_write(cl_owner):
        return None
    if isinstance(cl, int) and cl % 2 == 0:
        return f"a delete claimed for site {cl_owner}"
    if not own_cells:
        return f"a row of site {cl_owner} with no write of {who}"
    return None


def _site_at(sites: tuple[str, ...], index: SqlValue) -> str | None:
    if isinstance(index, int) and 0 <= index < len(sites):
        return sites[index]
    return None


def row_token(table: str, key: list[SqlValue]) -> str:
    """A subject token naming one row of one table: 32 hex digits of a SHA-256.

    `repr` of str, int, float, bytes and None is exact and stable across
    Python versions, so every site derives the same token for the same row.
    """
    text = repr((table, tuple(key)))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def one_row_batches(batch: ChangeBatch) -> list[tuple[str, ChangeBatch]]:
    """Each row of `batch` as a batch of its own, with the row's token (`row_token`).

    What the compacted state stream holds: one message per site and row, so
    the stream's per-subject limit of 1 keeps each site's latest copy.
    """
    found = []
    for table in batch.tables:
        for row in table.rows:
            alone = dataclasses.replace(table, rows=[row])
            found.append(
                (
                    row_token(table.table, row[: table.key_count]),
                    dataclasses.replace(batch, tables=(alone,), vector=None),
                )
            )
    return found


def own_stamp_max(batch: ChangeBatch, site_id: str) -> int:
    """The greatest stamp `site_id` put in `batch` (a causal length's or a cell's); 0 if none.

    What a message on a site's own subject claims of that site's writes:
    the restore check of a site reading its own subject (node/fleet_restore.py).
    """
    own = {index for index, site in enumerate(batch.sites) if site == site_id}
    greatest = 0
    for table in batch.tables:
        base = table.key_count
        for row in table.rows:
            life = row[base + 1]
            if isinstance(life, int) and row[base + 2] in own:
                greatest = max(greatest, life)
            for at in range(base + 3, table.width, CELL_FIELDS):
                stamp = row[at + 1]
                if isinstance(stamp, int) and row[at + 2] in own:
                    greatest = max(greatest, stamp)
    return greatest
