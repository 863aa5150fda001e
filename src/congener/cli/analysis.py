"""CLI commands: `congener analyze phonons | md`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import numpy as np

from congener.bounds import check_float, check_int, check_seed
from congener.cli import cli
from congener.errors import ConfigError, DataError
from congener.files import folder_lock, output_folder

MAX_MESH = 100  # 10^6 q-points; the paper's DOS uses 20
MAX_R_CUT_A = 10.0


@cli.group()
def analyze() -> None:
    """Phonon DOS, MD stability and liquid structure of trained potentials."""


def _calculator(spec: str, device: str) -> Any:
    """`sw:ELEMENT` -> Stillinger-Weber through LAMMPS; anything else -> a checkpoint."""
    if spec.startswith("sw:"):
        from congener.data.lammps_sw import LammpsSWCalculator

        return LammpsSWCalculator(spec[3:])
    from congener.calculator import CongenerCalculator

    return CongenerCalculator.from_checkpoint(spec, device=device, dtype="float64")


def _labels(specs: list[str]) -> list[str]:
    names = [s if s.startswith("sw:") else Path(s).stem for s in specs]
    return [n if names.count(n) == 1 else s for n, s in zip(names, specs, strict=True)]


def _write_dos_csv(path: Path, curves: dict[str, Any]) -> None:
    pitch = min(float(np.diff(d.frequencies_THz).min()) for d in curves.values())
    lo = min(float(d.frequencies_THz[0]) for d in curves.values())
    hi = max(float(d.frequencies_THz[-1]) for d in curves.values())
    grid = np.linspace(lo, hi, int(np.ceil((hi - lo) / pitch)) + 1)
    columns = [grid] + [np.interp(grid, d.frequencies_THz, d.dos, left=0.0, right=0.0)
                        for d in curves.values()]
    header = ",".join(["frequency_THz", *curves])
    np.savetxt(path, np.column_stack(columns), delimiter=",", header=header, comments="",
               fmt="%.6g")


@analyze.command("phonons", short_help="Phonon DOS of models against a reference.")
@click.argument("models", nargs=-1, required=True)
@click.option("--reference", default=None,
              help="sw:ELEMENT (Stillinger-Weber through LAMMPS) or a checkpoint.")
@click.option("--element", required=True, help="Chemical symbol; its cubic diamond cell.")
@click.option("--lattice", type=float, default=None,
              help="Starting lattice constant in Å, 2.5 to 10 [default: ASE's].")
@click.option("--mesh", type=int, default=20, show_default=True,
              help=f"q-mesh per axis (1 to {MAX_MESH}).")
@click.option("--device", default="cpu", show_default=True)
@click.option("-o", "--output", required=True, help="Folder for dos.csv, dos.png, phonons.json.")
def phonons_command(models: tuple[str, ...], reference: str | None, element: str,
                    lattice: float | None, mesh: int, device: str, output: str) -> None:
    """Relax the diamond cell, compute the phonon DOS (2x2x2 supercell, 0.01 Å displacements)
    of each MODEL (a checkpoint or sw:ELEMENT) and its distance to the reference DOS."""
    from congener.analysis.phonons import (
        MAX_LATTICE_A,
        MIN_LATTICE_A,
        diamond_cell,
        dos_distance,
        phonon_dos,
    )
    from congener.analysis.plots import plot_dos

    check_int("--mesh", mesh, 1, MAX_MESH)
    if lattice is not None:
        check_float("--lattice (Å)", lattice, MIN_LATTICE_A, MAX_LATTICE_A)
    cell = diamond_cell(element, lattice)  # an unknown element fails before any model loads

    def dos_of(spec: str) -> Any:
        return phonon_dos(_calculator(spec, device), cell, mesh=(mesh, mesh, mesh))

    curves = {label: dos_of(spec) for spec, label in zip(models, _labels(list(models)),
                                                          strict=True)}
    ref = (f"reference {_labels([reference])[0]}", dos_of(reference)) if reference else None
    everything = {**curves, **dict([ref] if ref else [])}
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    _write_dos_csv(out / "dos.csv", everything)
    plot_dos(curves, out / "dos.png", reference=ref)
    summary = {}
    for label, dos in everything.items():
        entry = {"lattice_A": dos.lattice_A, "gamma_THz": dos.gamma_THz.round(4).tolist()}
        if ref is not None and label != ref[0]:
            entry["dos_distance"] = dos_distance(dos, ref[1])
        summary[label] = entry
        distance = f", DOS distance {entry['dos_distance']:.4f}" if "dos_distance" in entry else ""
        click.echo(f"{label}: a = {dos.lattice_A:.4f} Å, Γ optical "
                   f"{dos.gamma_THz[-1]:.3f} THz{distance}")
    (out / "phonons.json").write_text(json.dumps(summary, indent=2) + "\n")
    click.echo(f"wrote {out / 'dos.csv'}, {out / 'dos.png'}, {out / 'phonons.json'}")


def _read_structure(text: str) -> Any:
    import ase.io

    path, _, index = text.rpartition("@")
    if not path or not index.lstrip("-").isdigit():
        path, index = text, "0"
    if not Path(path).is_file():
        raise DataError(f"no such structure file: {path}")
    try:
        return ase.io.read(path, index=int(index))
    except (IndexError, StopIteration) as exc:
        raise DataError(f"{path} has no structure at index {index}") from exc
    except Exception as exc:  # ASE raises many types for malformed files
        raise DataError(f"cannot read {path}: {type(exc).__name__}: {exc}") from exc


@analyze.command("md", short_help="Batched NVT MD: stability, RDF and ADF.")
@click.argument("model")
@click.option("--structure", required=True, help="Structure file, optionally FILE@index.")
@click.option("--temperature", type=float, required=True,
              help="Temperature in K, in (0, 20000].")
@click.option("--timestep", type=float, default=0.5, show_default=True,
              help="fs, in (0, 10].")
@click.option("--steps", type=int, required=True, help="MD steps, >= 1.")
@click.option("--friction", type=float, default=1.0, show_default=True,
              help="1/ps, in [0, 1000]; 0 runs NVE.")
@click.option("--trajectories", type=int, default=1, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--sample-every", type=int, default=10, show_default=True)
@click.option("--discard", type=int, default=None,
              help="Steps left out of the RDF/ADF, 0 to STEPS - 1 [default: the first fifth].")
@click.option("--min-distance", type=float, default=None,
              help="Stability check: closest allowed pair distance in Å, > 0 [default: 2.0].")
@click.option("--no-stability-check", is_flag=True,
              help="Turn the close-contact and overheating checks off (only NaN/Inf stops a "
                   "trajectory); stability.json records it.")
@click.option("--r-cut", type=float, default=3.0, show_default=True,
              help="First-shell cutoff of the ADF in Å.")
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default="float32",
              show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--threads", type=int, default=None, help="Torch threads [default: all cores].")
@click.option("--checkpoint-every", type=click.IntRange(min=1), default=1000,
              show_default=True, help="Steps between MD checkpoints (OUTPUT/md_state.pt); a "
              "rerun with the same settings continues from the last one (--steps may grow).")
@click.option("-o", "--output", required=True, help="Folder for rdf.csv, adf.csv, rdf.png, "
              "structure.json, stability.json and the MD checkpoint.")
def md_command(model: str, structure: str, temperature: float, timestep: float, steps: int,
               friction: float, trajectories: int, seed: int, sample_every: int,
               discard: int | None, min_distance: float | None, no_stability_check: bool,
               r_cut: float, dtype: str, device: str, threads: int | None,
               checkpoint_every: int, output: str) -> None:
    """Run TRAJECTORIES Langevin trajectories of MODEL (a checkpoint) from one structure as
    one batch; unstable ones are recorded and dropped. RDF and ADF over stable ones.

    Stable means: no pair closer than --min-distance and a kinetic temperature at most 5 x
    the target (and no NaN/Inf), unless --no-stability-check; the criterion is printed and
    written to stability.json."""
    from tqdm import tqdm

    from congener.analysis.stability import stability_summary
    from congener.models.registry import load_source
    from congener.runtime import resolve_device
    from congener.simulation.md import check_settings, describe_criterion, run_md

    if no_stability_check and min_distance is not None:
        raise ConfigError("--min-distance sets the stability check that --no-stability-check "
                          "turns off: give one of them")
    min_distance = 2.0 if min_distance is None else min_distance
    check_settings(temperature_K=temperature, timestep_fs=timestep, steps=steps,
                   friction_per_ps=friction, sample_every=sample_every,
                   min_distance_A=min_distance, names=_MD_OPTIONS)
    check_int("--trajectories", trajectories, 1)
    check_seed("--seed", seed)
    if threads is not None:
        check_int("--threads", threads, 1)
    check_float("--r-cut (Å)", r_cut, 0.0, MAX_R_CUT_A, low_open=True)
    discard = steps // 5 if discard is None else check_int("--discard", discard, 0, steps - 1)
    if (steps // sample_every) * sample_every < discard:
        raise ConfigError(f"no frame is sampled after --discard {discard}: the last sample is "
                          f"at step {(steps // sample_every) * sample_every} (--sample-every "
                          f"{sample_every}, --steps {steps})")
    atoms = _read_structure(structure)
    potential = load_source(model, device=resolve_device(device))
    out = output_folder(output)
    with folder_lock(out, f"MD folder {out}"), \
            tqdm(total=steps, unit="step", desc="MD", disable=None) as bar:

        def progress(step: int, state: Any) -> None:
            bar.update(1)
            if step % 50 == 0:
                bar.set_postfix_str(f"{state.n_systems}/{trajectories} running")

        result = run_md(potential, [atoms.copy() for _ in range(trajectories)],
                        temperature_K=temperature, timestep_fs=timestep, steps=steps,
                        friction_per_ps=friction, seed=seed, sample_every=sample_every,
                        min_distance_A=min_distance,
                        stability_check=not no_stability_check, dtype=dtype,
                        threads=threads, callback=progress, checkpoint=out / "md_state.pt",
                        checkpoint_every=checkpoint_every)
    (out / "stability.json").write_text(json.dumps(stability_summary(result), indent=2) + "\n")
    click.echo(f"stable: {result.n_stable}/{trajectories} trajectories; "
               f"{result.system_steps_per_s:.1f} system-steps/s")
    click.echo(describe_criterion(result.criterion))
    for t in result.trajectories:
        if not t.stable:
            click.echo(f"  trajectory {t.index}: {t.failure} at step {t.failed_step} "
                       f"({t.detail})")
    _write_structure(out, result, atoms, discard, r_cut)


_MD_OPTIONS = {"temperature_K": "--temperature (K)", "timestep_fs": "--timestep (fs)",
               "steps": "--steps", "friction_per_ps": "--friction (1/ps)",
               "sample_every": "--sample-every", "min_distance_A": "--min-distance (Å)"}


def _write_structure(out: Path, result: Any, atoms: Any, discard: int, r_cut: float) -> None:
    from congener.analysis.plots import plot_structure
    from congener.analysis.structure import LIQUID_GE_1273K, structure_stats

    frames = [f for f in result.stable_frames(start_step=discard) if f]
    if not frames:
        click.echo("no stable frames after the discarded steps: RDF and ADF not written")
        return
    stats = structure_stats(frames, r_cut_A=r_cut)
    np.savetxt(out / "rdf.csv", np.column_stack([stats.r_A, stats.g_mean, stats.g_std]),
               delimiter=",", header="r_A,g_mean,g_std", comments="", fmt="%.6g")
    np.savetxt(out / "adf.csv",
               np.column_stack([stats.angle_deg, stats.adf_mean, stats.adf_std]),
               delimiter=",", header="angle_deg,p_mean,p_std", comments="", fmt="%.6g")
    experiment = LIQUID_GE_1273K if set(atoms.get_chemical_symbols()) == {"Ge"} else None
    plot_structure({"model": stats}, out / "rdf.png", experiment=experiment)
    summary = {"first_peak_A": stats.peak_A, "coordination": stats.coordination,
               "n_trajectories": stats.n_trajectories, "discarded_steps": discard,
               "adf_r_cut_A": r_cut}
    if experiment is not None:
        summary["experiment"] = {"peak_A": experiment.peak_A,
                                 "coordination": experiment.coordination,
                                 "citation": experiment.citation}
    (out / "structure.json").write_text(json.dumps(summary, indent=2) + "\n")
    click.echo(f"first peak {stats.peak_A[0]:.3f} ± {stats.peak_A[1]:.3f} Å, coordination "
               f"{stats.coordination[0]:.2f} ± {stats.coordination[1]:.2f}; wrote {out}")
