"""The dashboard end to end: Debian's Chromium, headless, driven by Playwright.

Three real `syncmesh serve` processes on 127.0.0.1 (tests.nodeproc); the
browser opens `/` of one of them and the test waits, against deadlines,
for what an operator must see: the node and its two peers connected, a
write reflected in the row count, seq and throughput, a stopped peer shown
as down, and the node itself shown as not answering once it is stopped.
Playwright's `expect` polls the page, so nothing waits for a fixed time.

The browser is the system's (`apt-get install chromium`, as .ci/run does);
`playwright install` is never needed.  Without it the test fails, so a
machine that lacks it cannot pass the suite by skipping.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright

from syncmesh.model import SqlValue
from syncmesh.store.sqlite.integer_keys import SPEC_FIELD
from tests.helpers import sqlite3_shell
from tests.nodeproc import Cluster, NodeProcess, make_db, query, run_cli

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCHEMA = "CREATE TABLE items (id TEXT PRIMARY KEY, name TEXT, qty INTEGER)"
WAIT_MS = 20_000  # per state; the page polls every second


@pytest.fixture
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"the dashboard test needs Debian's Chromium at {CHROMIUM}:"
            " apt-get install chromium (.ci/run installs it)"
        )
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


def write(node: NodeProcess, sql: str, *params: SqlValue) -> None:
    """One transaction on the node's file, as an application would write."""
    with contextlib.closing(sqlite3.connect(node.db, timeout=10.0)) as connection, connection:
        connection.execute(sql, params)


def peer_row(page: Page, site_id: str) -> Locator:
    return page.locator(f'#peers tr[data-peer="{site_id}"]')


def peer_dot(page: Page, site_id: str) -> Locator:
    return page.locator(f'#topology g.peer[data-peer="{site_id}"]')


def expect_link(page: Page, site_id: str, link: str) -> None:
    expect(peer_row(page, site_id)).to_have_attribute("data-link", link, timeout=WAIT_MS)
    expect(peer_dot(page, site_id)).to_have_attribute("data-link", link, timeout=WAIT_MS)
    expect(page.locator(f'#topology line[data-peer="{site_id}"]')).to_have_class(
        re.compile(rf"\b{link}\b"), timeout=WAIT_MS
    )


@pytest.mark.multiprocess
def test_dashboard_shows_the_cluster_a_write_and_a_stopped_peer(
    cluster: Cluster, browser: Browser, tmp_path: Path
) -> None:
    """Goal: an operator sees peers, writes and failures on the page, live.

    Method: b dials a, c dials a and b; the browser shows c.  After the
    page shows both peers connected, one row is written at b and one at c:
    c's page must show 2 rows, a new seq, and both rows in the throughput
    (one captured here, one applied from a peer); before that, c's periodic
    verify must show both peers identical.  Then a is stopped (c's
    dialer to it backs off) and the page must show a as down while b stays
    connected, the node degraded with the reason /v1/health gives, and a's
    last error with its time; a started again, the page shows it connected,
    the node healthy and the error as past.  Last, c itself is stopped and
    the page must say the node is not answering.  Every request the page makes must go to c.
    """
    for name in "abc":
        make_db(tmp_path / f"{name}.db", SCHEMA)
    a = cluster.node("a")
    b = cluster.node("b", peers=[a])
    # c verifies the peers it dials every second (sync.verify_interval_s), and
    # calls a peer down after 1 s without a session (health.peer_down_s_max).
    c = cluster.node(
        "c",
        peers=[a, b],
        env={"SYNCMESH_SYNC_VERIFY_INTERVAL_S": "1", "SYNCMESH_HEALTH_PEER_DOWN_S_MAX": "1"},
    )
    cluster.start(a, b, c)
    sites = {node.name: str(node.status()["site_id"]) for node in (a, b, c)}

    page = browser.new_page()
    elsewhere: list[str] = []
    page.on(
        "request",
        lambda request: None if request.url.startswith(c.url) else elsewhere.append(request.url),
    )
    script_errors: list[str] = []
    page.on("pageerror", lambda error: script_errors.append(str(error)))
    page.goto(f"{c.url}/")

    expect(page.locator("#node-site")).to_have_text(sites["c"], timeout=WAIT_MS)
    expect(page.locator("#connection")).to_have_attribute("data-state", "live", timeout=WAIT_MS)
    expect_link(page, sites["a"], "connected")
    expect_link(page, sites["b"], "connected")
    expect(page.locator("#node-health")).to_have_attribute("data-health", "healthy")
    rows = page.locator('#tables tr[data-table="items"] td.num')
    expect(rows).to_have_text("0")
    # The ledger comes with another change: either answer is a working page.
    expect(page.locator("#conflicts-note")).to_have_text(
        re.compile("conflict ledger not available|no conflicts recorded"), timeout=WAIT_MS
    )
    expect(page.locator("#quarantine-note")).to_have_text("no quarantined rows")
    expect(page.locator("#node-tombstones")).to_have_text("0 waiting, 0 collected")
    for site in (sites["a"], sites["b"]):
        expect(peer_row(page, site).locator('[data-field="verified"]')).to_contain_text(
            "identical", timeout=WAIT_MS
        )
    seq_before = page.locator("#node-seq").inner_text()

    write(b, "INSERT INTO items VALUES ('from-b', 'b', 1)")
    write(c, "INSERT INTO items VALUES ('from-c', 'c', 2)")
    expect(rows).to_have_text("2", timeout=WAIT_MS)
    expect(page.locator("#node-seq")).not_to_have_text(seq_before, timeout=WAIT_MS)
    expect(page.locator("#throughput-captured")).to_have_text("1", timeout=WAIT_MS)
    expect(page.locator("#throughput-applied")).to_have_text("1", timeout=WAIT_MS)
    expect(page.locator('#throughput polyline[data-series="applied_rows"]')).to_have_count(1)

    a.stop()
    # Behind the engine's back, a loses b's row while it is down: a's vector still
    # claims it, so no feed brings it back; c's periodic verify finds it and merges it
    # into a (sync.verify_repair), and the page says so once a is back.
    sqlite3_shell(
        a.db,
        "BEGIN; UPDATE _syncmesh_state SET applying = 1;"
        " DELETE FROM items WHERE id = 'from-b';"
        " DELETE FROM _syncmesh_shadow_items WHERE k0 = 'from-b';"
        " UPDATE _syncmesh_state SET applying = 0; COMMIT;",
    )
    expect_link(page, sites["a"], "down")
    expect_link(page, sites["b"], "connected")
    # The page's verdict is the node's own: the reason /v1/health answers 503 with.
    expect(page.locator("#node-health")).to_have_attribute(
        "data-health", "degraded", timeout=WAIT_MS
    )
    expect(page.locator("#node-problems")).to_contain_text(f"peer {sites['a']}", timeout=WAIT_MS)
    expect(page.locator("#node-problems")).to_contain_text("has not kept a session")
    health = c.health()
    assert health[0] == 503
    assert any(f"peer {sites['a']}" in reason for reason in health[1]["reasons"])
    # The peer's last error carries its time, and on plain http no "ssl:default".
    last_error = peer_row(page, sites["a"]).locator('[data-field="last-error"]')
    expect(last_error).to_contain_text("cannot connect", timeout=WAIT_MS)
    expect(last_error).to_contain_text(re.compile(r"\(at .*ago\)"))
    expect(last_error).not_to_contain_text("ssl:default")

    # a back: c streams with it again, the page says healthy and the error is past.
    a.start()
    a.wait_until_ready()
    expect_link(page, sites["a"], "connected")
    expect(page.locator("#node-health")).to_have_attribute(
        "data-health", "healthy", timeout=WAIT_MS
    )
    expect(last_error).to_contain_text(re.compile(r"^past: .*cannot connect"), timeout=WAIT_MS)
    verified_a = peer_row(page, sites["a"]).locator('[data-field="verified"]')
    expect(verified_a).to_contain_text("1 rows repaired since start", timeout=WAIT_MS)
    expect(verified_a).to_contain_text("identical")
    assert query(a.db, "SELECT id FROM items WHERE id = 'from-b'") == [("from-b",)]

    c.stop()
    expect(page.locator("#connection")).to_have_attribute("data-state", "down", timeout=WAIT_MS)
    expect(page.locator("#connection")).to_contain_text("not answering")

    assert not script_errors, script_errors
    assert not elsewhere, f"the page fetched from elsewhere than the node: {elsewhere}"


@pytest.mark.multiprocess
def test_the_dashboard_sends_the_api_token(
    cluster: Cluster, browser: Browser, tmp_path: Path
) -> None:
    """Goal: with the API behind a token, the page works from `/#token=...`, keeps the
    token out of the address bar (and the fragment's other settings in it), and sends it
    with every data request; without it the page asks once, and shows the node as not
    answering."""
    token = "dashboard-token-0123456789abcdef"
    make_db(tmp_path / "a.db", SCHEMA)
    a = cluster.node(
        "a",
        env={"SYNCMESH_API_REQUIRE_TOKEN": "true", "SYNCMESH_API_TOKEN": token},
        token=token,
    )
    cluster.start(a)
    site = str(a.status()["site_id"])

    page = browser.new_page()
    sent: list[tuple[str, str | None]] = []
    page.on(
        "request",
        lambda request: sent.append((request.url, request.headers.get("authorization"))),
    )
    page.goto(f"{a.url}/#token={token}&fleet_rows=5")
    expect(page.locator("#node-site")).to_have_text(site, timeout=WAIT_MS)
    expect(page.locator("#connection")).to_have_attribute("data-state", "live", timeout=WAIT_MS)
    assert token not in page.url
    # The fragment's other settings stay in the address (docs/nats.md).
    assert page.url.endswith("/#fleet_rows=5"), page.url
    data = [(url, auth) for url, auth in sent if "/v1/" in url or "/metrics" in url]
    assert data, sent
    assert all(auth == f"Bearer {token}" for _url, auth in data), data

    anonymous = browser.new_context().new_page()
    asked: list[str] = []

    def dismiss(dialog: Any) -> None:
        asked.append(dialog.message)
        dialog.dismiss()

    anonymous.on("dialog", dismiss)
    anonymous.goto(f"{a.url}/")
    expect(anonymous.locator("#connection")).to_have_attribute(
        "data-state", "down", timeout=WAIT_MS
    )
    assert len(asked) == 1, asked
    assert "token" in asked[0]


@pytest.mark.multiprocess
def test_dashboard_names_a_peers_schema_differences(
    cluster: Cluster, browser: Browser, tmp_path: Path
) -> None:
    """Goal: a peer that tracks a column this node lacks streams (ADR 0013: no refusal),
    and the page names the table and the column in that peer's row."""
    make_db(tmp_path / "a.db", SCHEMA)
    make_db(tmp_path / "b.db", "CREATE TABLE items (id TEXT PRIMARY KEY, name TEXT)")
    a = cluster.node("a")
    b = cluster.node("b", peers=[a])
    cluster.start(a, b)
    site_a = str(a.status()["site_id"])
    page = browser.new_page()
    page.goto(f"{b.url}/")
    expect_link(page, site_a, "connected")
    expect(peer_row(page, site_a).locator('[data-field="schema-differences"]')).to_have_text(
        f"table 'items': column 'qty' only at site {site_a}", timeout=WAIT_MS
    )


def test_the_dashboard_names_an_integer_key_tracked_before_the_refusal(
    cluster: Cluster, browser: Browser, tmp_path: Path
) -> None:
    """Goal: the operator of a file tracked by an older version sees its risky key on the page.

    Method: `books` (an INTEGER PRIMARY KEY) is tracked with the opt-in and
    the opt-in is removed again with the sqlite3 shell: the file as a
    version without the refusal left it (issue 14, part 5).  The page must
    list the warning, with the fix, under the node's facts, and still call
    the node healthy (a warning is not a health reason).  After `syncmesh
    track --allow-integer-keys` records the opt-in, the list empties.
    """
    db = tmp_path / "a.db"
    sqlite3_shell(db, "CREATE TABLE books (id INTEGER PRIMARY KEY, title TEXT)")
    run_cli("init", str(db))
    run_cli("track", str(db), "books", "--allow-integer-keys")
    sqlite3_shell(db, f"UPDATE _syncmesh_tables SET spec = json_remove(spec, '$.{SPEC_FIELD}')")
    a = cluster.node("a", db)
    cluster.start(a)
    page = browser.new_page()
    script_errors: list[str] = []
    page.on("pageerror", lambda error: script_errors.append(str(error)))
    page.goto(f"{a.url}/")

    warnings = page.locator("#node-warnings li")
    expect(warnings).to_have_count(1, timeout=WAIT_MS)
    expect(warnings).to_contain_text(
        "table 'books': its primary key 'id' is an INTEGER PRIMARY KEY"
    )
    expect(warnings).to_contain_text("UUIDField(primary_key=True, default=uuid.uuid4")
    expect(warnings).to_contain_text("--allow-integer-keys")
    expect(page.locator("#node-health")).to_have_attribute("data-health", "healthy")
    expect(page.locator("#node-problems li")).to_have_count(0)

    run_cli("track", str(db), "books", "--allow-integer-keys")
    expect(warnings).to_have_count(0, timeout=WAIT_MS)
    assert not script_errors, script_errors
