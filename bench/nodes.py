"""Real `python -m syncmesh serve` processes on 127.0.0.1, started and always stopped.

Each node listens on port 0 (the OS picks a free port); its real address is
read from the line `serve` prints on start.  `cluster()` starts the nodes of a
topology in order (a node dials only nodes started before it), waits until
every session is streaming, and stops every process on the way out, whatever
happened.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from bench.common import create_items
from syncmesh.store.sqlite import SqliteStore

HOST = "127.0.0.1"
START_TIMEOUT_S = 20.0
STREAMING_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
POLL_S = 0.02
_LISTENING = re.compile(r"listening on (\S+:\d+)")

# name -> names of the nodes it dials (each started before it)
Topology = Mapping[str, Sequence[str]]
CHAIN: Topology = {"a": (), "b": ("a",), "c": ("b",)}
MESH: Topology = {"a": (), "b": ("a",), "c": ("a", "b")}
PAIR: Topology = {"a": (), "b": ("a",)}


def prepare_database(path: Path) -> None:
    """A new file with `items`, initialised and tracked (as `syncmesh init/track` would)."""
    create_items(path)
    store = SqliteStore.open(path)
    try:
        store.init()
        store.track(["items"])
    finally:
        store.close()


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` so far (Linux /proc); 0 elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # fields[0] is the state (field 3 of stat(5)); utime, stime are fields 14, 15
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_peak_rss_mb(pid: int) -> float:
    """Peak resident set of process `pid` (VmHWM in /proc/PID/status), in MiB; 0 elsewhere."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    found = re.search(r"^VmHWM:\s+(\d+) kB", text, re.MULTILINE)
    return int(found.group(1)) / 1024 if found else 0.0


class NodeProcess:
    def __init__(self, name: str, directory: Path) -> None:
        self.name = name
        self.path = directory / f"{name}.db"
        self.log_path = directory / f"{name}.log"
        self.url = ""
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def start(
        self,
        peer_urls: Sequence[str],
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        command = [
            sys.executable,
            "-m",
            "syncmesh",
            "serve",
            str(self.path),
            "--listen",
            f"{HOST}:0",
            "--log-level",
            "warning",
        ]
        for url in peer_urls:
            command += ["--peer", url]
        command += extra_args
        self._log = self.log_path.open("wb")
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env} if env else None,
        )

    def wait_listening(self, timeout_s: float = START_TIMEOUT_S) -> str:
        assert self._process is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"node {self.name} exited early:\n{self.log_tail()}")
            found = _LISTENING.search(self.log_path.read_text(errors="replace"))
            if found:
                self.url = f"http://{found.group(1)}"
                return self.url
            time.sleep(POLL_S)
        raise RuntimeError(f"node {self.name} did not start listening:\n{self.log_tail()}")

    def status(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}/v1/status", timeout=5) as response:
            decoded: dict[str, Any] = json.load(response)
            return decoded

    def cpu_seconds(self) -> float:
        """User + system CPU time of the process so far (Linux /proc); 0 elsewhere."""
        return process_cpu_seconds(self.pid)

    def peak_rss_mb(self) -> float:
        """The process's peak resident set (VmHWM in /proc/PID/status), in MiB; 0 elsewhere."""
        return process_peak_rss_mb(self.pid)

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        process, self._process = self._process, None
        try:
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=STOP_TIMEOUT_S)
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None


def _links(topology: Topology) -> dict[str, int]:
    """How many sessions each node takes part in."""
    counts = dict.fromkeys(topology, 0)
    for name, peers in topology.items():
        for peer in peers:
            counts[name] += 1
            counts[peer] += 1
    return counts


def _all_streaming(nodes: Mapping[str, NodeProcess], expected: Mapping[str, int]) -> bool:
    for name, node in nodes.items():
        peers = node.status()["peers"]
        if len(peers) != expected[name] or any(p["state"] != "streaming" for p in peers):
            return False
    return True


def wait_streaming(
    nodes: Mapping[str, NodeProcess], topology: Topology, timeout_s: float = STREAMING_TIMEOUT_S
) -> None:
    """Until every session of `topology` is streaming (RuntimeError after `timeout_s`)."""
    expected = _links(topology)
    deadline = time.monotonic() + timeout_s
    while not _all_streaming(nodes, expected):
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {n.name}\n{n.log_tail()}" for n in nodes.values())
            raise RuntimeError(f"sessions did not all reach streaming:\n{tails}")
        time.sleep(POLL_S)


def _prepare(_name: str, path: Path) -> None:
    prepare_database(path)


def _direct(node: NodeProcess) -> str:
    return node.url


@contextmanager
def cluster(
    directory: Path,
    topology: Topology,
    *,
    prepare: Callable[[str, Path], None] = _prepare,
    peer_url: Callable[[NodeProcess], str] = _direct,
    streaming_timeout_s: float = STREAMING_TIMEOUT_S,
    env: Mapping[str, str] | None = None,
) -> Iterator[dict[str, NodeProcess]]:
    """Started nodes (name -> node), every session streaming; all stopped on exit.

    `prepare(name, path)` makes each node's file (default: an empty tracked
    `items`); `peer_url(node)` is the URL its dialers are given (default:
    its own; a proxy in front of it, for example); `env`: settings for
    every node (SYNCMESH_*).
    """
    nodes: dict[str, NodeProcess] = {}
    try:
        for name, peers in topology.items():
            node = NodeProcess(name, directory)
            nodes[name] = node
            prepare(name, node.path)
            node.start([peer_url(nodes[peer]) for peer in peers], env=env)
            node.wait_listening()
        wait_streaming(nodes, topology, streaming_timeout_s)
        yield nodes
    finally:
        for node in reversed(list(nodes.values())):
            with contextlib.suppress(Exception):
                node.stop()
