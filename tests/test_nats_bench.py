"""`python -m bench fleet` runs end to end at a tiny size, so its code cannot rot.

No figure is checked against a speed (speed belongs in bench/): only that
every layout ran and reported samples, that every site of every layout ended
with the writer's rows (the checksum figure), also with a nats-server
killed halfway through the bulk insert (issue 15: nothing is lost).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import bench.__main__ as bench_main

pytestmark = pytest.mark.multiprocess


def test_bench_fleet_runs_every_layout_and_every_site_converges(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    status = bench_main.main(
        [
            "fleet",
            "--quick",
            "--fleet-sites",
            "3",
            "--fleet-rows",
            "3000",
            "--fleet-writes",
            "5",
            "--fleet-kill-server",
            "--out",
            str(out),
        ]
    )
    assert status == 0
    report = json.loads(out.read_text())
    assert report["meta"]["fleet_sites"] == [3]
    figures = {figure["name"]: figure for figure in report["scenarios"]["fleet"]["figures"]}
    for layout in ("star", "nats", "mesh", "nats-kill"):
        named = {
            name: figure for name, figure in figures.items() if name.startswith(f"N=3 {layout}:")
        }
        assert len(named) == 8, (layout, sorted(named))
        for name, figure in named.items():
            assert figure["samples"], name
        converged = named[f"N=3 {layout}: sites not converged (checksum differs)"]
        assert converged["samples"] == [0], layout
        rate = named[f"N=3 {layout}: rows/s until all 3,000 rows visible at every site"]
        assert "note" not in rate, rate  # no bulk run timed out
        if layout != "star":
            assert (
                figures[f"N=3 {layout}: CPU s per 1,000 rows, busiest process"]["baseline"]["name"]
                == "star"
            )


def test_fleet_sizes_must_be_fleets(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        bench_main.main(["fleet", "--fleet-sites", "1,3"])
    assert "every fleet size must be at least 2" in capsys.readouterr().err
