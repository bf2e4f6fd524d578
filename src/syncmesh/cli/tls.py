"""`syncmesh tls`: the cluster CA and one certificate per site (docs/security.md)."""

from __future__ import annotations

from pathlib import Path

import click

from syncmesh.cli import pki
from syncmesh.errors import SyncError

DIRECTORY = click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("syncmesh-tls"),
    show_default=True,
    help="The CA's directory (created 0700 if missing).",
)


@click.group()
def tls() -> None:
    """Create the cluster CA, issue site certificates, revoke them.

    Every node gets a certificate for its site name, signed by one CA per
    cluster; nodes accept only peers whose certificate names a configured
    peer (docs/security.md).
    """


@tls.command("init")
@DIRECTORY
@click.option(
    "--days",
    type=click.IntRange(1, 36_500),
    default=pki.CA_DAYS_DEFAULT,
    show_default=True,
    help="How long the CA is valid.",
)
def tls_init(directory: Path, days: int) -> None:
    """Create the cluster CA (ca.crt, ca.key) and an empty revocation list (crl.pem).

    Example: syncmesh tls init --dir /etc/syncmesh/ca
    """
    try:
        ca = pki.init_ca(directory, days=days)
    except SyncError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{ca}: cluster CA created; keep {directory / 'ca.key'} offline")


@tls.command("issue")
@click.argument("site")
@DIRECTORY
@click.option(
    "--host",
    "hosts",
    multiple=True,
    metavar="NAME",
    help="A DNS name or IP address of the site, added to the certificate; repeatable.",
)
@click.option(
    "--days",
    type=click.IntRange(1, 36_500),
    default=pki.SITE_DAYS_DEFAULT,
    show_default=True,
    help="How long the certificate is valid (at most as long as the CA).",
)
def tls_issue(site: str, directory: Path, hosts: tuple[str, ...], days: int) -> None:
    """Issue a certificate and key for SITE (SITE.crt, SITE.key), signed by the CA.

    Issuing again for the same SITE rotates its certificate.

    Example: syncmesh tls issue shop1 --host shop1.example.com
    """
    try:
        issued = pki.issue(directory, site, hosts=hosts, days=days)
    except SyncError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(
        f"{issued.cert}: site {site}, serial {issued.serial:x},"
        f" valid until {issued.not_after:%Y-%m-%d}; key in {issued.key}"
    )


@tls.command("revoke")
@click.argument("site")
@DIRECTORY
@click.option(
    "--serial",
    help="Revoke only this certificate of SITE (hex, as `tls issue` printed it).",
)
def tls_revoke(site: str, directory: Path, serial: str | None) -> None:
    """Revoke SITE's certificates in crl.pem; copy it to every node and restart them.

    Without --serial every certificate ever issued for SITE is revoked.
    """
    try:
        number = None if serial is None else int(serial, 16)
    except ValueError as exc:
        raise click.BadParameter(f"{serial!r} is not a hex serial", param_hint="--serial") from exc
    try:
        serials = pki.revoke(directory, site, serial=number)
    except SyncError as exc:
        raise click.ClickException(str(exc)) from exc
    listed = ", ".join(f"{number:x}" for number in serials)
    click.echo(f"{directory / 'crl.pem'}: revoked {site} ({listed})")
