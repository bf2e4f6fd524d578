"""The cluster's certificate authority on disk: `syncmesh tls init | issue | revoke`.

One directory holds the CA and what it issued:

    ca.crt, ca.key        the cluster CA (the key never leaves this directory)
    crl.pem               the revocation list, signed by the CA (empty at first)
    SITE.crt, SITE.key    the newest certificate of each site, and its key
    issued/SERIAL.crt     every certificate ever issued (what `revoke` looks up)

A site certificate names its site in a URI subject alternative name,
`syncmesh://site/SITE` (and in the CN), with any host names as DNS or IP
names; it is valid for both TLS client and server authentication, because
every node dials and is dialled.  Keys are EC P-256.  Keys are written
0600, the directories this module creates 0700, certificates 0644
(docs/security.md).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from syncmesh.clock import SystemClock
from syncmesh.errors import ConfigError
from syncmesh.transport.tls import SITE_URI_PREFIX, valid_site_name

CA_DAYS_DEFAULT = 3650
SITE_DAYS_DEFAULT = 825
PRIVATE_FILE_MODE = 0o600
PUBLIC_FILE_MODE = 0o644
PRIVATE_DIR_MODE = 0o700


@dataclass(frozen=True, slots=True)
class Issued:
    cert: Path
    key: Path
    serial: int
    not_after: datetime.datetime


def init_ca(directory: Path, *, days: int = CA_DAYS_DEFAULT) -> Path:
    """Create the cluster CA (and an empty revocation list) in `directory`."""
    make_private_dir(directory)
    if (directory / "ca.key").exists():
        raise ConfigError(
            str(directory), "a CA exists here already (ca.key); not replacing it", what="directory"
        )
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "syncmesh cluster"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"syncmesh cluster CA {uuid.uuid4().hex[:8]}"),
        ]
    )
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    write_file(directory / "ca.key", _key_pem(key), PRIVATE_FILE_MODE)
    write_file(
        directory / "ca.crt", cert.public_bytes(serialization.Encoding.PEM), PUBLIC_FILE_MODE
    )
    _write_crl(directory, cert, key, revoked=[])
    make_private_dir(directory / "issued")
    return directory / "ca.crt"


def issue(
    directory: Path, site: str, *, hosts: Sequence[str] = (), days: int = SITE_DAYS_DEFAULT
) -> Issued:
    """A new certificate and key for `site`, signed by the CA in `directory`.

    Issuing again for the same site (rotation) replaces SITE.crt and
    SITE.key; the old certificate stays valid until it expires or is revoked.
    """
    if not valid_site_name(site):
        raise ConfigError(
            "SITE", f"{site!r} is not a site name (a-z, 0-9, '.', '_', '-'; 1-63 characters)"
        )
    ca_cert, ca_key = _load_ca(directory)
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(SITE_URI_PREFIX + site)]
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    now = _now()
    not_after = min(now + datetime.timedelta(days=days), ca_cert.not_valid_after_utc)
    serial = x509.random_serial_number()
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "syncmesh cluster"),
                    x509.NameAttribute(NameOID.COMMON_NAME, site),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    make_private_dir(directory / "issued")
    write_file(directory / "issued" / f"{serial:x}.crt", pem, PUBLIC_FILE_MODE)
    write_file(directory / f"{site}.key", _key_pem(key), PRIVATE_FILE_MODE)
    write_file(directory / f"{site}.crt", pem, PUBLIC_FILE_MODE)
    return Issued(directory / f"{site}.crt", directory / f"{site}.key", serial, not_after)


def revoke(directory: Path, site: str, *, serial: int | None = None) -> list[int]:
    """Add `site`'s certificates (or only `serial`) to crl.pem; the serials now revoked."""
    ca_cert, ca_key = _load_ca(directory)
    revoked = {entry.serial_number for entry in _load_crl(directory)}
    matched = []
    for path in sorted((directory / "issued").glob("*.crt")):
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        if site_of(cert) == site and (serial is None or cert.serial_number == serial):
            matched.append(cert.serial_number)
    if not matched:
        which = f"certificate {serial:x} of site" if serial is not None else "certificate of site"
        raise ConfigError("SITE", f"no {which} {site!r} was issued from {directory}")
    _write_crl(directory, ca_cert, ca_key, revoked=sorted(revoked | set(matched)))
    return matched


def site_of(cert: x509.Certificate) -> str | None:
    """The site a certificate names in its `syncmesh://site/` URI, if any."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    uris = [
        uri[len(SITE_URI_PREFIX) :]
        for uri in san.get_values_for_type(x509.UniformResourceIdentifier)
        if uri.startswith(SITE_URI_PREFIX)
    ]
    return uris[0] if len(uris) == 1 else None


def cert_site(path: Path) -> str | None:
    """The site named by the certificate in the PEM file `path` (None if it names none)."""
    try:
        return site_of(x509.load_pem_x509_certificate(path.read_bytes()))
    except (OSError, ValueError) as exc:
        raise ConfigError("tls.cert", f"cannot read {path}: {exc}") from exc


def make_private_dir(directory: Path) -> None:
    """Create `directory` (and missing parents) 0700; an existing one is left as it is."""
    if not directory.is_dir():
        directory.mkdir(mode=PRIVATE_DIR_MODE, parents=True)
        os.chmod(directory, PRIVATE_DIR_MODE)  # mkdir's mode is cut by the umask only


def write_file(path: Path, data: bytes, mode: int) -> None:
    """Write `path` atomically, created with `mode` from the first byte (never wider)."""
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _load_ca(
    directory: Path,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate((directory / "ca.crt").read_bytes())
        key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), None)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            str(directory), f"no usable CA here ({exc}); create one with `syncmesh tls init`"
        ) from exc
    assert isinstance(key, ec.EllipticCurvePrivateKey), "syncmesh CAs use EC keys"
    return cert, key


def _load_crl(directory: Path) -> list[x509.RevokedCertificate]:
    path = directory / "crl.pem"
    if not path.exists():
        return []
    return list(x509.load_pem_x509_crl(path.read_bytes()))


def _write_crl(
    directory: Path,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    *,
    revoked: Sequence[int],
) -> None:
    now = _now()
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - datetime.timedelta(minutes=5))
        # Valid as long as the CA: an expired CRL would fail every handshake.
        .next_update(ca_cert.not_valid_after_utc)
    )
    for serial in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build()
        )
    crl = builder.sign(ca_key, hashes.SHA256())
    write_file(directory / "crl.pem", crl.public_bytes(serialization.Encoding.PEM), 0o644)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _now() -> datetime.datetime:
    return datetime.datetime.fromtimestamp(SystemClock().now_ms() / 1000, datetime.UTC)
