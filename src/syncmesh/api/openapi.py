"""The OpenAPI 3.1 description of a node's HTTP API, served at /v1/openapi.json.

Kept by hand next to the routes; tests/test_api.py checks that every route
the application serves is described here and that nothing else is.
"""

from __future__ import annotations

from typing import Any

from syncmesh import __version__


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


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
            "type": "integer",
            "description": "how far this node trails the peer's feed; 0 when caught up",
        },
        "out_lag_changes": {
            "type": ["integer", "null"],
            "description": "rows of this node's feed the peer has not acknowledged (capped"
            " at 10000); null before the peer's first PULL",
        },
        "out_lag_ms": {
            "type": ["integer", "null"],
            "description": "how far the peer trails this node's feed; null before its PULL",
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
            },
        },
        "peers": {"type": "array", "items": _PEER},
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

API_PATHS: dict[str, dict[str, Any]] = {
    "/v1/status": {
        "get": {
            "summary": "This node, its tables and its peers",
            "responses": {"200": _json("The node's statistics", _STATUS)},
        }
    },
    "/v1/health": {
        "get": {
            "summary": "Liveness",
            "responses": {"200": _json("The node runs", {"type": "object"})},
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
            "description": "Status, health, metrics and the dashboard of one syncmesh node."
            " Off loopback every route but /v1/health, / and /dashboard/{name} needs"
            " `Authorization: Bearer TOKEN` (api.token).",
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": API_PATHS,
    }
