"""CLI command: `congener lammps MODEL --structure FILE --input IN -o OUT`."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import click

from congener.bounds import check_int
from congener.cli import cli
from congener.errors import DataError
from congener.files import folder_lock, output_folder, write_text


@cli.command("lammps", short_help="MD in LAMMPS with a congener potential (fix external).")
@click.argument("model")
@click.option("--structure", required=True, help="Structure file, optionally FILE@index.")
@click.option("--input", "input_file", required=True,
              help="LAMMPS commands run after the setup: velocity, fixes, dumps, run.")
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default="float64",
              show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--threads", type=int, default=None, help="Torch threads [default: all cores].")
@click.option("--no-virial", is_flag=True,
              help="Skip the stress: faster, but LAMMPS pressures miss the potential's part.")
@click.option("-o", "--output", required=True,
              help="Folder for log.lammps, thermo.csv and final.extxyz.")
def lammps_command(model: str, structure: str, input_file: str, dtype: str, device: str,
                   threads: int | None, no_virial: bool, output: str) -> None:
    """Run the LAMMPS commands of --input on the structure with MODEL (a checkpoint or a
    foundation name) as the potential, in LAMMPS metal units (eV, Å, ps, bar).

    The setup before them: units metal, the structure's periodic cell, its atoms and
    velocities, one atom type and group per element (by atomic number), the potential as
    `fix congener` and thermo `step temp pe ke etotal press`. Relative dump paths are
    relative to the current folder."""
    from congener.cli.analysis import _read_structure
    from congener.data.structures import write_structures
    from congener.models.registry import load_source
    from congener.runtime import resolve_device, resolve_dtype
    from congener.simulation.lammps_md import run_lammps

    if threads is not None:
        check_int("--threads", threads, 1)
    if not Path(input_file).is_file():
        raise DataError(f"no such LAMMPS input file: {input_file}")
    commands = Path(input_file).read_text()
    atoms = _read_structure(structure)
    potential = load_source(model, device=resolve_device(device), dtype=resolve_dtype(dtype))
    out = output_folder(output)
    with folder_lock(out, f"LAMMPS folder {out}"):
        result = run_lammps(potential, atoms, commands, virial=not no_virial, threads=threads,
                            log=out / "log.lammps")
        write_text(out / "thermo.csv", _thermo_csv(result.thermo))
        write_structures(out / "final.extxyz", [result.atoms])
    calls = len(result.steps)
    rate = f", {calls / result.wall_s:.1f} force calls/s" if result.wall_s > 0 else ""
    click.echo(f"{calls} force calls in {result.wall_s:.1f} s{rate}")
    if result.thermo and len(result.thermo[-1].get("Step", ())):
        last = {k: float(v[-1]) for k, v in result.thermo[-1].items()}
        click.echo("last thermo: " + ", ".join(f"{k} {v:.6g}" for k, v in last.items()))
    click.echo(f"wrote {out / 'log.lammps'}, {out / 'thermo.csv'}, {out / 'final.extxyz'}")


def _thermo_csv(runs: list[dict]) -> str:
    """Thermo rows of all runs, with a `run` column (1-based); columns in first-seen order."""
    columns = ["run", *dict.fromkeys(k for run in runs for k in run)]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for k, run in enumerate(runs, start=1):
        n = len(next(iter(run.values()), ()))
        for i in range(n):
            writer.writerow({"run": k, **{c: repr(float(v[i])) for c, v in run.items()}})
    return buffer.getvalue()
