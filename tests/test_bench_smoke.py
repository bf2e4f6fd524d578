"""The benchmark scenarios run end to end at tiny sizes, so their code cannot rot.

No figure is checked against a target here (speed belongs in bench/, not in
tests): only that every scenario ran and reported samples.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import bench.__main__ as bench_main
from bench import idle, latency, peers

pytestmark = pytest.mark.multiprocess


def test_new_scenarios_run_and_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(idle, "QUIET_S", 0.2)
    out = tmp_path / "report.json"
    status = bench_main.main(
        [
            "bootstrap",
            "wire",
            "mixed",
            "idle",
            "--quick",
            "--bulk-rows",
            "2000",
            "--mixed-seconds",
            "1.5",
            "--mixed-rate",
            "20",
            "--mixed-ops",
            "5",
            "--idle-seconds",
            "0.5",
            "--out",
            str(out),
        ]
    )
    assert status == 0
    report = json.loads(out.read_text())
    assert report["meta"]["quick"] is True
    scenarios = report["scenarios"]
    assert set(scenarios) == {"bootstrap", "wire", "mixed", "idle"}
    for name, scenario in scenarios.items():
        for figure in scenario["figures"]:
            assert figure["samples"], (name, figure["name"])
    wire = {figure["name"]: figure for figure in scenarios["wire"]["figures"]}
    both_ways = next(figure for label, figure in wire.items() if "bytes both ways" in label)
    assert both_ways["median"] > 0
    assert both_ways["baseline"]["median"] == 20 * 100  # 1% of 2,000 rows, 100 bytes each
    mixed = {figure["name"]: figure for figure in scenarios["mixed"]["figures"]}
    assert mixed["markers not visible within 10 s"]["median"] == 0


def test_all_names_every_scenario_but_profile() -> None:
    assert bench_main.scenarios_named([]) == list(bench_main.ALL_SCENARIOS)
    assert bench_main.scenarios_named(["all", "profile"]) == [*bench_main.ALL_SCENARIOS, "profile"]
    with pytest.raises(SystemExit):
        bench_main.scenarios_named(["nonsense"])


def test_the_verify_scenario_runs_and_finds_exactly_the_rows_changed(tmp_path: Path) -> None:
    out = tmp_path / "verify.json"
    arguments = ["verify", "--repeats", "1", "--upkeep-rows", "1000", "--verify-rows", "3000"]
    status = bench_main.main([*arguments, "--out", str(out)])
    assert status == 0
    figures = {
        figure["name"]: figure
        for figure in json.loads(out.read_text())["scenarios"]["verify"]["figures"]
    }
    assert figures["3,000 rows, identical: round trips"]["median"] == 1
    assert figures["3,000 rows, 100 rows differ: rows reported divergent"]["median"] == 100
    # 10,000 asked of a 3,000-row table: every row changed, every row found.
    assert figures["3,000 rows, 10,000 rows differ: rows reported divergent"]["median"] == 3000
    upkeep = figures["tree upkeep, all 3 phases 1,000 rows: trigger + capture with digests"]
    assert upkeep["samples"]
    assert upkeep["baseline"]["samples"]


def test_metadata_budget_runs_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    status = bench_main.main(["metadata", "--quick", "--metadata-rows", "500", "--out", str(out)])
    assert status == 0
    figures = json.loads(out.read_text())["scenarios"]["metadata"]["figures"]
    ratios = [figure for figure in figures if figure["name"].startswith("bytes in use,")]
    assert len(ratios) == 2, "one per row size of the issue"
    for figure in ratios:
        assert figure["baseline"]["median"] > 0
        assert figure["ratio"]["median"] > 1, "the bookkeeping takes room"
    # The candidate layouts (bench/layouts.py): today's layout, rebuilt from the
    # copied shadow rows, lands where the tracked file is (the method holds), and
    # the key stored once takes less room than the key stored twice.
    for size in (100, 50):
        projected = {
            figure["name"].split("'")[1]: figure["samples"][0]
            for figure in figures
            if figure["name"].startswith("bytes in use with") and f"{size}-byte" in figure["name"]
        }
        [actual] = [f["samples"][0] for f in ratios if f"{size}-byte" in f["name"]]
        assert abs(projected["today"] - actual) <= 0.05 * actual, (projected, actual)
        assert projected["feed order + key hash index"] < projected["feed order + key index"]


def test_snapshot_bootstrap_runs_next_to_the_replay(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    status = bench_main.main(["snapshot", "--quick", "--bulk-rows", "2000", "--out", str(out)])
    assert status == 0
    figures = {
        figure["name"]: figure
        for figure in json.loads(out.read_text())["scenarios"]["snapshot"]["figures"]
    }
    versus = figures["snapshot bootstrap against replay"]
    assert versus["samples"]
    assert versus["baseline"]["samples"], "the replay of the same repeat is the baseline"
    assert figures["peak RSS of `syncmesh join`"]["samples"][0] > 0


def test_soak_samples_three_nodes_under_churn(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    status = bench_main.main(
        [
            "soak",
            "--quick",
            "--soak-minutes",
            "0.15",
            "--soak-sample-s",
            "3",
            "--soak-live-rows",
            "30",
            "--out",
            str(out),
        ]
    )
    assert status == 0
    figures = {
        figure["name"]: figure
        for figure in json.loads(out.read_text())["scenarios"]["soak"]["figures"]
    }
    assert figures["deletes in 0.15 min, all clients"]["samples"][0] > 0, "the churn deletes"
    sizes = [figure for name, figure in figures.items() if name.startswith("node a: file")]
    assert sizes
    assert sizes[0]["baseline"]["samples"], "the early size is the baseline"


def test_the_latency_curve_runs_at_each_rate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 17: one figure pair per rate, every write seen (no speed is checked)."""
    monkeypatch.setattr(latency, "RATE_SECONDS", 0.2)
    monkeypatch.setattr(latency, "FLOOR_WRITES", 20)
    out = tmp_path / "curve.json"
    status = bench_main.main(
        ["curve", "--repeats", "1", "--curve-rates", "20,200", "--out", str(out)]
    )
    assert status == 0
    figures = {
        figure["name"]: figure
        for figure in json.loads(out.read_text())["scenarios"]["latency"]["figures"]
    }
    for rate in (20, 200):
        p50 = next(
            f
            for name, f in figures.items()
            if name.startswith(f"curve: p50 above the local floor at {rate} txn/s")
        )
        assert p50["samples"], rate
        assert figures[f"curve: p99 above the local floor at {rate} txn/s"]["samples"]
    assert figures["curve: writes not visible within 5 s, all rates"]["median"] == 0


def test_the_peers_scenario_runs_every_system(tmp_path: Path) -> None:
    """Issue 17: pysyncobj, NATS JetStream KV and syncmesh each deliver every write."""
    out = tmp_path / "peers.json"
    status = bench_main.main(["peers", "--repeats", "1", "--peer-writes", "300", "--out", str(out)])
    assert status == 0
    figures = json.loads(out.read_text())["scenarios"]["peers"]["figures"]
    rates = [figure for figure in figures if "writes/s until all 300" in figure["name"]]
    assert [figure["name"].split(":")[0] for figure in rates] == list(peers.SYSTEMS)
    for figure in rates:
        assert figure["median"] > 0, figure["name"]
        assert "note" not in figure, figure["note"]  # no write missing anywhere


def test_profile_runs_every_stage_and_the_relay_copy() -> None:
    from bench import profile

    report = profile.run(300, lambda _line: None)
    assert set(report["stages"]) == {"capture", "read_batch", "encode", "decode", "apply_batch"}
    for stage in report["stages"].values():
        assert stage["seconds"] > 0
        assert stage["top_own_time"]
    assert report["apply_again"]["seconds"] > 0
