"""The serve lock: one node per database file, and where to find it.

`syncmesh serve shop.db` holds an exclusive `flock` on the database file
itself for as long as it runs: that is the lock.  A second `serve` on the
same file cannot take it and refuses, naming the first.  `syncmesh join
shop.db` takes the same lock while it replaces the file, so neither runs
under the other: a join refuses while a node serves the file, and a
`serve` refuses while a join replaces it (the lock file says which).  Next to the file,
`shop.db.serve.lock` (also flocked) tells the holder's pid, host and, once
bound, its addresses (JSON); `syncmesh status shop.db` reads it to find the
running node's live view.

Why the database file and not only the lock file: a lock on a file that
can be deleted is fooled by deleting it (a tidy-up script, a user cleaning
up after a crash); the next `serve` made a new lock file, locked that, and
two nodes ran on one database (new-user report).  The database cannot be
deleted from under a running node without the operator knowing it.  A
flock is the process's own (SQLite's POSIX locks on the same file are a
separate kind on local file systems and do not meet it), and the kernel
drops it when the process dies, however it dies: a lock left by a killed
node is stale by construction and the next `serve` takes it over.  The
node writes its lock file again if it goes missing (`republish`), so
`status` keeps finding it.

Closing any descriptor of the database drops the process's POSIX locks on
it, SQLite's included: the descriptor is held until `release()`, after the
node closed its connections, and `running_holder` (which other processes,
applications among them, call) never opens the database, only the lock file
and, where the lock file is gone, `/proc/locks`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from syncmesh.errors import SyncError

SUFFIX = ".serve.lock"


class AlreadyServed(SyncError):
    """Another live `syncmesh serve` (or `join`) holds the database's lock."""

    def __init__(self, message: str, holder: LockHolder | None = None) -> None:
        super().__init__(message)
        self.holder = holder  # who, if known


@dataclass(frozen=True, slots=True)
class LockHolder:
    """What a running node wrote into its lock file."""

    pid: int
    listen: str  # the peer address, HOST:PORT ("" until bound)
    api: str  # the HTTP API's HOST:PORT (the same as listen unless [api] listen)
    scheme: str  # "http" or "https"
    host: str = ""  # the holder's host name ("" in lock files of older versions)
    command: str = "serve"  # "serve", or "join" while a join replaces the file

    @property
    def api_url(self) -> str:
        return f"{self.scheme}://{self.api}" if self.api else ""

    def named(self) -> str:
        """Who holds the lock, in messages: "pid 4242 on host db1"."""
        return f"pid {self.pid}" + (f" on host {self.host}" if self.host else "")


def lock_path(database: str | Path) -> Path:
    return Path(f"{database}{SUFFIX}")


class ServeLock:
    """The exclusive lock of one serving node; `acquire()`, `publish()`, `release()`.

    `command`: "join" for `syncmesh join`, which holds the lock while it
    replaces the file (and publishes no address).
    """

    def __init__(self, database: str | Path, command: str = "serve") -> None:
        self.database = Path(database)
        self.path = lock_path(database)
        self.command = command
        self._database_fd: int | None = None
        self._file: IO[str] | None = None
        self._holder = LockHolder(os.getpid(), "", "", "http", socket.gethostname(), command)

    def acquire(self) -> None:
        """Take the lock or raise AlreadyServed naming the holder; a stale lock is taken over.

        Creates the database file (empty: a new SQLite database) if it does
        not exist yet, for `serve --create`: the lock must be taken before
        anything opens it.
        """
        # 0600 as the store creates a new file (only its owner may read it).
        fd = os.open(self.database, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)  # nothing of ours is open on the database yet
            holder = self._current_holder()
            raise AlreadyServed(self._refusal(holder), holder) from None
        except BaseException:
            os.close(fd)
            raise
        self._database_fd = fd
        try:
            self._open_lock_file()
        except BaseException:
            self._database_fd = None
            os.close(fd)
            raise

    def _current_holder(self) -> LockHolder | None:
        """Who holds the lock: from its lock file, else from the kernel's locks."""
        holder = read_holder(self.path)
        if holder is None or not pid_alive(holder.pid):
            pids = flock_pids(self.database)
            holder = LockHolder(pids[0], "", "", "http", socket.gethostname()) if pids else None
        return holder

    def _refusal(self, holder: LockHolder | None) -> str:
        """Who serves the database, in words."""
        name = self.database.name
        if holder is not None and holder.command == "join":
            return (
                f"{name} is being replaced by `syncmesh join` ({holder.named()});"
                " wait for it to finish, then serve the file"
            )
        if holder is None:
            return (
                f"{name} is already served by another process (it holds a lock on the file);"
                " stop that node first, or serve another file"
            )
        where = f" (API {holder.api_url})" if holder.api_url else ""
        return (
            f"{name} is already served by {holder.named()}{where};"
            " stop that node first, or serve another file"
        )

    def _open_lock_file(self) -> None:
        """(Re)create the lock file, flocked for `running_holder`, with our holder in it."""
        self._write(self._holder)

    def publish(self, listen: str, api: str, scheme: str) -> None:
        """Record the bound addresses, for `syncmesh status FILE`."""
        self._holder = LockHolder(
            os.getpid(), listen, api, scheme, socket.gethostname(), self.command
        )
        self._write(self._holder)

    def republish(self) -> bool:
        """Write the lock file again if it was deleted or replaced; True if it was.

        The node's lock is on the database and holds without it, but
        `status FILE` finds the node through this file.
        """
        if self._file is None:
            return False
        try:
            on_disk = os.stat(self.path)
        except FileNotFoundError:
            on_disk = None
        held = os.fstat(self._file.fileno())
        if on_disk is not None and (on_disk.st_dev, on_disk.st_ino) == (held.st_dev, held.st_ino):
            return False
        self._open_lock_file()
        return True

    def release(self) -> None:
        """Remove the lock file and drop the lock (the node has closed its connections)."""
        if self._file is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()
            self._file.close()
            self._file = None
        if self._database_fd is not None:
            os.close(self._database_fd)  # drops the flock on the database
            self._database_fd = None

    def _write(self, holder: LockHolder) -> None:
        """Put a lock file holding `holder` in place, whole, in one rename.

        Written in place (truncate, then write), the file was empty or half
        written for a moment, and a reader then found no node serving the
        file (`running_holder`: `status FILE` would open the database itself;
        a test read an empty file once in CI).  The new file is flocked
        before it is renamed over the old one, so a reader always finds a
        whole file under a held lock; the old file's lock goes with its
        handle after the rename.  A process that flocks the old file (an
        older syncmesh) could only be one that lost its database: ours is
        held.
        """
        temporary = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        handle = open(temporary, "w", encoding="utf-8")  # noqa: SIM115 - held while serving
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new file: free
            json.dump(
                {
                    "pid": holder.pid,
                    "host": holder.host,
                    "listen": holder.listen,
                    "api": holder.api,
                    "scheme": holder.scheme,
                    "command": holder.command,
                },
                handle,
            )
            handle.write("\n")
            handle.flush()
            os.replace(temporary, self.path)
        except BaseException:
            handle.close()
            with contextlib.suppress(OSError):
                temporary.unlink()
            raise
        previous, self._file = self._file, handle
        if previous is not None:
            previous.close()


def read_holder(path: Path) -> LockHolder | None:
    """The lock file's content, or None if it is missing or unreadable."""
    try:
        document: Any = json.loads(path.read_text(encoding="utf-8"))
        return LockHolder(
            int(document["pid"]),
            str(document.get("listen", "")),
            str(document.get("api", "")),
            str(document.get("scheme", "http")),
            str(document.get("host", "")),
            str(document.get("command", "serve")),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def running_holder(database: str | Path) -> LockHolder | None:
    """The node serving `database` now, or None if none does (no lock, or a stale one)."""
    path = lock_path(database)
    try:
        handle = open(path, encoding="utf-8")  # noqa: SIM115 - closed below
    except OSError:
        # No lock file: none runs, or one whose lock file was deleted a
        # moment ago (it writes it again); the kernel knows the latter.
        pids = flock_pids(database)
        return LockHolder(pids[0], "", "", "http", socket.gethostname()) if pids else None
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = read_holder(path)  # held: a node runs
            if holder is None:  # (a file written in place by an older syncmesh, caught half way)
                pids = flock_pids(database)
                return LockHolder(pids[0], "", "", "http", socket.gethostname()) if pids else None
            return holder if pid_alive(holder.pid) else None
        return None  # nobody holds it: a stale file
    finally:
        handle.close()


def join_in_progress(database: str | Path) -> str:
    """Why no command may open `database` now ("" if it may): a join is replacing it.

    `syncmesh join` holds the serve lock while it puts a new file in place
    of the old one.  A command that opened the file meanwhile would read the
    file on its way out, or turn the empty file the join's lock created into
    a database, which the join then had to move aside as a file of its own.
    """
    holder = running_holder(database)
    if holder is None or holder.command != "join":
        return ""
    return join_refusal(database, holder)


def join_refusal(database: str | Path, join: LockHolder) -> str:
    """The words of `join_in_progress` for the join that holds the lock."""
    return (
        f"{database}: `syncmesh join` ({join.named()}) is replacing it; run this again"
        " once the join has finished"
    )


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, owned by someone else
    return True


def flock_pids(path: str | Path) -> list[int]:
    """Pids holding a flock on `path`, from Linux's /proc/locks ([] where it cannot tell).

    Reads the kernel's table and opens nothing: opening and closing the
    database would drop this process's POSIX locks on it (SQLite's).
    """
    try:
        info = os.stat(path)
        table = Path("/proc/locks").read_text(encoding="ascii", errors="replace")
    except OSError:
        return []
    pids: list[int] = []
    for line in table.splitlines():
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 4242 08:01:1234 0 EOF" ("->" marks waiters)
        if len(fields) < 6 or fields[1] != "FLOCK":
            continue
        try:
            major, minor, inode = fields[5].split(":")
            if int(inode) != info.st_ino or os.makedev(int(major, 16), int(minor, 16)) != (
                info.st_dev
            ):
                continue
            pids.append(int(fields[4]))
        except ValueError:
            continue
    return [pid for pid in pids if pid != os.getpid()]
