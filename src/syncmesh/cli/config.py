"""`syncmesh.toml`: a node's settings, from a file, the environment and flags.

Precedence, lowest first: the defaults below, the TOML file, environment
variables `SYNCMESH_<SECTION>_<KEY>` (lists comma-separated), then the
command line's flags.  Every setting is declared once, in `SETTINGS`, with
its type, unit (in the name) and bounds; docs/config.md describes each
(tests/test_config.py checks that it does).  A bad value is refused with a
ConfigError naming the key and the reason, before anything starts.

Named peers are tables of their own, `[peers.NAME]` with `url`, `send` and
`receive` (not settings of SETTINGS: there is one per peer).  Secrets never
need to be in the file: the API token comes from `api.token_file` or the
environment (SYNCMESH_API_TOKEN), and `config check` prints it masked.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from syncmesh.errors import ConfigError
from syncmesh.node import NodeConfig
from syncmesh.node.config import FleetConfig, PeerConfig, Secret, is_pattern
from syncmesh.protocol import FRAME_BYTES_MAX
from syncmesh.store import OrphanPolicy
from syncmesh.store.open import table_problems
from syncmesh.store.records import ORPHAN_POLICIES, ORPHAN_POLICY_DEFAULT
from syncmesh.transport import TlsFiles, valid_site_name

ENV_PREFIX = "SYNCMESH_"
NAMED_PEERS = "peers.named"  # {name: {"url": str, "send": [...], "receive": [...]}}
PEER_KEYS = ("url", "send", "receive")
# `[tables.orphans]`: {"default": policy, TABLE: policy} (file only, like peers).
ORPHANS = "tables.orphans"
ALL_TABLES = "*"
FLEET_FILES = ("credentials", "tls_ca", "tls_cert", "tls_key")
# The fleet's name is a NATS subject token and part of the stream's name
# (transport.nats checks the same; cli imports no transport module that needs nats-py).
CLUSTER_NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
SECRET_SETTINGS = frozenset({"api.token"})
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")
LOG_FORMATS = ("plain", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True, slots=True)
class Setting:
    section: str
    key: str
    kind: type  # int, float, str, bool, list (of str)
    default: Any
    minimum: float | None = None
    choices: tuple[str, ...] = ()
    maximum: float | None = None

    @property
    def name(self) -> str:
        return f"{self.section}.{self.key}"


SETTINGS: tuple[Setting, ...] = (
    Setting("node", "database", str, ""),
    Setting("node", "listen", str, "127.0.0.1:7401"),
    Setting("node", "insecure_no_tls", bool, False),
    Setting("tls", "cert", str, ""),
    Setting("tls", "key", str, ""),
    Setting("tls", "ca", str, ""),
    Setting("tls", "crl", str, ""),
    Setting("api", "listen", str, ""),
    Setting("api", "token", str, ""),
    Setting("api", "token_file", str, ""),
    Setting("api", "require_token", bool, False),
    Setting("tables", "track", list, []),
    Setting("tables", "allow_integer_keys", list, []),
    Setting("peers", "urls", list, []),
    Setting("peers", "heartbeat_s", float, 5.0, minimum=0.1),
    Setting("peers", "handshake_timeout_s", float, 10.0, minimum=0.1),
    Setting("peers", "connect_timeout_s", float, 5.0, minimum=0.1),
    Setting("peers", "backoff_initial_s", float, 0.1, minimum=0.001),
    Setting("peers", "backoff_max_s", float, 5.0, minimum=0.001),
    Setting("sync", "max_clock_drift_s", float, 60.0, minimum=0.001),
    Setting("sync", "poll_interval_ms", int, 5, minimum=1),
    Setting("sync", "relay_hold_ms", int, 10, minimum=0),
    Setting("sync", "idle_resend_s", float, 2.0, minimum=0.01),
    Setting("sync", "quarantine_retry_s", float, 5.0, minimum=0.01),
    Setting("sync", "verify_interval_s", float, 600.0, minimum=0.0),
    Setting("sync", "verify_settle_s", float, 2.0, minimum=0.0),
    Setting("sync", "verify_repair", bool, True),
    Setting("limits", "batch_rows_max", int, 2000, minimum=1),
    Setting("limits", "batches_in_flight_max", int, 4, minimum=1),
    Setting(
        "limits", "message_bytes_max", int, FRAME_BYTES_MAX, minimum=1024, maximum=FRAME_BYTES_MAX
    ),
    Setting("limits", "rows_per_message_max", int, 100_000, minimum=1),
    Setting("limits", "sessions_per_peer_max", int, 2, minimum=1),
    Setting("limits", "inbound_sessions_max", int, 64, minimum=1),
    Setting("limits", "conflict_ledger_rows_max", int, 10_000, minimum=0),
    Setting("lifecycle", "interval_s", float, 10.0, minimum=0.0),
    Setting("lifecycle", "batch_rows", int, 1000, minimum=1),
    Setting("health", "peer_down_s_max", float, 60.0, minimum=0.0),
    Setting("health", "quarantine_window_s", float, 60.0, minimum=0.0),
    Setting("transport.nats", "servers", list, []),
    Setting("transport.nats", "cluster", str, "default"),
    Setting("transport.nats", "credentials", str, ""),
    Setting("transport.nats", "tls_ca", str, ""),
    Setting("transport.nats", "tls_cert", str, ""),
    Setting("transport.nats", "tls_key", str, ""),
    Setting("transport.nats", "replicas", int, 3, minimum=1, maximum=5),
    Setting("transport.nats", "fetch_messages_max", int, 64, minimum=1, maximum=10_000),
    Setting("transport.nats", "fetch_wait_s", float, 1.0, minimum=0.01),
    Setting("transport.nats", "status_interval_s", float, 2.0, minimum=0.1),
    Setting("logging", "level", str, "info", choices=LOG_LEVELS),
    Setting("logging", "format", str, "plain", choices=LOG_FORMATS),
)
_BY_NAME = {setting.name: setting for setting in SETTINGS}


def load_settings(
    path: Path | None,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Every setting's effective value, by `section.key`; ConfigError names a bad one."""
    values: dict[str, Any] = {setting.name: setting.default for setting in SETTINGS}
    values[NAMED_PEERS] = {}
    values[ORPHANS] = {"default": ORPHAN_POLICY_DEFAULT}
    if path is not None:
        values.update(_from_file(path))
    values.update(_from_environment(os.environ if environ is None else environ))
    for name, value in (flags or {}).items():
        if name == NAMED_PEERS:
            for peer, url in (value or {}).items():
                values[NAMED_PEERS].setdefault(peer, _peer_table(peer, {}))["url"] = url
        elif value is not None and value != ():
            values[name] = _checked(_BY_NAME[name], value)
    if values["peers.backoff_initial_s"] > values["peers.backoff_max_s"]:
        raise ConfigError("peers.backoff_initial_s", "must not exceed peers.backoff_max_s")
    return values


def _from_file(path: Path) -> dict[str, Any]:
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read the file: {exc}", what="config file") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(
            str(path),
            f"not a TOML text file: byte 0x{exc.object[exc.start]:02x} at offset {exc.start}"
            " is not UTF-8",
        ) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), f"not valid TOML: {exc}", what="config file") from exc
    values: dict[str, Any] = {}
    for section, table in document.items():
        if not isinstance(table, dict):
            raise ConfigError(section, "expected a [section] table")
        for key, value in table.items():
            if section == "peers" and isinstance(value, dict):
                values.setdefault(NAMED_PEERS, {})[key] = _peer_table(key, value)
                continue
            if section == "tables" and key == "orphans":
                values[ORPHANS] = _orphans_table(value)
                continue
            if section == "transport":
                values.update(_transport_table(key, value))
                continue
            setting = _BY_NAME.get(f"{section}.{key}")
            if setting is None:
                raise ConfigError(f"{section}.{key}", "unknown setting (see docs/config.md)")
            values[setting.name] = _checked(setting, value)
    return values


def _transport_table(name: str, table: Any) -> dict[str, Any]:
    """A `[transport.NAME]` table (only `[transport.nats]` exists), its keys checked."""
    if name != "nats" or not isinstance(table, dict):
        raise ConfigError(f"transport.{name}", "unknown transport (only [transport.nats])")
    values: dict[str, Any] = {}
    for key, value in table.items():
        setting = _BY_NAME.get(f"transport.nats.{key}")
        if setting is None:
            raise ConfigError(f"transport.nats.{key}", "unknown setting (see docs/config.md)")
        values[setting.name] = _checked(setting, value)
    return values


def _peer_table(name: str, table: Mapping[str, Any]) -> dict[str, Any]:
    """A `[peers.NAME]` table, checked: url (optional), send and receive (lists of tables)."""
    if not valid_site_name(name):
        raise ConfigError(
            f"peers.{name}",
            "a peer's name is its certificate's site name: a-z, 0-9, '.', '_', '-'",
        )
    for key in table:
        if key not in PEER_KEYS:
            raise ConfigError(f"peers.{name}.{key}", "unknown key (url, send, receive)")
    peer: dict[str, Any] = {"url": "", "send": [ALL_TABLES], "receive": [ALL_TABLES]}
    url = table.get("url", "")
    if not isinstance(url, str):
        raise ConfigError(f"peers.{name}.url", "expected a string")
    peer["url"] = url
    for key in ("send", "receive"):
        tables = table.get(key, [ALL_TABLES])
        if not isinstance(tables, list) or not all(isinstance(item, str) for item in tables):
            raise ConfigError(f"peers.{name}.{key}", "expected a list of table names")
        peer[key] = list(tables)
    return peer


def _orphans_table(table: Any) -> dict[str, str]:
    """`[tables.orphans]`, checked: `default` and per child table, one of ORPHAN_POLICIES."""
    if not isinstance(table, dict):
        raise ConfigError(
            ORPHANS,
            "expected a table [tables.orphans] of policies, one of"
            f' {list(ORPHAN_POLICIES)}: default = "declared", TABLE = "keep"',
        )
    policies = {"default": ORPHAN_POLICY_DEFAULT}
    for key, value in table.items():
        if value not in ORPHAN_POLICIES:
            raise ConfigError(
                f"{ORPHANS}.{key}", f"must be one of {list(ORPHAN_POLICIES)}, got {value!r}"
            )
        policies[key] = value
    return policies


def orphan_policy(values: Mapping[str, Any]) -> OrphanPolicy:
    """The `OrphanPolicy` of `[tables.orphans]`."""
    table: dict[str, str] = values.get(ORPHANS) or {}
    return OrphanPolicy(
        default=table.get("default", ORPHAN_POLICY_DEFAULT),
        tables={name: policy for name, policy in table.items() if name != "default"},
    )


def _from_environment(environ: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        raw = environ.get(env_name(setting))
        if raw is None:
            continue
        values[setting.name] = _checked(
            setting, _parse_text(setting, raw), source=env_name(setting)
        )
    return values


def env_name(setting: Setting) -> str:
    return f"{ENV_PREFIX}{setting.section}_{setting.key}".upper().replace(".", "_")


def _parse_text(setting: Setting, raw: str) -> Any:
    if setting.kind is list:
        return [item.strip() for item in raw.split(",") if item.strip()]
    if setting.kind is bool:
        if raw.strip().lower() in TRUE_WORDS:
            return True
        if raw.strip().lower() in FALSE_WORDS:
            return False
        raise ConfigError(setting.name, f"{raw!r} is not true or false")
    if setting.kind in (int, float):
        try:
            return setting.kind(raw)
        except ValueError as exc:
            raise ConfigError(setting.name, f"{raw!r} is not a number") from exc
    return raw


def _checked(setting: Setting, value: Any, *, source: str = "") -> Any:
    where = f" (from {source})" if source else ""
    kind = setting.kind
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if kind is list:
        if not isinstance(value, list | tuple) or not all(isinstance(item, str) for item in value):
            raise ConfigError(setting.name, f"expected a list of strings{where}")
        value = list(value)
    elif kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(setting.name, f"expected true or false, got {value!r}{where}")
    elif not isinstance(value, kind) or isinstance(value, bool):
        shown = "***" if setting.name in SECRET_SETTINGS else repr(value)
        raise ConfigError(setting.name, f"expected {kind.__name__}, got {shown}{where}")
    if setting.minimum is not None and value < setting.minimum:
        raise ConfigError(setting.name, f"must be at least {setting.minimum}, got {value!r}{where}")
    if setting.maximum is not None and value > setting.maximum:
        raise ConfigError(setting.name, f"must be at most {setting.maximum}, got {value!r}{where}")
    if setting.choices and value not in setting.choices:
        raise ConfigError(setting.name, f"must be one of {list(setting.choices)}, got {value!r}")
    return value


def split_listen(value: str, key: str = "node.listen") -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(key, f"{value!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def node_config(values: Mapping[str, Any]) -> NodeConfig:
    """The NodeConfig the settings describe; ConfigError for a missing or unsafe setting.

    Refuses what would expose the node (NodeConfig.check_exposure): plain
    HTTP off loopback without `node.insecure_no_tls`, an API off loopback
    without a token, per-peer rights without TLS.
    """
    if not values["node.database"]:
        raise ConfigError("node.database", "no database file given (argument, file or env)")
    for url in values["peers.urls"]:
        if not url.startswith(("http://", "https://")):
            raise ConfigError("peers.urls", f"{url!r} is not an http:// URL")
    host, port = split_listen(values["node.listen"])
    api_host: str | None = None
    api_port = 0
    if values["api.listen"]:
        api_host, api_port = split_listen(values["api.listen"], key="api.listen")
    config = NodeConfig(
        database_path=values["node.database"],
        listen_host=host,
        listen_port=port,
        peer_urls=tuple(values["peers.urls"]),
        peers=_named_peers(values.get(NAMED_PEERS, {})),
        tls=_tls_files(values),
        insecure_no_tls=values["node.insecure_no_tls"],
        api_token=_api_token(values),
        api_require_token=values["api.require_token"],
        message_bytes_max=values["limits.message_bytes_max"],
        rows_per_message_max=values["limits.rows_per_message_max"],
        sessions_per_peer_max=values["limits.sessions_per_peer_max"],
        inbound_sessions_max=values["limits.inbound_sessions_max"],
        clock_drift_ms_max=int(values["sync.max_clock_drift_s"] * 1000),
        batch_rows_max=values["limits.batch_rows_max"],
        batches_in_flight_max=values["limits.batches_in_flight_max"],
        poll_interval_ms=values["sync.poll_interval_ms"],
        heartbeat_s=values["peers.heartbeat_s"],
        handshake_timeout_s=values["peers.handshake_timeout_s"],
        connect_timeout_s=values["peers.connect_timeout_s"],
        backoff_initial_s=values["peers.backoff_initial_s"],
        backoff_max_s=values["peers.backoff_max_s"],
        idle_resend_s=values["sync.idle_resend_s"],
        relay_hold_ms=values["sync.relay_hold_ms"],
        quarantine_retry_s=values["sync.quarantine_retry_s"],
        verify_interval_s=values["sync.verify_interval_s"],
        verify_settle_s=values["sync.verify_settle_s"],
        verify_repair=values["sync.verify_repair"],
        conflict_ledger_rows_max=values["limits.conflict_ledger_rows_max"],
        lifecycle_interval_s=values["lifecycle.interval_s"],
        lifecycle_batch_rows=values["lifecycle.batch_rows"],
        api_listen_host=api_host,
        api_listen_port=api_port,
        health_peer_down_s_max=values["health.peer_down_s_max"],
        health_quarantine_window_s=values["health.quarantine_window_s"],
        track_patterns=tuple(values["tables.track"]),
        allow_integer_keys=frozenset(values["tables.allow_integer_keys"]),
        orphan_policy=orphan_policy(values),
        fleet=fleet_config(values),
    )
    config.check_exposure()
    return config


def fleet_config(values: Mapping[str, Any]) -> FleetConfig | None:
    """`[transport.nats]` as a FleetConfig; None without servers.  ConfigError names a bad key."""
    servers = values["transport.nats.servers"]
    if not servers:
        return None
    for url in servers:
        if not url.startswith(("nats://", "tls://")) or not url.partition("://")[2]:
            raise ConfigError(
                "transport.nats.servers", f"{url!r} is not a nats://HOST:PORT (or tls://) URL"
            )
    cluster = values["transport.nats.cluster"]
    if CLUSTER_NAME_PATTERN.fullmatch(cluster) is None:
        raise ConfigError(
            "transport.nats.cluster",
            f"{cluster!r} is not a cluster name: 1 to 32 of a-z, 0-9, '_' and '-', starting"
            " with a letter or digit (it becomes part of subjects and the stream's name)",
        )
    files = {key: values[f"transport.nats.{key}"] for key in FLEET_FILES}
    for key, path in files.items():
        if path and not Path(path).is_file():
            raise ConfigError(f"transport.nats.{key}", f"{path} is not a readable file")
    if bool(files["tls_cert"]) != bool(files["tls_key"]):
        raise ConfigError("transport.nats.tls_cert", "a client certificate needs its key: both")
    return FleetConfig(
        servers=tuple(servers),
        cluster=cluster,
        replicas=values["transport.nats.replicas"],
        fetch_messages_max=values["transport.nats.fetch_messages_max"],
        fetch_wait_s=values["transport.nats.fetch_wait_s"],
        status_interval_s=values["transport.nats.status_interval_s"],
        **files,
    )


def _named_peers(tables: Mapping[str, Mapping[str, Any]]) -> tuple[PeerConfig, ...]:
    peers = []
    for name, table in sorted(tables.items()):
        url = table["url"]
        if url and not url.startswith(("http://", "https://")):
            raise ConfigError(f"peers.{name}.url", f"{url!r} is not an http(s):// URL")
        send, receive = (
            None if ALL_TABLES in table[key] else frozenset(table[key])
            for key in ("send", "receive")
        )
        peers.append(PeerConfig(name=name, url=url, send=send, receive=receive))
    return tuple(peers)


def _tls_files(values: Mapping[str, Any]) -> TlsFiles | None:
    given = {key: values[f"tls.{key}"] for key in ("cert", "key", "ca")}
    if not any(given.values()):
        if values["tls.crl"]:
            raise ConfigError("tls.crl", "a revocation list needs tls.cert, tls.key and tls.ca")
        return None
    for key, value in given.items():
        if not value:
            raise ConfigError(f"tls.{key}", "TLS needs all three: tls.cert, tls.key and tls.ca")
    return TlsFiles(cert=given["cert"], key=given["key"], ca=given["ca"], crl=values["tls.crl"])


def _api_token(values: Mapping[str, Any]) -> Secret | None:
    """The API token, from api.token (or SYNCMESH_API_TOKEN) or from api.token_file."""
    token: str = values["api.token"]
    path: str = values["api.token_file"]
    if token and path:
        raise ConfigError("api.token_file", "give the token once: api.token or api.token_file")
    if path:
        try:
            token = Path(path).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError("api.token_file", f"cannot read {path}: {exc}") from exc
        if not token:
            raise ConfigError("api.token_file", f"{path} is empty")
    if not token:
        return None
    if len(token) < 16 or any(char.isspace() for char in token):
        raise ConfigError("api.token", "must be at least 16 characters, without spaces")
    return Secret(token)


def tracked_table_problems(values: Mapping[str, Any]) -> list[str]:
    """Why `[tables] track` would stop `serve`: a missing file, table or primary key.

    Read-only, so `config check` is safe next to a running node.  Patterns
    (`"*"`, `"app_*"`) are not checked: they match whatever tables exist
    when the node looks, and a table they match that cannot be tracked is
    logged, not fatal.
    """
    tables = [name for name in values["tables.track"] if not is_pattern(name)]
    if not tables:
        return []
    database = Path(values["node.database"])
    if not database.exists():
        return [
            f"tables.track: the database {database} does not exist, so its tables cannot be"
            f" checked (`syncmesh init {database}` creates it)"
        ]
    allowed = values["tables.allow_integer_keys"]
    return [f"tables.track: {problem}" for problem in table_problems(database, tables, allowed)]


def file_permission_warnings(values: Mapping[str, Any], config_path: Path | None) -> list[str]:
    """Secret files that others can read: the TLS key, the token file, the config file.

    Warned, not refused: a deployment may share them with a service group on
    purpose.  syncmesh itself creates keys 0600 and directories 0700.
    """
    paths = [("tls.key", values["tls.key"]), ("api.token_file", values["api.token_file"])]
    if config_path is not None and values["api.token"]:
        paths.append(("the config file (it holds api.token)", str(config_path)))
    warnings = []
    for what, path in paths:
        if not path:
            continue
        try:
            mode = os.stat(path).st_mode
        except OSError:
            continue  # a missing file is refused where it is read
        if mode & 0o077:
            warnings.append(
                f"{path} ({what}) can be read by other users (mode {mode & 0o777:o});"
                f" chmod 600 {path}"
            )
    return warnings


def render(values: Mapping[str, Any]) -> str:
    """The effective settings as TOML (what `config check` prints)."""
    lines: list[str] = []
    section = ""
    for setting in SETTINGS:
        if setting.section != section:
            section = setting.section
            lines.append(f"{'' if not lines else chr(10)}[{section}]")
        value = values[setting.name]
        if setting.name in SECRET_SETTINGS and value:
            text = '"***"'
        elif isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, list):
            text = "[" + ", ".join(_toml_string(item) for item in value) + "]"
        elif isinstance(value, str):
            text = _toml_string(value)
        else:
            text = repr(value)
        lines.append(f"{setting.key} = {text}")
    orphans = values.get(ORPHANS) or {}
    lines.append("\n[tables.orphans]")
    lines.extend(
        f"{_toml_key(name)} = {_toml_string(policy)}"
        for name, policy in sorted(orphans.items(), key=lambda item: item[0] != "default")
    )
    for name, peer in sorted(values.get(NAMED_PEERS, {}).items()):
        lines.append(f"\n[peers.{name}]")
        lines.append(f"url = {_toml_string(peer['url'])}")
        for key in ("send", "receive"):
            lines.append(f"{key} = [" + ", ".join(_toml_string(t) for t in peer[key]) + "]")
    return "\n".join(lines)


def _toml_key(name: str) -> str:
    bare = name.replace("_", "").replace("-", "").isalnum() and name.isascii()
    return name if bare else _toml_string(name)


def _toml_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
