"""The SQLite backend's change notifier: `PRAGMA data_version`, with inotify hints.

The capture loop (node) learns of commits by other connections here.
`changed()` compares `PRAGMA data_version` on a connection of its own:
SQLite moves it when any other connection commits to the file.  Polling
that often enough for a low write-to-visible latency costs CPU on an idle
node, polling seldom costs latency; so on Linux a `FileWatcher` (inotify)
also hints that the file, its WAL or its journal was written, and the
loop looks at once.  The hint is never the truth (see `watch`); the loop
keeps its own polling policy.
"""

from __future__ import annotations

import sqlite3

from syncmesh.store.sqlite.watch import FileWatcher


class SqliteChangeNotifier:
    """A `ChangeNotifier` for one SQLite file; lives on the event loop's thread."""

    def __init__(self, path: str) -> None:
        # Its own connection: data_version moves for commits by *other*
        # connections, the engine's own included.
        self.connection = sqlite3.connect(path, isolation_level=None)
        self.files = FileWatcher(path)
        self.last_version = -1

    def start(self) -> bool:
        """Begin; True if wake-up hints will come (inotify), False: poll only."""
        return self.files.start()

    def changed(self) -> bool:
        """True if a commit landed since the last call (always True on the first)."""
        version = self.connection.execute("PRAGMA data_version").fetchone()[0]
        if version == self.last_version:
            return False
        self.last_version = version
        return True

    def clear_hint(self) -> None:
        self.files.event.clear()

    async def wait_hint(self) -> None:
        """Until the file is written (a hint: look with `changed`)."""
        await self.files.event.wait()

    def pause_hints(self) -> None:
        self.files.pause()

    def resume_hints(self) -> None:
        self.files.resume()

    def close(self) -> None:
        self.files.close()
        self.connection.close()
