"""A mutual-TLS cluster of real `syncmesh serve` processes, set up as docs/security.md says.

The CA and the certificates come from `syncmesh tls` in the test's
directory; every node gets `[tls]` and `[peers.NAME]` from its config file.
The test walks the guide: the cluster syncs; a site's certificate is
rotated (a new one issued, the old one revoked in the CRL) and the site
syncs on; then the site is revoked altogether, and after a restart with
the new CRL its peer refuses it at the TLS handshake while the rest of the
cluster syncs on.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
from pathlib import Path

import pytest

from tests.nodeproc import Cluster, NodeProcess, make_db, run_cli, wait_converged, wait_for
from tests.tlsfiles import Pki, make_pki

pytestmark = pytest.mark.multiprocess

SCHEMA = "CREATE TABLE items (id TEXT PRIMARY KEY, name TEXT)"
CONVERGE_S = 60.0


def write(node: NodeProcess, sql: str) -> None:
    with contextlib.closing(sqlite3.connect(node.db, timeout=10.0)) as connection, connection:
        connection.execute(sql)


def config_file(directory: Path, pki: Pki, site: str, accepts: list[str]) -> Path:
    """A node's syncmesh.toml: its certificate, the CA and CRL, the peers that dial it."""
    path = directory / f"{site}.toml"
    files = pki.files(site, crl=True)
    lines = [
        "[tls]",
        f'cert = "{Path(files.cert).as_posix()}"',
        f'key = "{Path(files.key).as_posix()}"',
        f'ca = "{Path(files.ca).as_posix()}"',
        f'crl = "{Path(files.crl).as_posix()}"',
    ]
    lines += [f"[peers.{name}]" for name in accepts]
    path.write_text("\n".join(lines) + "\n")
    return path


def serial_of(pki: Pki, site: str) -> str:
    result = run_cli("tls", "issue", site, "--dir", str(pki.directory), "--host", "127.0.0.1")
    return result.stdout.split("serial ")[1].split(",")[0]


def test_a_tls_cluster_syncs_rotates_and_revokes(cluster: Cluster, tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "ca")
    serials = {site: serial_of(pki, site) for site in "abc"}
    for site in "abc":
        assert stat.S_IMODE(os.stat(pki.directory / f"{site}.key").st_mode) == 0o600
        make_db(tmp_path / f"{site}.db", SCHEMA)
    harness = pki.client_context("a")  # the harness reads status with a's certificate
    b = cluster.node(
        "b",
        ssl_context=harness,
        extra_args=["--config", str(config_file(tmp_path, pki, "b", ["a", "c"]))],
    )
    a = cluster.node(
        "a",
        peers=[b],
        ssl_context=harness,
        extra_args=["--config", str(config_file(tmp_path, pki, "a", []))],
    )
    c = cluster.node(
        "c",
        peers=[b],
        ssl_context=harness,
        extra_args=["--config", str(config_file(tmp_path, pki, "c", []))],
    )
    cluster.start(b, a, c)
    paths = [a.db, b.db, c.db]
    write(a, "INSERT INTO items VALUES ('from-a', 'a')")
    write(c, "INSERT INTO items VALUES ('from-c', 'c')")
    wait_converged(
        paths, "items", CONVERGE_S, check=lambda dump: len(dump) == 2, describe=cluster.logs
    )
    assert {peer["name"] for peer in b.status()["peers"]} == {"a", "c"}

    # Rotation: a new certificate for c, the old one revoked; c and b restart.
    new_serial = serial_of(pki, "c")
    assert new_serial != serials["c"]
    run_cli("tls", "revoke", "c", "--dir", str(pki.directory), "--serial", serials["c"])
    c.stop()
    b.stop()
    b.start().wait_until_ready()
    c.start().wait_until_ready()
    write(c, "INSERT INTO items VALUES ('after-rotation', 'c')")
    wait_converged(
        paths, "items", CONVERGE_S, check=lambda dump: len(dump) == 3, describe=cluster.logs
    )

    # Revocation: every certificate of c; b restarts with the new CRL.
    run_cli("tls", "revoke", "c", "--dir", str(pki.directory))
    b.stop()
    mark = len(c.log_text())
    b.start().wait_until_ready()
    c.wait_for_log("cannot connect", since=mark, timeout_s=CONVERGE_S)
    write(c, "INSERT INTO items VALUES ('revoked', 'c')")
    write(a, "INSERT INTO items VALUES ('a-later', 'a')")
    wait_converged(
        [a.db, b.db], "items", CONVERGE_S, check=lambda dump: len(dump) == 4, describe=cluster.logs
    )
    wait_for(
        lambda: all(peer["name"] != "c" for peer in b.status()["peers"]),
        CONVERGE_S,
        "b to hold no session with the revoked site",
    )
    names = {row[0][0] for row in wait_converged([a.db, b.db], "items", CONVERGE_S)}
    assert "revoked" not in names
