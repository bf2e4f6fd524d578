"""Every exception that syncmesh raises on purpose.

    SyncError
    ├── ConfigError          a setting is missing or invalid (names the key)
    ├── StoreError           the local SQLite database refused an operation
    │   ├── SchemaError      a table cannot be replicated as declared
    │   ├── NotInitialized   the file has no syncmesh bookkeeping yet
    │   └── SiteIdConflict   a peer holds own writes this file never made: a copy writes too
    ├── ProtocolError        bytes from a peer are not a message we understand
    │   └── UnsupportedVersion
    ├── RefusedError         a peer (or we) refused the session, with a reason
    ├── TransportError       a peer could not be reached, or answered badly
    └── ClockDriftError      a stamp lies further ahead than the allowed drift

These are *operating* errors: expected, handled, counted, retried.
*Programmer* errors (a broken invariant) are `assert` statements; they are
never caught, because the only safe reaction to corrupt state is to stop.
"""


class SyncError(Exception):
    """Base class: `except SyncError` catches every deliberate failure."""


class ConfigError(SyncError):
    """A setting is invalid; `key` names it as `section.key` (or the file)."""

    def __init__(self, key: str, problem: str, *, what: str = "config key") -> None:
        """`what` names the kind of `key`: a config key, or a config file or directory."""
        super().__init__(f"{what} {key!r}: {problem}")
        self.key = key


class StoreError(SyncError):
    """The local SQLite database refused an operation."""


class SchemaError(StoreError):
    """A table cannot be replicated as declared (for example: no primary key)."""


class SiteIdConflict(StoreError):
    """A peer claims writes of our site id that this file never made during this run.

    Every own stamp of a run is at least its start, and our vector follows
    every capture: a claim beyond both comes from another live file with
    our site id (a copy), seen directly or through a third node's vector.
    """


class NotInitialized(StoreError):
    """The database file has no syncmesh bookkeeping tables."""


class ProtocolError(SyncError):
    """Bytes from a peer are not a message of this protocol."""


class UnsupportedVersion(ProtocolError):
    def __init__(self, version: object) -> None:
        super().__init__(f"unsupported protocol version {version!r}")
        self.version = version


class RefusedError(SyncError):
    """A session was refused; `reason` says why in words an operator can act on."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TransportError(SyncError):
    def __init__(self, peer: str, message: str) -> None:
        super().__init__(f"peer {peer}: {message}")
        self.peer = peer


class ClockDriftError(SyncError):
    """A stamp is further ahead of our physical clock than `max_clock_drift`."""

    def __init__(self, site_id: str, drift_ms: int, drift_ms_max: int) -> None:
        super().__init__(
            f"stamp from site {site_id} is {drift_ms} ms ahead of the local clock"
            f" (allowed: {drift_ms_max} ms)"
        )
        self.site_id = site_id
        self.drift_ms = drift_ms
