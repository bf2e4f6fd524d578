"""The serve lock: one node per database file, and where to find it.

`syncmesh serve shop.db` holds an exclusive `flock` on `shop.db.serve.lock`
for as long as it runs, and writes into it its pid and, once bound, its
addresses (JSON).  A second `serve` on the same file cannot take the lock
and refuses, naming the first; `syncmesh status shop.db` reads the lock to
find the running node's live view.

Why flock and not only the pid: the kernel drops a flock when its process
dies, however it dies, so a lock left behind by a killed node is stale by
construction and the next `serve` takes it over; the pid in the file names
the holder in messages, and is checked too (a lock whose pid is gone is
stale even where flock is not honoured, as on some network file systems).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from syncmesh.errors import SyncError

SUFFIX = ".serve.lock"


class AlreadyServed(SyncError):
    """Another live `syncmesh serve` holds the database's lock."""


@dataclass(frozen=True, slots=True)
class LockHolder:
    """What a running node wrote into its lock file."""

    pid: int
    listen: str  # the peer address, HOST:PORT ("" until bound)
    api: str  # the HTTP API's HOST:PORT (the same as listen unless [api] listen)
    scheme: str  # "http" or "https"

    @property
    def api_url(self) -> str:
        return f"{self.scheme}://{self.api}" if self.api else ""


def lock_path(database: str | Path) -> Path:
    return Path(f"{database}{SUFFIX}")


class ServeLock:
    """The exclusive lock of one serving node; `acquire()`, `publish()`, `release()`."""

    def __init__(self, database: str | Path) -> None:
        self.path = lock_path(database)
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        """Take the lock or raise AlreadyServed naming the holder; a stale lock is taken over."""
        handle = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held while serving
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = read_holder(self.path)
            handle.close()
            if holder is not None and not pid_alive(holder.pid):
                raise AlreadyServed(
                    f"{self.path} is locked, but its pid {holder.pid} is gone; remove the"
                    " file if no syncmesh serve runs on this database"
                ) from None
            who = "another process" if holder is None else f"pid {holder.pid}"
            where = f" (API {holder.api_url})" if holder is not None and holder.api_url else ""
            raise AlreadyServed(
                f"{self.path.name.removesuffix(SUFFIX)} is already served by {who}{where};"
                " stop that node first, or serve another file"
            ) from None
        self._file = handle
        self._write(LockHolder(os.getpid(), "", "", "http"))

    def publish(self, listen: str, api: str, scheme: str) -> None:
        """Record the bound addresses, for `syncmesh status FILE`."""
        self._write(LockHolder(os.getpid(), listen, api, scheme))

    def release(self) -> None:
        if self._file is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        self._file.close()  # closing drops the flock
        self._file = None

    def _write(self, holder: LockHolder) -> None:
        assert self._file is not None
        self._file.seek(0)
        self._file.truncate()
        json.dump(
            {
                "pid": holder.pid,
                "listen": holder.listen,
                "api": holder.api,
                "scheme": holder.scheme,
            },
            self._file,
        )
        self._file.write("\n")
        self._file.flush()


def read_holder(path: Path) -> LockHolder | None:
    """The lock file's content, or None if it is missing or unreadable."""
    try:
        document: Any = json.loads(path.read_text(encoding="utf-8"))
        return LockHolder(
            int(document["pid"]),
            str(document.get("listen", "")),
            str(document.get("api", "")),
            str(document.get("scheme", "http")),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def running_holder(database: str | Path) -> LockHolder | None:
    """The node serving `database` now, or None if none does (no lock, or a stale one)."""
    path = lock_path(database)
    if not path.exists():
        return None
    try:
        handle = open(path, encoding="utf-8")  # noqa: SIM115 - closed below
    except OSError:
        return None
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = read_holder(path)  # held: a node runs
            return holder if holder is not None and pid_alive(holder.pid) else None
        return None  # nobody holds it: a stale file
    finally:
        handle.close()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, owned by someone else
    return True
