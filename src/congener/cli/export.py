"""CLI command: `congener export MODEL -o model.pt` — a metatomic TorchScript model file."""

from __future__ import annotations

import click

from congener.cli import cli
from congener.errors import ConfigError


@cli.command("export")
@click.argument("model")
@click.option("-o", "--output", required=True, help="Model file to write (e.g. model.pt).")
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default="float32",
              show_default=True, help="Precision of the exported model (engines run in it).")
def export_command(model: str, output: str, dtype: str) -> None:
    """Export MODEL (a congener DimeNet++ checkpoint) for ASE, torch-sim and LAMMPS.

    The file is a metatomic model: load it with metatomic_ase.MetatomicCalculator(path),
    metatomic-torchsim, or LAMMPS `pair_style metatomic path` (a LAMMPS built with metatomic).
    """
    from congener.models.registry import load_source
    from congener.runtime import resolve_dtype

    try:
        from congener.export import export_potential
    except ModuleNotFoundError as exc:
        raise ConfigError(f"export needs the `{exc.name}` package: pip install "
                          "metatomic-torch metatomic-ase (or congener[engines])") from exc
    potential = load_source(model, dtype=resolve_dtype(dtype))
    path = export_potential(potential, output)
    click.echo(f"wrote {path}: DimeNet++ for {', '.join(potential.elements)}, {dtype}, cutoff "
               f"{potential.cutoff:g} Å")
