"""Command-line interface: thin wrappers that parse, validate, call one library function, print.

Each command group lives in its own module and registers itself on `cli`. Any
`CongenerError` (bad input, bad config, unstable simulation) is printed as one line
`error: ...` with exit code 2 and no traceback; finished work is never discarded.
"""

from __future__ import annotations

import sys

import click

from congener import __version__
from congener.errors import CongenerError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="congener")
def cli() -> None:
    """congener: transfer-learned interatomic potentials for data-scarce elements."""


def parse_list(text: str | None, convert: type, option: str) -> tuple | None:
    """Parse a comma-separated option value ("1,10,50") into a tuple, or None if absent."""
    if text is None:
        return None
    try:
        return tuple(convert(x) for x in text.split(",") if x.strip())
    except ValueError as exc:
        kind = "integers" if convert is int else "numbers"
        raise CongenerError(f"{option} must be comma-separated {kind} (got {text!r})") from exc


def _register() -> None:
    # Imported here so that each module can import `cli` from this package.
    from congener.cli import analysis as _analysis  # noqa: F401
    from congener.cli import data as _data  # noqa: F401
    from congener.cli import model as _model  # noqa: F401
    from congener.cli import study as _study  # noqa: F401


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `congener` console script."""
    _register()
    try:
        cli.main(args=argv, prog_name="congener", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except CongenerError as exc:
        click.echo(f"error: {exc}", err=True)
        return 2
    except KeyboardInterrupt:
        click.echo("interrupted: finished work is kept; run the same command again to resume",
                   err=True)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
