"""Certificates for tests, made by our own `syncmesh tls` commands in a temporary directory."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from syncmesh.transport import TlsFiles
from tests.helpers import run_cli


@dataclass(frozen=True)
class Pki:
    """A CA directory and the sites issued from it."""

    directory: Path

    def issue(self, site: str) -> TlsFiles:
        if not (self.directory / f"{site}.crt").exists():
            result = run_cli(
                "tls", "issue", site, "--dir", str(self.directory), "--host", "127.0.0.1"
            )
            assert result.returncode == 0, result.stderr
        return self.files(site)

    def files(self, site: str, *, crl: bool = False) -> TlsFiles:
        return TlsFiles(
            cert=str(self.directory / f"{site}.crt"),
            key=str(self.directory / f"{site}.key"),
            ca=str(self.directory / "ca.crt"),
            crl=str(self.directory / "crl.pem") if crl else "",
        )

    def client_context(self, site: str | None) -> ssl.SSLContext:
        """What a script (or a stranger) uses: our CA, and `site`'s certificate if given."""
        context = ssl.create_default_context(cafile=str(self.directory / "ca.crt"))
        context.check_hostname = False
        if site is not None:
            files = self.issue(site)
            context.load_cert_chain(files.cert, files.key)
        return context


def make_pki(directory: Path) -> Pki:
    result = run_cli("tls", "init", "--dir", str(directory))
    assert result.returncode == 0, result.stderr
    return Pki(directory)
