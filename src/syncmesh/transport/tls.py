"""TLS for the sync port: mutual authentication with one certificate per site.

Every node holds a certificate signed by the cluster's CA (`syncmesh tls
init`, `syncmesh tls issue SITE`).  The certificate names its site in a
URI subject alternative name, `syncmesh://site/<name>`; that name, not the
host name, is the peer's identity (docs/adr/0009-site-certificates.md).
Both ends require a certificate of the cluster CA at the TLS handshake, so
a client without one, or with one from another CA, never gets to send a
byte of HTTP.  Whether the verified name is a configured peer is the
node's decision (`syncmesh.node`), taken before the WebSocket upgrade on
the listening side and before HELLO on the dialling side.
"""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass
from typing import Any

from syncmesh.errors import ConfigError

SITE_URI_PREFIX = "syncmesh://site/"
# Lower case, so that two spellings never name one site; short enough for a CN.
SITE_NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")


def valid_site_name(name: str) -> bool:
    return SITE_NAME_PATTERN.fullmatch(name) is not None


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsFiles:
    """PEM files: this site's certificate and key, the cluster CA, an optional CRL."""

    cert: str
    key: str
    ca: str
    crl: str = ""  # a CRL signed by the CA (`syncmesh tls revoke`); "" for none


def server_context(files: TlsFiles, *, require_client_cert: bool = True) -> ssl.SSLContext:
    """The listening side: our certificate; peers must present one of the cluster CA.

    `require_client_cert=False` is for the operator API on its own address,
    where browsers and scripts authenticate with a bearer token instead.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    _load(context, files)
    context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_NONE
    return context


def client_context(files: TlsFiles) -> ssl.SSLContext:
    """The dialling side: our certificate; the server must present one of the cluster CA.

    Host names are not checked: the identity is the site name in the
    certificate, which the dialler compares with the peer it meant to reach.
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    _load(context, files)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context_for_site(files: TlsFiles, site: str) -> ssl.SSLContext:
    """`client_context`, whose handshakes fail unless the server's certificate names `site`.

    For plain HTTP requests (verify and repair), where no caller sees the
    connection: the check runs inside the handshake, on every connection
    of the pool, so no answer can come from another site of the cluster.
    """
    context = client_context(files)

    class NamedSiteObject(ssl.SSLObject):
        def do_handshake(self) -> None:
            super().do_handshake()
            name = site_name_of(self.getpeercert())
            if name != site:
                what = "names no site" if name is None else f"is for site {name!r}"
                raise ssl.SSLCertVerificationError(
                    f"the server's certificate {what}, not for site {site!r}"
                )

    context.sslobject_class = NamedSiteObject
    return context


def _load(context: ssl.SSLContext, files: TlsFiles) -> None:
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_verify_locations(cafile=files.ca)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError("tls.ca", f"cannot load the CA certificate: {exc}") from exc
    try:
        context.load_cert_chain(files.cert, files.key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError("tls.cert", f"cannot load the certificate and key: {exc}") from exc
    if files.crl:
        try:
            context.load_verify_locations(cafile=files.crl)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError("tls.crl", f"cannot load the revocation list: {exc}") from exc
        context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF


def site_name_of(peercert: Any) -> str | None:
    """The site named by a verified peer certificate (`getpeercert()`), or None.

    Exactly one `syncmesh://site/` URI must be present, and the name must be
    valid; anything else names no site.
    """
    if not isinstance(peercert, dict):
        return None
    names = [
        value[len(SITE_URI_PREFIX) :]
        for kind, value in peercert.get("subjectAltName", ())
        if kind == "URI" and isinstance(value, str) and value.startswith(SITE_URI_PREFIX)
    ]
    if len(names) != 1 or not valid_site_name(names[0]):
        return None
    return names[0]
