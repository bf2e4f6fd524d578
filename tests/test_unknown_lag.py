"""A lag or age computed from a 0 stamp is "not known yet", never the time since 1970.

New-user report: in the first seconds after start, `status` said "held back
by site X (20795 d behind)" of a healthy peer: the peer had not said yet
that it holds any of an origin's writes (a 0 stamp), and the lag was taken
from 1970.  The same 0 reached the peers' `lag_ms` (a cursor of 0: nothing
of the peer's feed applied yet), `/metrics` and the dashboard.  Here two
real `serve` processes, with membership gossip slowed down so that the
first seconds last: status text, JSON, /metrics and the dashboard in
Chromium; and the lag function and the text of a peer not heard yet.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect

from syncmesh.cli.status import live_report
from syncmesh.cli.view import lag
from syncmesh.clock import feed_lag_ms, pack
from tests.helpers import run_cli, sqlite3_shell
from tests.nodeproc import Cluster, make_db, wait_for
from tests.test_dashboard import WAIT_MS, browser  # noqa: F401 (the fixture)

SCHEMA = "CREATE TABLE t (id TEXT PRIMARY KEY, v TEXT)"
CLI_TIMEOUT_S = 30.0
# No gossip round in the test's lifetime: a's view of b stays as in b's first seconds.
FIRST_SECONDS = {"SYNCMESH_LIFECYCLE_INTERVAL_S": "600"}
EPOCH_DAYS = re.compile(r"\b2\d{4} d\b")  # "20795 d": days since 1970


@pytest.mark.multiprocess
def test_a_member_not_heard_of_yet_is_not_20795_days_behind(
    cluster: Cluster,
    tmp_path: Path,
    browser: Browser,  # noqa: F811
) -> None:
    for name in "ab":
        make_db(tmp_path / f"{name}.db", SCHEMA)
    sqlite3_shell(tmp_path / "a.db", "INSERT INTO t VALUES ('x', 'written before b came')")
    a = cluster.node("a", env=FIRST_SECONDS)
    b = cluster.node("b", peers=[a], env=FIRST_SECONDS)
    cluster.start(a, b)
    b_site = json.loads(run_cli("status", str(tmp_path / "b.db"), "--json").stdout)["store"][
        "site_id"
    ]
    wait_for(
        lambda: a.status()["store"]["lifecycle"]["holding_back"] == b_site,
        timeout_s=10,
        what="a to count b as a member holding collection back",
    )

    text = run_cli("status", str(tmp_path / "a.db"), timeout_s=CLI_TIMEOUT_S)
    said = " ".join(text.stdout.split())
    assert f"held back by site {b_site} (how far behind is not known yet" in said, said
    assert not EPOCH_DAYS.search(said), said

    document = json.loads(
        run_cli("status", str(tmp_path / "a.db"), "--json", timeout_s=CLI_TIMEOUT_S).stdout
    )
    assert document["store"]["lifecycle"]["holding_back_ms"] is None

    with a.open_url("/metrics", 5.0) as answer:
        metrics = answer.read().decode()
    assert "syncmesh_holding_back_ms{" not in metrics, "no series for a lag not known"
    for value in re.findall(r"^syncmesh_stability_frontier_ms\{[^}]*\} (\S+)$", metrics, re.M):
        assert float(value) > 0, metrics

    page = browser.new_page()
    script_errors: list[str] = []
    page.on("pageerror", lambda error: script_errors.append(str(error)))
    page.goto(f"{a.url}/")
    holding = page.locator("#node-holding-back")
    expect(holding).to_contain_text("how far behind: not known yet", timeout=WAIT_MS)
    expect(holding).not_to_contain_text(" d behind")
    unknown = page.evaluate(
        """async () => {
            const { formatDuration } = await import("./dashboard/format.js");
            return [formatDuration(null), formatDuration(undefined), formatDuration(0)];
        }"""
    )
    assert unknown == ["not known yet", "not known yet", "0 s"]
    assert not script_errors, script_errors


def test_a_feed_with_nothing_applied_yet_has_no_lag_to_tell() -> None:
    head = pack(1_796_000_000_000, 0)
    assert feed_lag_ms(0, head) is None
    assert feed_lag_ms(0, 0) == 0
    assert feed_lag_ms(head, head) == 0
    assert feed_lag_ms(pack(1_796_000_000_000 - 1_500, 0), head) == 1_500
    assert lag(None) == "not known yet"
    assert lag(1_500) == "1.5 s"


def test_max_lag_counts_a_peer_not_applied_yet_as_a_problem_in_words() -> None:
    peer = {
        "site_id": "b" * 32,
        "address": "127.0.0.1:7402",
        "state": "streaming",
        "last_error": "",
        "lag_ms": None,
    }
    problems = live_report(
        {"peers": [peer], "health": {"ok": True, "reasons": []}}, as_json=True, max_lag_s=60
    )
    assert problems == [
        f"peer {'b' * 32}: lag not known yet (nothing of its feed applied here yet)"
    ]
