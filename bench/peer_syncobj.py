"""pysyncobj for `python -m bench peers`: one Raft member per process, a `ReplDict` each.

`python -m bench.peer_syncobj PORT PARTNER_PORT,... WRITES [--writer]` runs one
member on 127.0.0.1.  It prints `ready` once the cluster has a leader; the
writer then waits for `go` on stdin and sets WRITES keys (about 100 bytes of
key and value each, pipelined: `sync=False`, as fast as pysyncobj takes them),
noting the moment before each.  Every member polls its dictionary's size
every POLL_S (entries apply in log order and keys are unique, so size n
means writes 0..n-1 are visible there) and notes when each write showed up.
It prints `done` once it holds every write (or after its time limit), waits
for `stop` on stdin, and prints one JSON line: `{"written": [...], "seen":
[...]}` in `time.monotonic()` seconds (one system-wide clock on Linux, so
the parent can compare processes).  pysyncobj keeps its state in memory.
"""

from __future__ import annotations

import json
import sys
import threading
import time

from pysyncobj import SyncObj, SyncObjConf
from pysyncobj.batteries import ReplDict

HOST = "127.0.0.1"
POLL_S = 0.0005
READY_TIMEOUT_S = 20.0
RUN_TIMEOUT_S = 60.0  # from `go`, for every write to show up here


def peer_value(index: int) -> bytes:
    """About 68 bytes of value; with the 32-character key about 100 bytes a write."""
    return f"item {index:08d} ".encode().ljust(68, b"x")


def peer_key(index: int) -> str:
    return f"{index:032x}"


def _write_all(replicated: ReplDict, writes: int, written: list[float]) -> None:
    for index in range(writes):
        written[index] = time.monotonic()
        replicated.set(peer_key(index), peer_value(index), sync=False)


def main(argv: list[str]) -> int:
    port, partners, writes = int(argv[0]), argv[1].split(","), int(argv[2])
    is_writer = "--writer" in argv[3:]
    replicated = ReplDict()
    member = SyncObj(
        f"{HOST}:{port}",
        [f"{HOST}:{partner}" for partner in partners],
        consumers=[replicated],
        conf=SyncObjConf(appendEntriesUseBatch=True),
    )
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not (member.isReady() and member.getStatus()["leader"] is not None):
        if time.monotonic() > deadline:
            print("no leader", flush=True)
            return 1
        time.sleep(0.01)
    print("ready", flush=True)
    written = [0.0] * writes
    writer = None
    if is_writer:
        if sys.stdin.readline().strip() != "go":
            return 1
        writer = threading.Thread(target=_write_all, args=(replicated, writes, written))
        writer.start()
    seen = [0.0] * writes
    count = 0
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while count < writes and time.monotonic() < deadline:
        now_count = min(writes, len(replicated.rawData()))
        if now_count > count:
            now = time.monotonic()
            for index in range(count, now_count):
                seen[index] = now
            count = now_count
        time.sleep(POLL_S)
    if writer is not None:
        writer.join(timeout=RUN_TIMEOUT_S)
    print("done", flush=True)
    sys.stdin.readline()  # "stop": every member holds everything, or the parent gave up
    print(json.dumps({"written": written, "seen": seen}), flush=True)
    member.destroy()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
