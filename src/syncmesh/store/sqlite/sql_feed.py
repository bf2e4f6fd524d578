"""SQL of the change feed for one table: reading a batch, its seq groups, a peer's lag."""

from __future__ import annotations

from syncmesh.store.sqlite.names import TableNames


class FeedSql:
    """Statements `feed` runs on one table's shadow rows, ordered by seq."""

    def __init__(self, names: TableNames) -> None:
        shadow, keys = names.shadow, names.shadow_keys
        self.slots = names.slots
        # The shadow rows after ? up to ?, joined with their values.
        self.prefix = f"{names.select} WHERE s.seq > ? AND s.seq <= ?"
        self.feed_sql = f"{self.prefix} ORDER BY s.seq"
        self.seqs_sql = f"SELECT seq FROM {shadow} WHERE seq > ? ORDER BY seq LIMIT ?"
        self.rows_after_sql = f"SELECT count(*) FROM (SELECT 1 FROM {shadow} WHERE seq > ? LIMIT ?)"
        # The first seq in (?, ?] holding a key with uncaptured writes.
        self.first_pending_seq_sql = (
            f"SELECT min(seq) FROM {shadow} WHERE seq > ? AND seq <= ?"
            f" AND ({keys}) IN (SELECT {keys} FROM {names.log})"
        )
        self.group_keys_sql = f"SELECT {keys} FROM {shadow} WHERE seq = ? ORDER BY {keys}"
        self.move_sql = f"UPDATE {shadow} SET seq = ? WHERE {names.keys_where}"

    def feed_uncovered_sql(self, bounds: dict[int, int]) -> tuple[str, list[int]]:
        """`feed_sql` that skips, in SQLite, rows a receiver holds entirely.

        `bounds` maps a site ordinal to the receiver's vector entry for it.
        Which cells of a kept row the receiver lacks is decided afterwards
        (merge.missing_rows); this only spares building rows that would all
        be dropped, such as a relay's rows for the peer they came from.
        """
        if not bounds:
            return self.feed_sql, []
        params: list[int] = []
        for ordinal, bound in bounds.items():
            params.extend((ordinal, bound))
        whens = " ".join("WHEN ? THEN ?" for _ in bounds)

        def uncovered(hlc: str, site: str) -> str:
            return f"{hlc} > CASE {site} {whens} ELSE -1 END"

        cells = [uncovered(f"s.h{slot}", f"s.s{slot}") for slot in self.slots]
        all_params = list(params)
        for _ in cells:
            all_params.extend(params)
        alive_and_new_cell = f" OR (s.cl % 2 = 1 AND ({' OR '.join(cells)}))" if cells else ""
        sql = (
            f"{self.prefix} AND ({uncovered('s.cl_hlc', 's.cl_site')}{alive_and_new_cell})"
            " ORDER BY s.seq"
        )
        return sql, all_params
