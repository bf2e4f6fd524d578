"""Why a connection to a node failed, in the user's words.

A new user's `--peer http://...` that could not connect read "Cannot
connect to host 127.0.0.1:7402 ssl:default [Connect call failed ...]":
aiohttp's text, with its connection key (`ssl:default`, for a plain http
URL) and the raw call.  Every place that connects to a node (the sync
dial, verify, the snapshot of a join, `status --url`) words its failure
here instead: the address connected to and the cause, with what to
check, after the URL as given.  One function per kind of input: aiohttp's
exceptions (`connect_failure`) and the OSError under any client's, as
urllib's (`os_error_words`).
"""

from __future__ import annotations

import errno
import socket
import ssl
from urllib.parse import urlsplit

import aiohttp

DEFAULT_PORTS = {"http": 80, "ws": 80, "https": 443, "wss": 443}


def address_of(url: str) -> str:
    """HOST:PORT that `url` connects to (the scheme's port if it names none)."""
    try:
        parts = urlsplit(url)
        port = parts.port or DEFAULT_PORTS.get(parts.scheme, 0)
    except ValueError:
        return url
    host = parts.hostname or "?"
    host = f"[{host}]" if ":" in host else host
    return f"{host}:{port}" if port else host


def os_error_words(error: BaseException) -> str:
    """The cause of a failed connect as a user would say it, with what to check."""
    if isinstance(error, ssl.SSLCertVerificationError):
        detail = getattr(error, "verify_message", None) or getattr(error, "reason", None)
        return (
            f"its TLS certificate was refused ({detail or error}): check --tls-ca, and"
            " that the URL names the node's certificate"
        )
    if isinstance(error, ssl.SSLError):
        return (
            f"the TLS handshake failed ({getattr(error, 'reason', None) or error}): is it an"
            " https:// node, and are the certificates of one cluster CA?"
        )
    if isinstance(error, socket.gaierror):
        return "the host name is not known (check the URL, or the DNS)"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused: nothing listens there (is the node running, the port right?)"
    if isinstance(error, TimeoutError | socket.timeout):
        return "no answer in time (is the host up, or a firewall dropping the connection?)"
    if isinstance(error, ConnectionResetError):
        return "the connection was reset (a plain http:// URL for an https:// node?)"
    if isinstance(error, OSError) and error.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
        return "no route to the host (check the address, or the network)"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror[:1].lower() + error.strerror[1:]
    return str(error) or type(error).__name__


def connect_failure(url: str, error: BaseException) -> str:
    """What failed with the node at `url`, for an exception of aiohttp's client.

    "cannot connect to HOST:PORT: CAUSE" when no connection was made, else
    what the address did ("HOST:PORT closed the connection ...").  Never
    aiohttp's own text, which names its connection key ("ssl:default" for
    a plain http URL) and the raw call.  The callers' messages name the URL
    (`TransportError`'s "peer URL: ...").
    """
    address = address_of(url)
    where = f"cannot connect to {address}"
    if isinstance(error, aiohttp.ClientConnectorCertificateError):
        return f"{where}: {os_error_words(_certificate_error(error))}"
    if isinstance(error, aiohttp.ClientConnectorError):
        return f"{where}: {os_error_words(error.os_error)}"
    if isinstance(error, aiohttp.WSServerHandshakeError):
        return (
            f"{address} answered HTTP {error.status} to the WebSocket upgrade, not as a"
            " syncmesh node does (is the URL the node's --listen address?)"
        )
    if isinstance(error, aiohttp.ServerDisconnectedError):
        return (
            f"{address} closed the connection without an answer (an https:// node"
            " dialled as http://, or not a syncmesh node?)"
        )
    if isinstance(error, aiohttp.ServerTimeoutError | TimeoutError):
        return f"{address}: {os_error_words(TimeoutError())}"
    if isinstance(error, aiohttp.InvalidURL):
        return f"{url} is not a URL syncmesh can dial (http://HOST:PORT or https://HOST:PORT)"
    if isinstance(error, aiohttp.ClientOSError | OSError):
        return f"{address}: {os_error_words(error)}"
    return f"{address}: {str(error) or type(error).__name__}"


def _certificate_error(error: aiohttp.ClientConnectorCertificateError) -> BaseException:
    cause: BaseException = error.certificate_error
    return cause
