"""A wake-up hint when the database file is written: inotify on Linux, else nothing.

Part of the SQLite backend's change notifier (`notifier.SqliteChangeNotifier`).

The capture loop learns of commits by other connections from `PRAGMA
data_version`, which it has to poll.  Polling often enough for a low
write-to-visible latency costs CPU on an idle node; polling seldom costs
latency.  So on Linux the loop also watches the file's directory with
inotify for writes to the database file, its WAL or its rollback journal,
and looks at `data_version` at once when one lands.

The event is a hint, never the truth: a commit's frames reach the WAL
before the commit is published in the shared-memory index (which inotify
cannot see, it is written through mmap), so the loop keeps polling quickly
for a short while after each hint, and keeps a slower safety poll for
writes that inotify does not report (a network file system, say).
`FileWatcher.available` is False where inotify is missing; the loop then
polls as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import os
import struct
import sys
from pathlib import Path

log = logging.getLogger(__name__)

_IN_MODIFY = 0x00000002
_IN_CLOSE_WRITE = 0x00000008
_IN_MOVED_TO = 0x00000080
_IN_CREATE = 0x00000100
_IN_NONBLOCK = 0o4000
_IN_CLOEXEC = 0o2000000
_MASK = _IN_MODIFY | _IN_CLOSE_WRITE | _IN_MOVED_TO | _IN_CREATE
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of name
_READ_BYTES = 64 * 1024


class FileWatcher:
    """Sets `event` when the database at `path` (or its -wal, -journal) is written."""

    def __init__(self, path: str) -> None:
        self.event = asyncio.Event()
        self._fd = -1
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reading = False
        resolved = Path(path).resolve()
        self._directory = resolved.parent
        base = resolved.name
        self._names = {os.fsencode(name) for name in (base, f"{base}-wal", f"{base}-journal")}

    @property
    def available(self) -> bool:
        return self._fd >= 0

    def start(self) -> bool:
        """Begin watching; False (and polling only) where inotify is not available."""
        if not sys.platform.startswith("linux"):
            return False
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
            fd = int(libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC))
            if fd < 0:
                raise OSError(ctypes.get_errno(), "inotify_init1 failed")
            watch = int(libc.inotify_add_watch(fd, os.fsencode(self._directory), _MASK))
            if watch < 0:
                error = ctypes.get_errno()
                os.close(fd)
                raise OSError(error, f"inotify_add_watch({self._directory}) failed")
            self._loop = asyncio.get_running_loop()
            self._loop.add_reader(fd, self._readable)
        except (OSError, AttributeError) as exc:
            log.info("no inotify for %s (%s): polling only", self._directory, exc)
            return False
        self._fd = fd
        self._reading = True
        return True

    def pause(self) -> None:
        """Stop reading events (the kernel queues them, merging repeats)."""
        if self._fd >= 0 and self._loop is not None and self._reading:
            self._loop.remove_reader(self._fd)
            self._reading = False

    def resume(self) -> None:
        """Read events again; any queued while paused set `event` at once."""
        if self._fd >= 0 and self._loop is not None and not self._reading:
            self._loop.add_reader(self._fd, self._readable)
            self._reading = True

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd < 0:
            return
        if self._reading and self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(fd)
        self._reading = False
        with contextlib.suppress(OSError):
            os.close(fd)

    def _readable(self) -> None:
        try:
            data = os.read(self._fd, _READ_BYTES)
        except BlockingIOError:
            return
        except OSError:
            log.warning("inotify read failed: polling only", exc_info=True)
            self.close()
            self.event.set()
            return
        if self._concerns_us(data):
            self.event.set()

    def _concerns_us(self, data: bytes) -> bool:
        offset = 0
        while offset + _EVENT.size <= len(data):
            _watch, _mask, _cookie, length = _EVENT.unpack_from(data, offset)
            start = offset + _EVENT.size
            name = data[start : start + length].rstrip(b"\0")
            if name in self._names:
                return True
            offset = start + length
        return False
