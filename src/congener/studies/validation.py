"""Study stages beyond test errors: phonon DOS and MD (stability, RDF/ADF) of the study's models.

Both stages read the trained runs of a study, write their results under `validation/` (one
file per model, so they resume like the runs do) and return a markdown section for
`report.md`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from congener.analysis.phonons import PhononDOS, dos_distance, phonon_dos
from congener.analysis.plots import plot_dos, plot_structure
from congener.analysis.stability import (
    format_stability_table,
    stability_records,
    stability_summary,
    stability_table,
)
from congener.analysis.structure import LIQUID_GE_1273K, StructureStats, structure_stats
from congener.calculator import CongenerCalculator
from congener.data.structures import density_g_cm3, read_structures, scale_to_density
from congener.errors import ConfigError, CongenerError, DataError, SimulationUnstable
from congener.models.checkpoint import load_potential
from congener.simulation.md import run_md
from congener.studies.config import PhononStage, RunSpec, StudyConfig
from congener.studies.run import write_json
from congener.studies.sections import MDStage

Log = Callable[[str], None]


def _model(study_dir: Path, spec: RunSpec) -> Path:
    return study_dir / "runs" / spec.name / "model.pt"


def _reference_calc(stage: PhononStage, cfg: StudyConfig, study_dir: Path,
                    results: Sequence[tuple[RunSpec, dict]]):
    """The DOS reference: exact SW (LAMMPS), a given model, or the largest transfer model."""
    target = next(iter(cfg.mapping.values()))
    if stage.reference == "sw":
        if not cfg.target.data.startswith("sw:"):
            raise ConfigError("phonons.reference 'sw' needs Stillinger-Weber target data")
        from congener.data.lammps_sw import LammpsSWCalculator

        return f"SW-{target} (exact, LAMMPS)", LammpsSWCalculator(target)
    if stage.reference == "largest":
        curve = [s for s, _ in results if s.kind == "curve" and str(s.mode) == "transfer"]
        if not curve:
            raise ConfigError("phonons.reference 'largest' needs transfer runs")
        best = max(curve, key=lambda s: (s.size, -s.seed))
        return f"{best.name} (reference)", CongenerCalculator.from_checkpoint(
            _model(study_dir, best), device="cpu")
    return Path(stage.reference).name, CongenerCalculator.from_checkpoint(stage.reference,
                                                                          device="cpu")


def _cached(path: Path) -> dict[str, Any] | None:
    """A stored result, or None if there is none or it cannot be read (then it is redone)."""
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None


def _dos_cached(path: Path, compute: Callable[[], PhononDOS], cached_only: bool = False
                ) -> PhononDOS | None:
    """The DOS from `path`, else computed and stored (None with `cached_only`). A failure of
    the model's physics (no minimum near the lattice, non-finite forces) is stored and raised
    again on a rerun; others (LAMMPS missing, an unreadable checkpoint) are only raised."""
    d = _cached(path)
    if d is None and cached_only:
        return None
    if d is not None:
        if "error" in d:
            raise CongenerError(d["error"])
        return PhononDOS(**{k: np.asarray(v) if isinstance(v, list) else v
                            for k, v in d.items()})
    try:
        dos = compute()
    except (DataError, SimulationUnstable) as exc:
        write_json(path, {"error": str(exc)})
        raise
    write_json(path, {k: v.tolist() if isinstance(v, np.ndarray) else v
                      for k, v in asdict(dos).items()}, indent=None)
    return dos


def phonon_stage(cfg: StudyConfig, study_dir: Path, results: Sequence[tuple[RunSpec, dict]],
                 log: Log | None = None, cached_only: bool = False) -> str:
    """DOS of the selected runs against the reference; overlay plot and distances. With
    `cached_only`, only stored results are used (models without one are left out)."""
    stage = cfg.phonons
    out = study_dir / "validation" / "phonons"
    out.mkdir(parents=True, exist_ok=True)
    target = next(iter(cfg.mapping.values()))
    chosen = [s for s, _ in results if s.kind == stage.runs and s.size == stage.size]
    if not chosen:
        return f"## Phonon DOS\n\nNo {stage.runs} runs of size {stage.size} to analyse.\n"
    name, ref_calc = _reference_calc(stage, cfg, study_dir, results)
    if log and not cached_only:
        log(f"phonon DOS: {len(chosen)} models against {name}")
    try:
        ref = _dos_cached(out / "reference.json", lambda: phonon_dos(ref_calc, target),
                          cached_only)
    except CongenerError as exc:
        return f"## Phonon density of states\n\nReference {name} failed: {exc}\n"
    if ref is None:
        return ""
    curves: dict[str, PhononDOS] = {}
    lines = ["| model | mode | DOS distance to reference | lattice (Å) |", "|---|---|---|---|"]
    distances: dict[str, list[float]] = {}
    for spec in chosen:
        def compute(spec: RunSpec = spec) -> PhononDOS:
            calc = CongenerCalculator.from_checkpoint(_model(study_dir, spec), device="cpu")
            return phonon_dos(calc, target)

        try:
            dos = _dos_cached(out / f"{spec.name}.json", compute, cached_only)
        except CongenerError as exc:  # e.g. no energy minimum near the diamond lattice
            lines.append(f"| {spec.name} | {spec.mode} | failed: {exc} | |")
            distances.setdefault(str(spec.mode), []).append(float("nan"))
            continue
        if dos is None:
            continue
        d = dos_distance(dos, ref)
        distances.setdefault(str(spec.mode), []).append(d)
        curves[spec.name] = dos
        lines.append(f"| {spec.name} | {spec.mode} | {d:.3f} | {dos.lattice_A:.3f} |")
    plot_dos(curves, out / "dos.png", reference=(name, ref))  # failed models are left out
    mean = ", ".join(f"{m} {np.nanmean(v):.3f} ± {np.nanstd(v):.3f} ({np.isnan(v).sum()} "
                     "failed)" for m, v in distances.items() if not np.isnan(v).all())
    return "\n".join([
        "## Phonon density of states", "",
        f"Models trained on {stage.size} sample(s) ({stage.runs} runs) against {name}; "
        "distance = ∫|g_model − g_ref| dν of unit-area DOS (0 = identical, 2 = disjoint).",
        f"Mean distance per mode: {mean}.", "", *lines, "",
        "![phonon DOS](validation/phonons/dos.png)", ""])


def _start_structure(study_dir: Path, density: float | None = None):
    """The hottest structure of the data set, its cell scaled isotropically to `density`
    (g/cm³) where given."""
    pool = read_structures(study_dir / "data" / "target_pool.extxyz")
    temps = np.array([float(a.info.get("temperature", -1.0)) for a in pool])
    start = pool[int(np.argmax(temps))]
    return start if density is None else scale_to_density(start, density)


def _melt(stage: MDStage, potential, start, spec: RunSpec, path: Path) -> dict[str, Any]:
    """The melting phase of one model (`md.melt_steps` at `md.melt_K`), stored in `path`:
    the final positions of the trajectories that survived it and the records of those that
    failed (they count as unstable). Read back from `path` when it exists."""
    saved = _cached(path)
    if saved is not None:
        return saved
    res = run_md(potential, [start] * stage.trajectories, temperature_K=stage.melt_K,
                 timestep_fs=stage.timestep_fs, steps=stage.melt_steps,
                 friction_per_ps=stage.friction_per_ps, seed=spec.seed + 1_000_003,
                 sample_every=stage.melt_steps, checkpoint=path.with_suffix(".ckpt"),
                 checkpoint_every=stage.checkpoint_every)
    saved = {"summary": stability_summary(res),
             "final": [t.positions[-1].tolist() for t in res.trajectories if t.stable],
             "failed": [asdict(r) for r in stability_records(res, mode=str(spec.mode),
                                                             size=spec.size) if not r.stable]}
    write_json(path, saved, indent=None)
    path.with_suffix(".ckpt").unlink(missing_ok=True)
    return saved


def md_stage(cfg: StudyConfig, study_dir: Path, results: Sequence[tuple[RunSpec, dict]],
             log: Log | None = None, cached_only: bool = False) -> str:
    """NVT MD of each selected model from a liquid structure; stability table and RDF/ADF.
    With `cached_only`, only stored trajectories are used (nothing is simulated)."""
    stage = cfg.md
    out = study_dir / "validation" / stage.name
    out.mkdir(parents=True, exist_ok=True)
    chosen = [s for s, _ in results if s.kind == "curve" and s.size in stage.sizes
              and (stage.arms is None or s.mode in stage.arms)]
    start = _start_structure(study_dir, stage.density_g_cm3)
    records, frames_by_key, rates = [], {}, []
    for k, spec in enumerate(chosen):
        path = out / f"{spec.name}.json"
        saved = _cached(path)
        _check_protocol(saved, stage, path)
        if cached_only and saved is None:
            continue
        if saved is None:
            if log:
                log(f"MD {k + 1}/{len(chosen)}: {spec.name}, {stage.trajectories} trajectories, "
                    f"{stage.steps} steps")
            potential = load_potential(_model(study_dir, spec))
            starts, failed = [start] * stage.trajectories, []
            if stage.melt_steps:
                melt = _melt(stage, potential, start, spec, out / f"{spec.name}.melt.json")
                starts, failed = [_atoms(start, p) for p in melt["final"]], melt["failed"]
            # a long protocol runs over several sittings: a crash loses at most one interval
            res = run_md(potential, starts,
                         temperature_K=stage.temperature_K, timestep_fs=stage.timestep_fs,
                         steps=stage.steps, friction_per_ps=stage.friction_per_ps,
                         seed=spec.seed, sample_every=stage.sample_every,
                         checkpoint=out / f"{spec.name}.ckpt",
                         checkpoint_every=stage.checkpoint_every)
            frames = [[f.positions.tolist() for f in t.frames(stage.steps // 2)]
                      for t in res.trajectories if t.stable]
            summary = stability_summary(res)
            saved = {"protocol": stage.protocol(), "summary": summary, "frames": frames,
                     "records": failed + [asdict(r) for r in stability_records(
                         res, mode=str(spec.mode), size=spec.size)]}
            write_json(path, saved, indent=None)  # frames: compact
            (out / f"{spec.name}.ckpt").unlink(missing_ok=True)  # the result holds it all
        records += [_record(r) for r in saved["records"]]
        rates.append((saved["summary"]["system_steps_per_s"], saved["summary"]["wall_s"]))
        key = f"{spec.mode}, {spec.size}"
        frames_by_key.setdefault(key, []).extend(
            [_atoms(start, f) for f in traj] for traj in saved["frames"])
    if cached_only and not records:
        return ""
    table = format_stability_table(stability_table(records))
    stats: dict[str, StructureStats] = {k: structure_stats(v) for k, v in frames_by_key.items()
                                        if any(len(t) for t in v)}
    experiment = LIQUID_GE_1273K if next(iter(cfg.mapping.values())) == "Ge" else None
    if stats:
        plot_structure(stats, out / "rdf_adf.png", experiment=experiment)
    rows = [f"| {k} | {s.peak_A[0]:.3f} ± {s.peak_A[1]:.3f} | "
            f"{s.coordination[0]:.2f} ± {s.coordination[1]:.2f} | "
            f"{s.minimum_A[0]:.2f} ± {s.minimum_A[1]:.2f} | {s.n_trajectories} |"
            for k, s in stats.items()]
    exp = (f" Experiment (liquid Ge, {experiment.temperature_K:g} K): first peak "
           f"{experiment.peak_A} ± {experiment.peak_error_A} Å, coordination "
           f"{experiment.coordination}." if experiment else "")
    return "\n".join([
        "## Molecular dynamics: stability and liquid structure", "",
        f"NVT Langevin at {stage.temperature_K:g} K, {stage.timestep_fs:g} fs, friction "
        f"{stage.friction_per_ps:g}/ps, {stage.steps} steps "
        f"({stage.steps * stage.timestep_fs / 1000:g} ps), {stage.trajectories} trajectories "
        f"per model from the hottest structure of the data set{_protocol(stage, start)}. "
        "Stable: no NaN, no atom pair closer than 2.0 Å, temperature below 5× the target.",
        "", table, "",
        _throughput(rates), "",
        "| models | first g(r) peak (Å) | coordination | integrated to (Å, first minimum) "
        "| trajectories |", "|---|---|---|---|---|",
        *rows, "", f"RDF/ADF averaged over the second half of each stable trajectory.{exp}",
        "", f"![RDF and ADF](validation/{stage.name}/rdf_adf.png)" if stats else "", ""])


def _check_protocol(saved: dict[str, Any] | None, stage: MDStage, path: Path) -> None:
    """Refuse a stored result made under other MD settings (a result from before settings
    were stored is read from its summary, with no density change and no melting phase)."""
    if saved is None:
        return
    summary = saved["summary"]
    stored = saved.get("protocol") or {
        "temperature_K": summary["temperature_K"], "timestep_fs": summary["timestep_fs"],
        "steps": summary["steps"], "friction_per_ps": summary["friction_per_ps"],
        "trajectories": summary["total"], "density_g_cm3": None, "melt_K": None,
        "melt_steps": 0}
    wanted = stage.protocol()
    changed = sorted(k for k in wanted if stored.get(k) != wanted[k])
    if changed:
        raise ConfigError(f"{path} holds MD made with other settings ({', '.join(changed)}); "
                          "give this protocol its own md.name (a folder under validation/)")


def _protocol(stage: MDStage, start) -> str:
    """The start's density and the melting phase, in words."""
    text = (f" at {density_g_cm3(start):.2f} g/cm³" + ("" if stage.density_g_cm3 is not None
                                          else " (its own density)"))
    if stage.melt_steps:
        melt_ps = stage.melt_steps * stage.timestep_fs / 1000
        text += (f", after {stage.melt_steps} steps ({melt_ps:g} ps) at {stage.melt_K:g} K "
                 "to melt it (not analysed; a trajectory that fails there counts as unstable)")
    return text


def _throughput(rates: list[tuple[float, float]]) -> str:
    """One line on the speed the MD ran at: system-steps/s per model (median, range) and the
    wall time per model (a run resumed from a checkpoint counts its last sitting only)."""
    speed = np.array([r for r, _ in rates])
    wall = np.array([w for _, w in rates]) / 60
    return (f"Throughput: {np.median(speed):.1f} system-steps/s per model (median; "
            f"{speed.min():.1f}-{speed.max():.1f} over {len(speed)} models), "
            f"{np.median(wall):.1f} min per model (median; a model resumed from a checkpoint "
            "counts its last sitting).")


def _record(values: dict[str, Any]):
    from congener.analysis.stability import StabilityRecord

    return StabilityRecord(**values)


def _atoms(template, positions):
    atoms = template.copy()
    atoms.calc = None
    atoms.positions = np.asarray(positions)
    return atoms
