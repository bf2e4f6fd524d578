"""`python -m syncmesh` runs the command line."""

from syncmesh.cli.main import cli

if __name__ == "__main__":
    cli()
