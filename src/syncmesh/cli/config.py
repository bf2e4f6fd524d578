"""`syncmesh.toml`: a node's settings, from a file, the environment and flags.

Precedence, lowest first: the defaults below, the TOML file, environment
variables `SYNCMESH_<SECTION>_<KEY>` (lists comma-separated), then the
command line's flags.  Every setting is declared once, in `SETTINGS`, with
its type, unit (in the name) and bounds; docs/config.md describes each
(tests/test_config.py checks that it does).  A bad value is refused with a
ConfigError naming the key and the reason, before anything starts.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from syncmesh.errors import ConfigError
from syncmesh.node import NodeConfig

ENV_PREFIX = "SYNCMESH_"
LOG_FORMATS = ("plain", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True, slots=True)
class Setting:
    section: str
    key: str
    kind: type  # int, float, str, list (of str)
    default: Any
    minimum: float | None = None
    choices: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return f"{self.section}.{self.key}"


SETTINGS: tuple[Setting, ...] = (
    Setting("node", "database", str, ""),
    Setting("node", "listen", str, "127.0.0.1:7401"),
    Setting("api", "listen", str, ""),
    Setting("tables", "track", list, []),
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
    Setting("limits", "batch_rows_max", int, 2000, minimum=1),
    Setting("limits", "batches_in_flight_max", int, 4, minimum=1),
    Setting("limits", "conflict_ledger_rows_max", int, 10_000, minimum=0),
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
    values = {setting.name: setting.default for setting in SETTINGS}
    if path is not None:
        values.update(_from_file(path))
    values.update(_from_environment(os.environ if environ is None else environ))
    for name, value in (flags or {}).items():
        if value is not None and value != ():
            values[name] = _checked(_BY_NAME[name], value)
    if values["peers.backoff_initial_s"] > values["peers.backoff_max_s"]:
        raise ConfigError("peers.backoff_initial_s", "must not exceed peers.backoff_max_s")
    return values


def _from_file(path: Path) -> dict[str, Any]:
    try:
        document = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read the file: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), f"not valid TOML: {exc}") from exc
    values: dict[str, Any] = {}
    for section, table in document.items():
        if not isinstance(table, dict):
            raise ConfigError(section, "expected a [section] table")
        for key, value in table.items():
            setting = _BY_NAME.get(f"{section}.{key}")
            if setting is None:
                raise ConfigError(f"{section}.{key}", "unknown setting (see docs/config.md)")
            values[setting.name] = _checked(setting, value)
    return values


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
    return f"{ENV_PREFIX}{setting.section}_{setting.key}".upper()


def _parse_text(setting: Setting, raw: str) -> Any:
    if setting.kind is list:
        return [item.strip() for item in raw.split(",") if item.strip()]
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
    elif not isinstance(value, kind) or isinstance(value, bool):
        raise ConfigError(setting.name, f"expected {kind.__name__}, got {value!r}{where}")
    if setting.minimum is not None and value < setting.minimum:
        raise ConfigError(setting.name, f"must be at least {setting.minimum}, got {value!r}{where}")
    if setting.choices and value not in setting.choices:
        raise ConfigError(setting.name, f"must be one of {list(setting.choices)}, got {value!r}")
    return value


def split_listen(value: str, key: str = "node.listen") -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(key, f"{value!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def node_config(values: Mapping[str, Any]) -> NodeConfig:
    """The NodeConfig the settings describe; ConfigError if the database is missing."""
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
    return NodeConfig(
        database_path=values["node.database"],
        listen_host=host,
        listen_port=port,
        peer_urls=tuple(values["peers.urls"]),
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
        conflict_ledger_rows_max=values["limits.conflict_ledger_rows_max"],
        api_listen_host=api_host,
        api_listen_port=api_port,
    )


def render(values: Mapping[str, Any]) -> str:
    """The effective settings as TOML (what `config check` prints)."""
    lines: list[str] = []
    section = ""
    for setting in SETTINGS:
        if setting.section != section:
            section = setting.section
            lines.append(f"{'' if not lines else chr(10)}[{section}]")
        value = values[setting.name]
        if isinstance(value, list):
            text = "[" + ", ".join(_toml_string(item) for item in value) + "]"
        elif isinstance(value, str):
            text = _toml_string(value)
        else:
            text = repr(value)
        lines.append(f"{setting.key} = {text}")
    return "\n".join(lines)


def _toml_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
