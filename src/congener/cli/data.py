"""CLI commands: `congener data sw | mlearn | info | split`."""

from __future__ import annotations

from pathlib import Path

import click

from congener.cli import cli, label_key_options, parse_list
from congener.data.mlearn import MlearnSplit
from congener.data.split import Stratify
from congener.data.sw_protocol import Preset
from congener.errors import ConfigError
from congener.runtime import available_cores


@cli.group()
def data() -> None:
    """Make, inspect and split labelled structure files (extended XYZ)."""


def _temperatures(text: str | None) -> tuple[float, ...] | None:
    return parse_list(text, float, "--temperatures")


@data.command("sw", short_help="Stillinger-Weber MD data through LAMMPS.")
@click.option("--element", required=True, help="Chemical symbol, e.g. Si or Ge.")
@click.option("--preset", type=click.Choice([p.value for p in Preset]), default="quick",
              show_default=True, help="quick: 8 temperatures, ~10 s on 2 cores; paper: 34 "
              "temperatures, 4 ns NPT + 1 ns NVT each (hours).")
@click.option("-o", "--output", required=True, help="Merged extended-XYZ file to write.")
@click.option("--params", "params_path", default=None,
              help="LAMMPS .sw file (default: the shipped Si.sw / Ge.sw).")
@click.option("--temperatures", default=None, help="Comma-separated list in K, e.g. 300,600.")
@click.option("--workers", type=int, default=None, help="Parallel processes [default: CPUs].")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--npt-steps", type=int, default=None, help="NPT equilibration steps.")
@click.option("--nvt-steps", type=int, default=None, help="NVT production steps.")
@click.option("--sample-every", type=int, default=None, help="Steps between samples.")
@click.option("--timestep-fs", type=float, default=None, help="Time step in fs.")
@click.option("--workdir", default=None,
              help="Folder for per-temperature files [default: OUTPUT stem + '.work'].")
def sw_command(element: str, preset: str, output: str, params_path: str | None,
               temperatures: str | None, workers: int | None, seed: int,
               npt_steps: int | None, nvt_steps: int | None, sample_every: int | None,
               timestep_fs: float | None, workdir: str | None) -> None:
    """Stillinger-Weber MD data through LAMMPS: NPT at zero pressure, then sampled NVT, per
    temperature. Finished temperatures are kept in the work folder; rerun to resume."""
    from tqdm import tqdm

    from congener.bounds import check_int, check_seed
    from congener.data.generate import generate_sw_data
    from congener.data.stillinger_weber import load_sw_params
    from congener.data.structures import write_structures
    from congener.data.sw_protocol import SWProtocol

    if workers is not None:
        check_int("--workers", workers, 1)
    check_seed("--seed", seed)
    load_sw_params(element, params_path)  # fail early: unknown element, missing entry
    protocol = SWProtocol.preset(preset).with_overrides(
        temperatures_K=_temperatures(temperatures), npt_steps=npt_steps, nvt_steps=nvt_steps,
        sample_every=sample_every, timestep_fs=timestep_fs)
    workers = available_cores() if workers is None else workers
    out = Path(output)
    work = Path(workdir) if workdir else out.with_name(out.stem + ".work")
    with tqdm(total=len(protocol.temperatures_K), unit="T", desc=f"SW-MD {element}",
              disable=None) as bar:

        def progress(temperature_K: float, n_samples: int) -> None:
            bar.set_postfix_str(f"{temperature_K:g} K done")
            bar.update(1)

        structures = generate_sw_data(element, protocol, workdir=work, params_path=params_path,
                                      seed=seed, workers=workers, progress=progress)
    write_structures(out, structures)
    n_temps = len(protocol.temperatures_K)
    click.echo(f"wrote {len(structures)} structures ({n_temps} temperature"
               f"{'s' if n_temps != 1 else ''}) to {out}")


@data.command("mlearn", short_help="Convert mlearn DFT JSON to extended XYZ.")
@click.argument("path")
@click.option("-o", "--output", required=True, help="Extended-XYZ file to write.")
@click.option("--split", "split", type=click.Choice([*(s.value for s in MlearnSplit), "both"]),
              default="both",
              show_default=True, help="For a folder: which file(s) to convert.")
@click.option("--no-surfaces", is_flag=True, help="Drop the Surface (slab) group.")
def mlearn_command(path: str, output: str, split: str, no_surfaces: bool) -> None:
    """Convert mlearn DFT data (Zuo et al. 2020) to extended XYZ.

    PATH is a JSON file (written to OUTPUT) or an element folder with training.json and
    test.json: `--split both` writes OUTPUT's stem + _train and + _test (-o ge.extxyz gives
    ge_train.extxyz and ge_test.extxyz); `--split train` or `test` writes OUTPUT.
    """
    from congener.data.mlearn import read_mlearn
    from congener.data.structures import write_structures

    source, out = Path(path), Path(output)
    if not source.is_dir():
        file_split = None if split == "both" else split  # a split given for a file: error
        targets = {out: read_mlearn(source, split=file_split, surfaces=not no_surfaces)}
    elif split == "both":
        targets = {out.with_name(f"{out.stem}_{s.value}{out.suffix or '.extxyz'}"):
                   read_mlearn(source, split=s, surfaces=not no_surfaces)
                   for s in MlearnSplit}
    else:
        targets = {out: read_mlearn(source, split=split, surfaces=not no_surfaces)}
    for target, structures in targets.items():
        write_structures(target, structures)
        click.echo(f"wrote {len(structures)} structures to {target}")


@data.command("info", short_help="Summarize structure files.")
@click.argument("files", nargs=-1, required=True)
@click.option("--min-distance", type=float, default=0.5, show_default=True,
              help="Flag structures with two atoms closer than this (Å, periodic images "
                   "included); the default lies below any chemical bond (H2: 0.74 Å).")
@label_key_options
def info_command(files: tuple[str, ...], min_distance: float, keys=None) -> None:
    """Counts by group and temperature, sizes, elements, energy and force ranges, the shortest
    interatomic distance, and the structures with overlapping atoms."""
    from congener.data.structures import read_structures
    from congener.data.summary import summarize

    if not min_distance >= 0:
        raise ConfigError(f"--min-distance must be a distance >= 0 in Å (got {min_distance})")
    for name in files:
        summary = summarize(read_structures(name, keys=keys), min_distance=min_distance)
        click.echo(f"{name}:")
        for line in summary.lines():
            click.echo(f"  {line}")


def _size(text: str | None, name: str) -> int | float | None:
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError as exc:
        raise ConfigError(f"--{name} must be a count or a fraction (got {text!r})") from exc
    if not 0.0 <= value < 1.0:  # negative, >= 1 (a count written as 5.0), NaN, inf
        raise ConfigError(f"--{name} as a fraction must lie in (0, 1) (got {text}); write a "
                          "count as an integer")
    return value


@data.command("split", short_help="Split a structure file into train/val/test.")
@click.argument("file")
@click.option("--train", default=None, help="Count or fraction [default: all the rest].")
@click.option("--val", default="0", show_default=True, help="Count or fraction.")
@click.option("--test", default="0", show_default=True, help="Count or fraction.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--stratify", type=click.Choice([s.value for s in Stratify]), default=None,
              help="Apply the sizes within each temperature or group.")
@click.option("-o", "--output", "prefix", required=True,
              help="Prefix: writes PREFIX_train.extxyz, PREFIX_val.extxyz, PREFIX_test.extxyz.")
@label_key_options
def split_command(file: str, train: str | None, val: str, test: str, seed: int,
                  stratify: str | None, prefix: str, keys=None) -> None:
    """Split a structure file reproducibly (same seed, same split). A part asked for (the
    training part always, val or test when not 0) must get at least one structure, in every
    stratum with --stratify; val and test of 0 are not written."""
    from congener.data.split import split_structures
    from congener.data.structures import read_structures, write_structures

    sizes = {"train": _size(train, "train"), "val": _size(val, "val"),
             "test": _size(test, "test")}
    parts = split_structures(read_structures(file, keys=keys), **sizes, seed=seed,
                             stratify=stratify, nonempty=True, names=("--train", "--val", "--test"))
    base = prefix.removesuffix(".extxyz")
    for name, structures in parts.items():
        if structures:
            target = write_structures(f"{base}_{name}.extxyz", structures)
            click.echo(f"wrote {len(structures)} structures to {target}")
        else:
            click.echo(f"{name}: empty, not written")
