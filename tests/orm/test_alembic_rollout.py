"""Alembic migrations rolled over two real sites while SQLAlchemy writers run at both.

The same rollout as tests/orm/test_django_rollout.py (tests/orm/rollout.py)
with a SQLAlchemy application and the real `alembic upgrade head`, whose
`env.py` calls `syncmesh.contrib.sqlalchemy.recheck_tracked_tables`: a plain
`op.add_column`, a batch-mode rebuild, `op.alter_column(new_column_name=)`,
a batch-mode rename (a rebuild: recognised by the column's values) and
`op.drop_column`, each deployed one site at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.nodeproc import Cluster
from tests.orm.alembic_project import CHANGES, NO_DDL, AlembicChange, AlembicProject
from tests.orm.rollout import Rollout

pytestmark = [pytest.mark.multiprocess, pytest.mark.timeout(240)]

SITES = ("a", "b")


@pytest.fixture
def rollouts(cluster: Cluster) -> Iterator[list[Rollout]]:
    made: list[Rollout] = []
    try:
        yield made
    finally:
        for rollout in made:
            rollout.close()


@pytest.mark.parametrize(
    "change",
    [pytest.param(change, id=change.name) for change in CHANGES],
)
def test_rolling_alembic_migration_keeps_every_write(
    change: AlembicChange, cluster: Cluster, tmp_path: Path, rollouts: list[Rollout]
) -> None:
    rollout = Rollout(AlembicProject(change), cluster, tmp_path / "sites", SITES, SITES)
    rollouts.append(rollout)
    rollout.start()
    outputs = rollout.roll(2)
    for site, output in zip(rollout.sites, outputs, strict=True):
        assert "Running upgrade 0001 -> 0002" in output
        assert site.node is not None
        assert f"syncmesh: {site.db}: served by pid {site.node.pid}" in output
        assert "problem:" not in output, f"alembic upgrade at {site.name}: {output}"
    rollout.finish(change.final)


def test_rolling_alembic_revision_without_ddl_keeps_every_write(
    cluster: Cluster, tmp_path: Path, rollouts: list[Rollout]
) -> None:
    """The control: the same rollout with a revision that changes no table passes anywhere."""
    rollout = Rollout(AlembicProject(NO_DDL), cluster, tmp_path / "sites", SITES, SITES)
    rollouts.append(rollout)
    rollout.start()
    outputs = rollout.roll(2)
    assert all("Running upgrade 0001 -> 0002" in output for output in outputs)
    records = rollout.finish(NO_DDL.final)
    assert all(len(record) >= 3 * 5 for record in records.values())
