"""Mutual TLS on the sync port, with real certificates over real 127.0.0.1 sockets.

The certificates come from our own `syncmesh tls init` and `syncmesh tls
issue` in a temporary directory.  Nodes run in this process
(`running_node`), each with its own TLS listener; what must hold: a
cluster of named sites syncs; a client without a certificate, or with
one of another CA, fails the TLS handshake; a certificate of this CA for
a site that is not a configured peer is refused before the WebSocket
upgrade; a dialler that reaches the wrong site hangs up before HELLO.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import stat
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509

from syncmesh.api import running_node
from syncmesh.cli import pki
from syncmesh.errors import ConfigError
from syncmesh.node import Node, NodeConfig
from syncmesh.node.config import PeerConfig
from syncmesh.transport import TlsFiles, site_name_of
from tests.helpers import wait_until
from tests.test_node import converged, execute, make_db
from tests.tlsfiles import Pki, make_pki

TIMEOUT_S = 20.0


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """Another cluster's CA, issuing a certificate for a site named like ours."""
    ca = make_pki(tmp_path_factory.mktemp("pki-other") / "ca")
    ca.issue("a")
    return ca


def tls_config(path: Path, tls: TlsFiles, *peers: PeerConfig, **overrides: object) -> NodeConfig:
    settings: dict[str, object] = {"listen_port": 0, "heartbeat_s": 1.0, "backoff_max_s": 0.5}
    settings.update(overrides)
    return NodeConfig(database_path=str(path), tls=tls, peers=peers, **settings)  # type: ignore[arg-type]


def url_of(node: Node) -> str:
    return f"https://{node.listen}"


async def test_a_cluster_of_sites_syncs_over_mutual_tls(tmp_path: Path, cluster_pki: Pki) -> None:
    """Goal: three named sites (a star around b) converge over mTLS; peers show their names."""
    paths = [make_db(tmp_path / f"{name}.db") for name in "abc"]
    async with running_node(
        tls_config(paths[1], cluster_pki.files("b"), PeerConfig(name="a"), PeerConfig(name="c"))
    ) as node_b:
        b = PeerConfig(name="b", url=url_of(node_b))
        async with (
            running_node(tls_config(paths[0], cluster_pki.files("a"), b)) as node_a,
            running_node(tls_config(paths[2], cluster_pki.files("c"), b)) as node_c,
        ):
            await asyncio.to_thread(execute, paths[0], "INSERT INTO items VALUES ('x', 'a', 1)")
            await asyncio.to_thread(execute, paths[2], "INSERT INTO items VALUES ('y', 'c', 2)")
            await wait_until(lambda: converged(*paths, rows=2), TIMEOUT_S, "mTLS star to converge")
            names = {peer.name for peer in (await node_b.statistics()).peers}
            assert names == {"a", "c"}
            assert [peer.name for peer in (await node_a.statistics()).peers] == ["b"]
            assert (await node_c.statistics()).refused_connections == 0


async def test_a_client_without_a_certificate_fails_the_handshake(
    tmp_path: Path, cluster_pki: Pki
) -> None:
    """Goal: no certificate, no bytes: the TLS handshake itself fails; HTTP never starts."""
    path = make_db(tmp_path / "b.db")
    async with running_node(tls_config(path, cluster_pki.files("b"), PeerConfig(name="a"))) as node:
        host, port = node.listen.rsplit(":", 1)
        context = cluster_pki.client_context(None)  # trusts the CA, presents nothing
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await _http_get_over_tls(host, int(port), context)
        # Plain HTTP on the TLS port gets no answer either.
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        answer = await reader.read(100)
        writer.close()
        assert not answer.startswith(b"HTTP/1.1 200"), answer


async def test_a_site_of_another_ca_is_refused(
    tmp_path: Path, cluster_pki: Pki, other_pki: Pki
) -> None:
    """Goal: a certificate for site "a" from another CA gets nowhere, either direction."""
    paths = [make_db(tmp_path / f"{name}.db") for name in ("b", "impostor")]
    await asyncio.to_thread(execute, paths[1], "INSERT INTO items VALUES ('evil', 'x', 1)")
    async with running_node(
        tls_config(paths[0], cluster_pki.files("b"), PeerConfig(name="a"))
    ) as node_b:
        impostor = tls_config(
            paths[1], other_pki.files("a"), PeerConfig(name="b", url=url_of(node_b))
        )
        async with running_node(impostor) as node_x:

            async def dial_failed() -> bool:
                peers = (await node_x.statistics()).peers
                return bool(peers and peers[0].last_error and peers[0].reconnects >= 2)

            await wait_until(dial_failed, TIMEOUT_S, "the impostor's dials to fail")
            peer = (await node_x.statistics()).peers[0]
            assert peer.state in ("backoff", "connecting", "refused"), peer
            assert "cannot connect" in peer.last_error, peer.last_error
            assert (await node_b.statistics()).peers == ()
        assert await rows(paths[0]) == []


async def test_a_certificate_for_a_site_that_is_not_a_peer_is_refused_before_hello(
    tmp_path: Path, cluster_pki: Pki
) -> None:
    """Goal: "stranger" holds a valid certificate of our CA but is nobody's peer: 403."""
    paths = [make_db(tmp_path / f"{name}.db") for name in ("b", "stranger")]
    await asyncio.to_thread(execute, paths[1], "INSERT INTO items VALUES ('evil', 'x', 1)")
    async with running_node(
        tls_config(paths[0], cluster_pki.files("b"), PeerConfig(name="a"))
    ) as node_b:
        context = cluster_pki.client_context("stranger")
        async with (
            aiohttp.ClientSession() as client,
            client.get(f"{url_of(node_b)}/sync/v1", ssl=context) as answer,
        ):
            assert answer.status == 403
            assert "not a peer" in await answer.text()
        stranger = tls_config(
            paths[1], cluster_pki.files("stranger"), PeerConfig(name="b", url=url_of(node_b))
        )
        async with running_node(stranger):

            async def refused_twice() -> bool:
                return (await node_b.statistics()).refused_connections >= 3

            await wait_until(refused_twice, TIMEOUT_S, "b to refuse the stranger's dials")
            assert (await node_b.statistics()).peers == ()
        assert await rows(paths[0]) == []


async def test_a_dialler_that_reaches_another_site_hangs_up(
    tmp_path: Path, cluster_pki: Pki
) -> None:
    """Goal: a dials what it believes is b, but c answers: a refuses before HELLO."""
    paths = [make_db(tmp_path / f"{name}.db") for name in "ac"]
    await asyncio.to_thread(execute, paths[1], "INSERT INTO items VALUES ('c-row', 'c', 1)")
    async with running_node(
        tls_config(paths[1], cluster_pki.files("c"), PeerConfig(name="a"))
    ) as node_c:
        wrong = PeerConfig(name="b", url=url_of(node_c))
        async with running_node(tls_config(paths[0], cluster_pki.files("a"), wrong)) as node_a:

            async def refused() -> bool:
                # One snapshot: the dialler keeps retrying, and between a
                # refusal's backoff and the next refusal its state is
                # "connecting" while its last error stays.
                peers = (await node_a.statistics()).peers
                return bool(
                    peers
                    and "not for site 'b'" in peers[0].last_error
                    and peers[0].state == "refused"
                )

            await wait_until(refused, TIMEOUT_S, "a to notice it reached the wrong site")
        assert await rows(paths[0]) == []


async def test_a_site_id_cannot_be_claimed_by_two_certificates(
    tmp_path: Path, cluster_pki: Pki
) -> None:
    """Goal: c copies a's database (same site id); b keeps that id for a's certificate."""
    paths = [make_db(tmp_path / f"{name}.db") for name in "ab"]
    copy = tmp_path / "c.db"
    copy.write_bytes(paths[0].read_bytes())
    async with running_node(
        tls_config(paths[1], cluster_pki.files("b"), PeerConfig(name="a"), PeerConfig(name="c"))
    ) as node_b:
        b = PeerConfig(name="b", url=url_of(node_b))
        async with running_node(tls_config(paths[0], cluster_pki.files("a"), b)):

            async def a_streams() -> bool:
                return [p.state for p in (await node_b.statistics()).peers] == ["streaming"]

            await wait_until(a_streams, TIMEOUT_S, "a to connect")
        async with running_node(tls_config(copy, cluster_pki.files("c"), b)) as node_c:

            async def refused() -> bool:
                peers = (await node_c.statistics()).peers
                return bool(peers and "belongs to site a" in peers[0].last_error)

            await wait_until(refused, TIMEOUT_S, "b to refuse c's claim to a's site id")


def test_tls_files_have_restrictive_permissions(cluster_pki: Pki) -> None:
    """Goal: keys 0600, the CA directory 0700; certificates name their site."""
    directory = cluster_pki.directory
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(directory / "issued").st_mode) == 0o700
    for key in ("ca.key", "a.key", "b.key"):
        assert stat.S_IMODE(os.stat(directory / key).st_mode) == 0o600, key
    cert = x509.load_pem_x509_certificate((directory / "a.crt").read_bytes())
    assert pki.site_of(cert) == "a"
    ca = x509.load_pem_x509_certificate((directory / "ca.crt").read_bytes())
    assert cert.issuer == ca.subject
    assert pki.cert_site(directory / "b.crt") == "b"


def test_a_second_ca_in_the_same_directory_is_refused(cluster_pki: Pki) -> None:
    with pytest.raises(ConfigError, match="exists"):
        pki.init_ca(cluster_pki.directory)


@pytest.mark.parametrize(
    ("peercert", "name"),
    [
        ({"subjectAltName": (("URI", "syncmesh://site/a"),)}, "a"),
        ({"subjectAltName": (("URI", "syncmesh://site/A"),)}, None),  # not a valid name
        ({"subjectAltName": (("DNS", "a"),)}, None),
        (
            {"subjectAltName": (("URI", "syncmesh://site/a"), ("URI", "syncmesh://site/b"))},
            None,
        ),
        ({}, None),
        (None, None),
    ],
)
def test_site_name_of_a_certificate(peercert: object, name: str | None) -> None:
    assert site_name_of(peercert) == name


async def _http_get_over_tls(host: str, port: int, context: ssl.SSLContext) -> None:
    """A GET over TLS; raises ConnectionError if the server closes without answering."""
    reader, writer = await asyncio.open_connection(host, port, ssl=context)
    try:
        # TLS 1.3: the server's verdict on the client arrives with the first read.
        writer.write(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        if await reader.read(100) == b"":
            raise ConnectionError("closed without an answer")
        raise AssertionError("the server answered a client without a certificate")
    finally:
        writer.close()


async def rows(path: Path) -> list[object]:
    from tests.test_node import dump

    return await asyncio.to_thread(dump, path)


async def test_a_peer_may_hold_only_so_many_connections(tmp_path: Path, cluster_pki: Pki) -> None:
    """Goal: limits.sessions_per_peer_max: a's third connection is answered 429."""
    path = make_db(tmp_path / "b.db")
    config = tls_config(path, cluster_pki.files("b"), PeerConfig(name="a"), sessions_per_peer_max=2)
    async with running_node(config) as node, aiohttp.ClientSession() as client:
        context = cluster_pki.client_context("a")
        url = f"{url_of(node)}/sync/v1"
        held = [await client.ws_connect(url, ssl=context) for _ in range(2)]  # silent
        try:
            async with client.get(url, ssl=context) as answer:
                assert answer.status == 429
            assert (await node.statistics()).refused_connections == 1
        finally:
            for socket in held:
                await socket.close()
