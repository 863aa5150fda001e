"""Command-line interface: thin wrappers that parse, validate, call one library function, print.

Each command group lives in its own module and registers itself on `cli`. Any
`CongenerError` (bad input, bad config, unstable simulation) is printed as one line
`error: ...` with exit code 2 and no traceback; finished work is never discarded.
"""

from __future__ import annotations

import errno
import sys
import warnings

import click

from congener import __version__
from congener.errors import CongenerError, CongenerWarning


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


def label_key_options(fn):
    """--energy-key, --forces-key, --stress-key, --virial-key: where a data file keeps its
    labels (MACE/NequIP files: REF_energy, REF_forces, REF_stress); passed on as `keys`."""
    options = [
        click.option("--energy-key", default="energy", show_default=True,
                     help="Per-structure energy label of the data files (eV)."),
        click.option("--forces-key", default="forces", show_default=True,
                     help="Per-atom forces label (eV/Å)."),
        click.option("--stress-key", default="stress", show_default=True,
                     help="Per-structure stress label (eV/Å³, ASE sign)."),
        click.option("--virial-key", default=None,
                     help="Per-structure virial label (eV) instead of a stress: -virial/V."),
    ]
    def wrapper(*args, energy_key, forces_key, stress_key, virial_key, **kwargs):
        from congener.data.formats import LabelKeys

        keys = LabelKeys(energy_key, forces_key, stress_key, virial_key)
        return fn(*args, keys=None if keys.default else keys, **kwargs)
    import functools

    wrapper = functools.update_wrapper(wrapper, fn)
    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


def _register() -> None:
    # Imported here so that each module can import `cli` from this package.
    from congener.cli import analysis as _analysis  # noqa: F401
    from congener.cli import data as _data  # noqa: F401
    from congener.cli import distill as _distill  # noqa: F401
    from congener.cli import export as _export  # noqa: F401
    from congener.cli import lammps_md as _lammps_md  # noqa: F401
    from congener.cli import model as _model  # noqa: F401
    from congener.cli import study as _study  # noqa: F401


def os_error_line(exc: OSError) -> str:
    """One line for an operating-system error: what failed and on which file."""
    what = exc.strerror or str(exc) or type(exc).__name__
    names = [n for n in (exc.filename, exc.filename2) if n]
    hint = {errno.ENOSPC: " (the disk is full: free space and run again; finished work is "
                          "kept)",
            errno.EACCES: " (no permission)", errno.EROFS: " (read-only file system)",
            errno.EPERM: " (not permitted: an immutable file or folder?)"}.get(exc.errno, "")
    return f"{what}: {' -> '.join(map(str, names))}{hint}" if names else f"{what}{hint}"


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings of congener as one `warning:` line; others as Python shows them."""
    if issubclass(category, CongenerWarning):
        click.echo(f"warning: {message}", err=True)
    else:
        _python_showwarning(message, category, filename, lineno, file, line)


_python_showwarning = warnings.showwarning


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `congener` console script."""
    _register()
    warnings.showwarning = _show_warning
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
    except OSError as exc:  # a folder that cannot be written, a full disk, a file for a folder
        click.echo(f"error: {os_error_line(exc)}", err=True)
        return 2
    except MemoryError:
        click.echo("error: out of memory: use a smaller cutoff, batch size or system, or a "
                   "machine with more memory; finished work is kept", err=True)
        return 2
    except KeyboardInterrupt:
        click.echo("interrupted: finished work is kept; run the same command again to resume",
                   err=True)
        return 130
    finally:
        warnings.showwarning = _python_showwarning
    return 0


if __name__ == "__main__":
    sys.exit(main())
