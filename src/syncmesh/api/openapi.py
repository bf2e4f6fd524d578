"""The OpenAPI 3.1 description of a node's HTTP API, served at /v1/openapi.json.

Kept by hand next to the routes; tests/test_api.py checks that every route
the application serves is described here and that nothing else is.
"""

from __future__ import annotations

from typing import Any

from syncmesh import __version__


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


# The last periodic verify, as a dialled peer and a fleet site report it.
_VERIFIED: dict[str, Any] = {
    "verified_ms": {
        "type": "integer",
        "description": "when the last periodic verify against this peer or site ended (Unix ms);"
        " 0 before the first (peers this node dials, one fleet site per round;"
        " sync.verify_interval_s)",
    },
    "verify_identical": {
        "type": ["boolean", "null"],
        "description": "the last verify's verdict: no row differs (rows still changing"
        " are counted in verify_unsettled_rows); null if it failed or has not run",
    },
    "verify_divergent_rows": {"type": "integer"},
    "verify_unsettled_rows": {
        "type": "integer",
        "description": "rows still changing at every re-check of the last verify",
    },
    "verify_round_trips": {"type": "integer"},
    "verify_bytes": {"type": "integer"},
    "verify_seconds": {"type": "number"},
    "verify_error": {"type": "string"},
    "verify_repaired_rows": {
        "type": "integer",
        "description": "of the divergent rows, how many the repair after the last verify merged"
        " both ways (sync.verify_repair; 0 when it is off)",
    },
    "verify_repaired_rows_total": {
        "type": "integer",
        "description": "the same, summed over every verify since the node started",
    },
    "verify_not_compared": {
        "type": "array",
        "items": {"type": "string"},
        "description": "tables the last verify did not compare: their columns differ at the"
        " peer (a migration not run at both sites yet)",
    },
    "verify_waiting": {
        "type": "string",
        "description": "not empty while the periodic verify waits for both sides to catch up"
        " (a peer: our pull at its head and its acknowledgement at ours): why. Rows in"
        " flight are no divergence, so no verdict is given; the other verify_* fields are"
        " the last verdict's",
    },
}

_PEER = {
    "type": "object",
    "properties": {
        "address": {"type": "string"},
        "site_id": {"type": "string"},
        "name": {
            "type": "string",
            "description": "the peer's site name (its certificate, or [peers.NAME]); empty if none",
        },
        "dialed": {"type": "boolean"},
        "state": {
            "type": "string",
            "description": "connecting, handshake, streaming, backoff, refused, connected by peer",
        },
        "cursor": {"type": "integer"},
        "peer_head_seq": {"type": "integer"},
        "lag_ms": {
            "type": ["integer", "null"],
            "description": "how far this node trails the peer's feed; 0 when caught up; null"
            " when not known (nothing of the peer's feed applied yet)",
        },
        "catchup_progress": {
            "type": ["number", "null"],
            "description": "while reading the peer's feed up to its head (bootstrap, after a"
            " partition): 0..1 of the way, estimated on the feed's seq axis; null once caught up",
        },
        "catchup_rows_per_s": {
            "type": "number",
            "description": "rows received from the peer per second over the last 10 s of batches",
        },
        "catchup_eta_s": {
            "type": ["number", "null"],
            "description": "seconds left at the recent pace; null when caught up or no pace yet",
        },
        **_VERIFIED,
        "last_error_ms": {
            "type": "integer",
            "description": "when last_error happened (Unix ms); 0 if never",
        },
        "down_since_ms": {
            "type": "integer",
            "description": "a configured peer not streaming: since when (Unix ms); 0 while it"
            " streams (health.peer_down_s_max)",
        },
        "out_lag_changes": {
            "type": ["integer", "null"],
            "description": "rows of this node's feed the peer has not acknowledged (capped"
            " at 10000); null before the peer's first PULL",
        },
        "out_lag_ms": {
            "type": ["integer", "null"],
            "description": "how far the peer trails this node's feed; null before its PULL,"
            " or while it has acknowledged nothing (not known)",
        },
        "rows_in": {"type": "integer"},
        "rows_out": {"type": "integer"},
        "batches_in": {"type": "integer"},
        "batches_out": {"type": "integer"},
        "bytes_in": {"type": "integer"},
        "bytes_out": {"type": "integer"},
        "quarantined_rows": {"type": "integer"},
        "rights_refused_rows": {
            "type": "integer",
            "description": "rows of tables the peer may not send here, refused (this session)",
        },
        "last_batch_ms": {"type": "integer"},
        "last_error": {"type": "string"},
        "reconnects": {"type": "integer"},
        "schema_differences": {
            "type": "array",
            "items": {"type": "string"},
            "description": "tables or columns tracked on one side only, named (no refusal:"
            " only what both track is exchanged)",
        },
        "adopts_vector": {
            "type": "boolean",
            "description": "the peer's tables and columns cover ours, so its vector claims"
            " are adopted",
        },
    },
}

_HEALTH = {
    "type": "object",
    "required": ["ok", "reasons"],
    "properties": {
        "ok": {"type": "boolean"},
        "reasons": {"type": "array", "items": {"type": "string"}},
    },
}
_FLEET_CHAIN = {
    "type": "object",
    "properties": {
        "site_id": {"type": "string"},
        "cursor": {"type": "integer"},
        "stream_seq": {"type": "integer"},
        "last_stream_seq": {"type": "integer"},
        "lag_ms": {"type": ["integer", "null"]},
        "rows_applied": {"type": "integer"},
        "foreign_rows_refused": {"type": "integer"},
        "gap": {"type": "string"},
        "bootstrap": {
            "type": "string",
            "description": "how its last gap was closed; empty if never",
        },
        "bootstrap_rows": {"type": "integer"},
        "bootstrap_error": {"type": "string"},
        **_VERIFIED,
    },
}
_STATUS = {
    "type": "object",
    "properties": {
        "site_id": {"type": "string"},
        "listen": {"type": "string"},
        "captures": {"type": "integer"},
        "rights_refused_rows": {
            "type": "integer",
            "description": "rows refused for a peer's rights since the node started",
        },
        "refused_connections": {
            "type": "integer",
            "description": "connections refused before HELLO: certificate not of a peer, limits",
        },
        "identity_conflicts": {
            "type": "array",
            "items": {"type": "string"},
            "description": "two live database files with one site id, seen lately (with the fix)",
        },
        "fleet": {
            "type": ["object", "null"],
            "description": "the NATS JetStream fleet stream (docs/nats.md); null without one",
            "properties": {
                "stream": {"type": "string"},
                "subject": {"type": "string", "description": "where this site publishes"},
                "state": {
                    "type": "string",
                    "enum": ["connecting", "starting", "streaming", "reconnecting", "backoff"],
                    "description": "streaming once our publish side started (docs/nats.md)",
                },
                "last_error": {"type": "string"},
                "publish_waiting_since_ms": {
                    "type": "integer",
                    "description": "since when our writes wait, no publish acked; 0: none",
                },
                "published_seq": {"type": "integer", "description": "where our chain ends"},
                "stream_first_seq": {"type": "integer"},
                "stream_last_seq": {"type": "integer"},
                "consumer_pending": {"type": "integer"},
                "consumer_ack_pending": {"type": "integer"},
                "foreign_rows_refused": {"type": "integer"},
                "gaps": {"type": "array", "items": {"type": "string"}},
                "state_stream": {
                    "type": "string",
                    "description": "the compacted stream gaps are closed from",
                },
                "state_published_rows": {"type": "integer"},
                "bootstraps": {"type": "integer", "description": "gaps closed from it"},
                "claims_published": {
                    "type": "integer",
                    "description": "our claims of what we hold (tombstone collection, ADR 0017)",
                },
                "claims_refused": {
                    "type": "integer",
                    "description": "other sites' claims that did not parse",
                },
                "own_restore": {
                    "type": "string",
                    "description": "own writes lost by a restore of the file, merged back"
                    " from the stream: restoring, or restored (empty if never)",
                },
                "own_restores": {
                    "type": "integer",
                    "description": "restores whose lost own writes came back from the stream",
                },
                "site_id_conflict": {
                    "type": "string",
                    "description": "another live file with our site id publishes on our"
                    " subject, with the fix (empty if none seen)",
                },
                "configuration_error": {
                    "type": "string",
                    "description": "what the NATS servers refused of this node's configuration"
                    " since it last streamed, with the fix (empty if nothing); health names"
                    " it at once",
                },
                "relay_subject": {
                    "type": "string",
                    "description": "where this site relays the writes of its WebSocket peers"
                    " that are not on the stream",
                },
                "relayed_seq": {"type": "integer", "description": "where our relay chain ends"},
                "relayed_messages": {"type": "integer"},
                "relayed_rows": {
                    "type": "integer",
                    "description": "rows of sites off the stream we relayed onto it",
                },
                "sites": {"type": "array", "items": _FLEET_CHAIN},
                "relays": {
                    "type": "array",
                    "description": "other sites' relay chains read here, per relayer (site_id"
                    " is the relayer's); refused rows claimed a write of a site on the stream",
                    "items": _FLEET_CHAIN,
                },
            },
        },
        "store": {
            "type": "object",
            "properties": {
                "site_id": {"type": "string"},
                "incarnation": {"type": "string"},
                "seq": {"type": "integer"},
                "hlc": {"type": "integer"},
                "fingerprint": {"type": "string"},
                "tables": {"type": "object", "additionalProperties": {"type": "integer"}},
                "vector": {"type": "object", "additionalProperties": {"type": "integer"}},
                "peers": {"type": "array", "items": {"type": "object"}},
                "quarantined_rows": {"type": "integer"},
                "restore_floor": {"type": "integer"},
                "path": {"type": "string"},
                "schema_problems": {"type": "array", "items": {"type": "string"}},
                "row_problems": {"type": "array", "items": {"type": "string"}},
                "warnings": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "risks of tracked tables that need the operator, with the"
                    " fix (keys SQLite allocates per site: docs/keys.md); not a health reason",
                },
                "orphans": {
                    "type": "object",
                    "description": "per tracked table: rows whose foreign key names a missing"
                    " parent (PRAGMA foreign_key_check; Django's migrate fails on them)",
                    "additionalProperties": {"type": "integer"},
                },
                "orphan_problems": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "orphans the policy could not resolve, with the reason",
                },
                "conflicts": {
                    "type": "object",
                    "description": "per tracked table: conflicts recorded here, ever",
                    "additionalProperties": {"type": "integer"},
                },
                "waiting_cells": {
                    "type": "object",
                    "description": "per table, per column: cells of a column not added here yet",
                    "additionalProperties": {
                        "type": "object",
                        "additionalProperties": {"type": "integer"},
                    },
                },
                "discarded_cells": {
                    "type": "object",
                    "description": "per table, per column: cells of a column dropped here",
                    "additionalProperties": {
                        "type": "object",
                        "additionalProperties": {"type": "integer"},
                    },
                },
                "parked_cells": {
                    "type": "object",
                    "description": "per table, per column: cells of a name dropped here,"
                    " written after the drop, kept in case it is added again here",
                    "additionalProperties": {
                        "type": "object",
                        "additionalProperties": {"type": "integer"},
                    },
                },
                "null_key_rows": {
                    "type": "object",
                    "description": "per tracked table: rows with a NULL key value, not synced"
                    " (only tables that have such rows)",
                    "additionalProperties": {"type": "integer"},
                },
            },
        },
        "peers": {"type": "array", "items": _PEER},
        "health": {**_HEALTH, "description": "the verdict of /v1/health (syncmesh.node.health)"},
    },
}

_QUARANTINED = {
    "type": "array",
    "items": {
        "type": "object",
        "properties": {
            "id": {"type": "integer"},
            "table": {"type": "string"},
            "pk": {"type": "string"},
            "origin": {"type": "string"},
            "reason": {"type": "string"},
            "created_ms": {"type": "integer"},
        },
    },
}

_THROUGHPUT = {
    "type": "object",
    "properties": {
        "now_ms": {"type": "integer", "description": "the node's clock, Unix milliseconds"},
        "interval_s": {"type": "number", "description": "the width of one sample"},
        "window_s": {"type": "number", "description": "how far back the samples reach"},
        "samples": {
            "type": "array",
            "description": "oldest first, contiguous; the last interval is still open",
            "items": {
                "type": "object",
                "properties": {
                    "start_ms": {"type": "integer", "description": "Unix time, milliseconds"},
                    "captured_rows": {"type": "integer", "description": "local writes stamped"},
                    "applied_rows": {"type": "integer", "description": "peers' rows applied"},
                },
            },
        },
    },
}

# A value as JSON holds it: blobs and infinite reals are marked (model.json_safe).
_VALUE = {
    "description": 'an SQL value; a BLOB is {"$blob": "<hex>"}, an infinite REAL'
    ' {"$real": "inf" | "-inf"}',
    "oneOf": [
        {"type": "null"},
        {"type": "integer"},
        {"type": "number"},
        {"type": "string"},
        {"type": "object", "properties": {"$blob": {"type": "string"}}},
        {"type": "object", "properties": {"$real": {"type": "string"}}},
    ],
}
_VERSION = {
    "type": "object",
    "properties": {
        "value": _VALUE,
        "hlc": {"type": "integer", "description": "the write's hybrid logical clock stamp"},
        "site": {"type": "string", "description": "the site id that wrote it"},
    },
}
_CONFLICTS = {
    "type": "object",
    "properties": {
        "conflicts": {
            "type": "array",
            "description": "newest first",
            "items": {
                "type": "object",
                "properties": {
                    "table": {"type": "string"},
                    "key": {"type": "array", "items": _VALUE},
                    "column": {"type": "string"},
                    "winner": _VERSION,
                    "loser": _VERSION,
                    "resolved_at": {
                        "type": "string",
                        "format": "date-time",
                        "description": "when this node's merge resolved it (UTC)",
                    },
                },
            },
        }
    },
}


def _query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema,
    }


API_PATHS: dict[str, dict[str, Any]] = {
    "/v1/status": {
        "get": {
            "summary": "This node, its tables and its peers",
            "responses": {"200": _json("The node's statistics", _STATUS)},
        }
    },
    "/sync/v1/verify": {
        "post": {
            "summary": "Verify and repair between sites: hash trees, digests and rows"
            " (docs/protocol.md, 'Verify'); for peers and `syncmesh verify`, admitted like the"
            " peer WebSocket (with TLS: a configured peer's certificate), not by the API token",
            "security": [],
            "requestBody": {
                "required": True,
                "content": {
                    "application/msgpack": {
                        "schema": {
                            "type": "object",
                            "required": ["v", "op"],
                            "properties": {
                                "v": {"const": 1},
                                "op": {"enum": ["roots", "leaves", "digests", "fetch", "push"]},
                            },
                        }
                    }
                },
            },
            "responses": {
                "200": {
                    "description": "The answer, a msgpack map",
                    "content": {"application/msgpack": {"schema": {"type": "object"}}},
                },
                "400": {"description": "A request the node cannot read, named in `detail`"},
                "403": {"description": "With TLS: the certificate is not a configured peer's"},
            },
        }
    },
    "/sync/v1/snapshot": {
        "post": {
            "summary": "Snapshot bootstrap (docs/adr/0016-snapshot-bootstrap.md): take a consistent"
            " copy of this node's file for a joining site (`syncmesh join`), admitted like the"
            " peer WebSocket, not by the API token; registers the joiner as a member first",
            "security": [],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["site"],
                            "properties": {"site": {"type": "string", "pattern": "^[0-9a-f]{32}$"}},
                        }
                    }
                },
            },
            "responses": {
                "200": {
                    "description": "The snapshot's id and description (SnapshotInfo)",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["id", "source_site", "head_seq", "bytes", "checksum"],
                            }
                        }
                    },
                },
                "403": {"description": "With TLS: the certificate is not a configured peer's"},
                "409": {"description": "No snapshot: the reason, as text"},
            },
        }
    },
    "/sync/v1/snapshot/{id}": {
        "get": {
            "summary": "The file of a snapshot offered to the same peer (Range requests resume it)",
            "security": [],
            "parameters": [
                {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
            ],
            "responses": {
                "200": {"description": "The SQLite file"},
                "206": {"description": "The rest of it, from the Range asked for"},
                "404": {"description": "No such snapshot (expired, or offered to another peer)"},
            },
        }
    },
    "/v1/health": {
        "get": {
            "summary": "Health: the node runs and syncs; otherwise the reasons",
            "responses": {
                "200": _json("The node is well: ok true, no reasons", _HEALTH),
                "503": _json("The node runs but is not well: ok false and the reasons", _HEALTH),
            },
        }
    },
    "/v1/quarantine": {
        "get": {
            "summary": "Rows from peers that could not be applied",
            "responses": {"200": _json("Quarantined rows", _QUARANTINED)},
        }
    },
    "/v1/throughput": {
        "get": {
            "summary": "Rows captured and applied per interval over the last minutes",
            "responses": {"200": _json("The throughput history", _THROUGHPUT)},
        }
    },
    "/v1/conflicts": {
        "get": {
            "summary": "Conflicts this node's merges resolved: two concurrent writes to one cell",
            "parameters": [
                _query("table", "only this table", {"type": "string"}),
                _query(
                    "since",
                    "only those resolved since: a duration back from now (15m, 2h, 7d)"
                    " or an ISO 8601 time (UTC without an offset)",
                    {"type": "string"},
                ),
                _query(
                    "limit",
                    "at most this many, the newest",
                    {"type": "integer", "minimum": 1, "maximum": 100_000, "default": 100},
                ),
            ],
            "responses": {
                "200": _json("Recorded conflicts, newest first", _CONFLICTS),
                "400": _json("A bad query parameter", {"type": "object"}),
            },
        }
    },
    "/v1/openapi.json": {
        "get": {
            "summary": "This document",
            "responses": {"200": _json("OpenAPI 3.1", {"type": "object"})},
        }
    },
    "/": {
        "get": {
            "summary": "The operator dashboard (it polls the routes above every second)",
            "responses": {
                "200": {
                    "description": "An HTML page",
                    "content": {"text/html": {"schema": {"type": "string"}}},
                }
            },
        }
    },
    "/dashboard/{name}": {
        "get": {
            "summary": "The dashboard's scripts (ES modules) and style sheet",
            "parameters": [
                {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
            ],
            "responses": {
                "200": {
                    "description": "A file shipped with the node",
                    "content": {
                        "text/javascript": {"schema": {"type": "string"}},
                        "text/css": {"schema": {"type": "string"}},
                    },
                },
                "404": {"description": "No such file"},
            },
        }
    },
    "/metrics": {
        "get": {
            "summary": "Prometheus metrics",
            "responses": {
                "200": {
                    "description": "Prometheus text format 0.0.4",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            },
        }
    },
}


def openapi_document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "syncmesh node API",
            "version": __version__,
            "description": "Status, health, conflicts, metrics and the dashboard of one syncmesh"
            " node. Off loopback every route but /v1/health, / and /dashboard/{name} needs"
            " `Authorization: Bearer TOKEN` (api.token).",
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": API_PATHS,
    }
