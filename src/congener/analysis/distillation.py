"""How good and how fast a distilled student is beside its teacher.

`compare_models` measures, for one teacher and one student:
- accuracy: the student on held-out teacher labels; both on DFT test structures (if given);
- speed, side by side in one process (the machines are noisy: the ratio is the figure):
  energy+forces time per structure, interleaved repeats, and MD steps/s for one trajectory
  and for a batch;
- physics: the phonon DOS of both and their L1 distance (diamond-structure elements), and
  the RDF/ADF, first peak, coordination and stable-trajectory counts of both from the same
  liquid MD protocol, started from the teacher's hottest sampled snapshots.
`format_report` turns the result into the Markdown report of a distillation folder.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ase import Atoms

from congener.analysis.errors import evaluate, metrics
from congener.analysis.structure import structure_stats
from congener.bounds import check_float, check_int
from congener.errors import CongenerError, first_line
from congener.graph import build_graph
from congener.models.potential import Potential
from congener.simulation.md import run_md
from congener.simulation.sampling import melting_point_K

DIAMOND = ("C", "Si", "Ge", "Sn")  # elements whose phonons are taken in the diamond cell


@dataclass(frozen=True)
class ReportConfig:
    """Settings of the comparison. `structure_temperature_K` None: 1.1 x the melting point."""

    speed_repeats: int = 5
    md_speed_steps: int = 20
    md_batch: int = 8
    structure_md_steps: int = 400
    structure_trajectories: int = 4
    structure_temperature_K: float | None = None
    timestep_fs: float = 2.0
    phonons: bool = True

    def __post_init__(self) -> None:
        for name in ("speed_repeats", "md_speed_steps", "md_batch", "structure_trajectories"):
            check_int(f"report.{name}", getattr(self, name), 1)
        check_int("report.structure_md_steps", self.structure_md_steps, 0)
        check_float("report.timestep_fs", self.timestep_fs, 0.0, 10.0, low_open=True)
        if self.structure_temperature_K is not None:
            check_float("report.structure_temperature_K", self.structure_temperature_K, 0.0,
                        20_000.0, low_open=True)


def energy_forces_ms(potentials: dict[str, Potential], atoms: Atoms, repeats: int
                     ) -> dict[str, float]:
    """Median wall time (ms) of one energy+forces call per potential, graph building
    included, measured in interleaved rounds after one warm-up call each."""
    times: dict[str, list[float]] = {name: [] for name in potentials}
    for round_ in range(repeats + 1):
        for name, potential in potentials.items():
            param = next(potential.parameters())
            start = time.perf_counter()
            graph = build_graph(atoms, potential.cutoff).to(param.device, param.dtype)
            with torch.enable_grad():
                potential(graph)
            if param.device.type == "cuda":
                torch.cuda.synchronize()
            if round_:  # the first round warms up
                times[name].append(1e3 * (time.perf_counter() - start))
    return {name: float(np.median(t)) for name, t in times.items()}


def md_steps_per_s(potentials: dict[str, Potential], atoms: Atoms, *, batch: int, steps: int,
                   temperature_K: float, timestep_fs: float) -> dict[str, dict[str, float]]:
    """MD steps/s of each potential for one trajectory and for `batch` trajectories (system
    steps/s: steps x trajectories per second), run one after the other in this process."""
    out: dict[str, dict[str, float]] = {name: {} for name in potentials}
    for label, n in (("single", 1), ("batched", batch)):
        for name, potential in potentials.items():
            result = run_md(potential, [atoms] * n, temperature_K=temperature_K,
                            timestep_fs=timestep_fs, steps=steps, sample_every=steps,
                            stability_check=False)
            out[name][label] = result.system_steps_per_s
    return out


def liquid_structure(potential: Potential, starts: Sequence[Atoms], *, temperature_K: float,
                     steps: int, timestep_fs: float, seed: int = 0) -> dict[str, Any]:
    """RDF/ADF statistics and stability of MD from `starts` (frames of the second half)."""
    result = run_md(potential, list(starts), temperature_K=temperature_K,
                    timestep_fs=timestep_fs, steps=steps, sample_every=max(1, steps // 20),
                    seed=seed)
    out: dict[str, Any] = {"trajectories": len(starts), "stable": result.n_stable,
                           "failures": [f"{t.failure} at step {t.failed_step}"
                                        for t in result.trajectories if not t.stable]}
    frames = result.stable_frames(start_step=steps // 2)
    if any(len(f) for f in frames):
        stats = structure_stats(frames)
        out.update(peak_A=stats.peak_A, coordination=stats.coordination,
                   r_A=stats.r_A.tolist(), g=stats.g_mean.tolist(),
                   angle_deg=stats.angle_deg.tolist(), adf=stats.adf_mean.tolist())
    return out


def _rdf_distance(a: dict[str, Any], b: dict[str, Any]) -> float:
    """Mean absolute difference of two g(r) curves on their common grid."""
    if "g" not in a or "g" not in b:
        return float("nan")
    return float(np.mean(np.abs(np.asarray(a["g"]) - np.asarray(b["g"]))))


def compare_models(teacher: Potential, student: Potential, *, held_out: Sequence[Atoms],
                   dft_test: Sequence[Atoms] | None, speed_structure: Atoms,
                   liquid_starts: Sequence[Atoms], elements: Sequence[str],
                   cfg: ReportConfig, progress: Callable[[str], None] | None = None
                   ) -> dict[str, Any]:
    """The figures of a distillation report (see the module doc)."""
    def say(stage: str) -> None:
        if progress:
            progress(stage)

    report: dict[str, Any] = {
        "student_parameters": sum(p.numel() for p in student.parameters()),
        "teacher_parameters": sum(p.numel() for p in teacher.parameters())}
    say("accuracy")
    report["student_vs_teacher"] = metrics(evaluate(student, held_out))
    if dft_test:
        report["dft"] = {"teacher": metrics(evaluate(teacher, dft_test)),
                         "student": metrics(evaluate(student, dft_test))}
    pair = {"teacher": teacher, "student": student}
    say("speed")
    ms = energy_forces_ms(pair, speed_structure, cfg.speed_repeats)
    md = md_steps_per_s(pair, speed_structure, batch=cfg.md_batch, steps=cfg.md_speed_steps,
                        temperature_K=300.0, timestep_fs=cfg.timestep_fs)
    report["speed"] = {
        "atoms": len(speed_structure), "threads": torch.get_num_threads(),
        "energy_forces_ms": ms, "md_steps_per_s": md,
        "speedup_energy_forces": ms["teacher"] / ms["student"],
        "speedup_md_single": md["student"]["single"] / md["teacher"]["single"],
        "speedup_md_batched": md["student"]["batched"] / md["teacher"]["batched"],
        "md_batch": cfg.md_batch}
    if cfg.phonons:
        say("phonons")
        try:  # a model without a stable crystal has no phonons; the rest is still reported
            report["phonons"] = _phonons(teacher, student, elements)
        except CongenerError as exc:
            report["phonons"] = {"skipped": f"phonons failed: {first_line(exc)}"}
    if cfg.structure_md_steps and liquid_starts:
        temperature = cfg.structure_temperature_K or 1.1 * melting_point_K(elements)
        say("liquid MD")
        starts = list(liquid_starts)[:cfg.structure_trajectories]
        liquid = {name: liquid_structure(p, starts, temperature_K=temperature,
                                         steps=cfg.structure_md_steps,
                                         timestep_fs=cfg.timestep_fs)
                  for name, p in pair.items()}
        liquid["temperature_K"] = temperature
        liquid["steps"] = cfg.structure_md_steps
        liquid["rdf_mean_abs_difference"] = _rdf_distance(liquid["teacher"], liquid["student"])
        report["liquid"] = liquid
    return report


def _phonons(teacher: Potential, student: Potential, elements: Sequence[str]
             ) -> dict[str, Any]:
    from congener.analysis.phonons import dos_distance, phonon_dos
    from congener.calculator import CongenerCalculator

    if len(elements) != 1 or elements[0] not in DIAMOND:
        return {"skipped": f"phonons are taken in the diamond cell of {', '.join(DIAMOND)}"}
    dos = {name: phonon_dos(CongenerCalculator(p, device=str(next(p.parameters()).device)),
                            elements[0])
           for name, p in (("teacher", teacher), ("student", student))}
    return {"distance": dos_distance(dos["teacher"], dos["student"]),
            **{name: {"lattice_A": d.lattice_A,
                      "gamma_optical_THz": float(np.max(d.gamma_THz))}
               for name, d in dos.items()}}


def format_report(report: dict[str, Any], *, teacher: str, counts: dict[str, Any]) -> str:
    """Markdown summary of `compare_models` and the sampling counts."""
    lines = [f"# Distillation of {teacher}", "",
             f"Student {report['student_parameters']:,} parameters, teacher "
             f"{report['teacher_parameters']:,}.", ""]
    if counts:
        ladder = ", ".join(f"{t:.0f}" for t in counts["temperatures_K"])
        lines += ["## Data", "",
                  (f"- teacher MD at {ladder} K: {counts['md_frames']} snapshots; "
                   f"{counts['md_failed_trajectories']} of {counts['md_trajectories']} "
                   "trajectories unstable and dropped") if ladder else "- no teacher MD",
                  f"- rattled {counts['rattled']}, strained {counts['strained']}; "
                  f"{counts['duplicates_removed']} near-duplicates removed; "
                  f"{counts['labelled']} labelled ({counts['teacher_failures']} with non-finite "
                  "teacher output left out)",
                  f"- split: {counts['split']['train']} train, {counts['split']['val']} "
                  f"validation, {counts['split']['test']} held-out test; DFT structures mixed "
                  f"in: {counts['dft_train']}", ""]
    held = report["student_vs_teacher"]
    lines += ["## Accuracy", "", "| model | on | E MAE (meV/atom) | F MAE (eV/Å) | S MAE (GPa) |",
              "|---|---|---|---|---|",
              f"| student | held-out teacher labels ({held['n']}) | {held['energy_mae']:.2f} | "
              f"{held['force_mae']:.4f} | {held['stress_mae']:.3f} |"]
    for name, m in report.get("dft", {}).items():
        lines.append(f"| {name} | DFT test ({m['n']}) | {m['energy_mae']:.2f} | "
                     f"{m['force_mae']:.4f} | {m['stress_mae']:.3f} |")
    sp = report["speed"]
    lines += ["", f"## Speed ({sp['atoms']} atoms, {sp['threads']} threads, side by side)", "",
              "| model | E+F (ms) | MD steps/s, 1 trajectory | MD system-steps/s, "
              f"{sp['md_batch']} trajectories |", "|---|---|---|---|"]
    for name in ("teacher", "student"):
        lines.append(f"| {name} | {sp['energy_forces_ms'][name]:.1f} | "
                     f"{sp['md_steps_per_s'][name]['single']:.1f} | "
                     f"{sp['md_steps_per_s'][name]['batched']:.1f} |")
    lines.append(f"| student / teacher speed-up | {sp['speedup_energy_forces']:.1f}x | "
                 f"{sp['speedup_md_single']:.1f}x | {sp['speedup_md_batched']:.1f}x |")
    ph = report.get("phonons")
    if ph:
        lines += ["", "## Phonons", ""]
        lines.append(f"- {ph['skipped']}" if "skipped" in ph else
                     f"- DOS distance student-teacher {ph['distance']:.3f} (L1 of unit-area "
                     f"curves, 0-2); Γ optical {ph['teacher']['gamma_optical_THz']:.2f} THz "
                     f"(teacher) and {ph['student']['gamma_optical_THz']:.2f} THz (student); "
                     f"lattice {ph['teacher']['lattice_A']:.3f} / "
                     f"{ph['student']['lattice_A']:.3f} Å")
    liq = report.get("liquid")
    if liq:
        lines += ["", f"## Liquid MD ({liq['temperature_K']:.0f} K, {liq['steps']} steps, the "
                  "same starts for both)", "",
                  "| model | stable | first peak (Å) | coordination |", "|---|---|---|---|"]
        for name in ("teacher", "student"):
            r = liq[name]
            peak = f"{r['peak_A'][0]:.3f} ± {r['peak_A'][1]:.3f}" if "peak_A" in r else "-"
            cn = (f"{r['coordination'][0]:.2f} ± {r['coordination'][1]:.2f}"
                  if "coordination" in r else "-")
            lines.append(f"| {name} | {r['stable']}/{r['trajectories']} | {peak} | {cn} |")
        lines.append(f"\nmean |g_student(r) - g_teacher(r)| = "
                     f"{liq['rdf_mean_abs_difference']:.3f}")
    return "\n".join(lines) + "\n"


def speed_structure(seeds: Sequence[Atoms]) -> Atoms:
    """The structure speeds are measured on: the largest 3D-periodic seed (else the largest)."""
    periodic = [a for a in seeds if a.pbc.all() and a.cell.rank == 3]
    return max(periodic or list(seeds), key=len)


def hottest_frames(folder: Any, n_seeds: int) -> list[Atoms]:
    """The last snapshot of each seed structure at the highest sampled MD temperature of a
    distillation folder (3D-periodic ones): liquid starts for the structure comparison."""
    import ase.io

    samples = Path(folder) / "samples"
    records = sorted(samples.glob("md_*.json"), key=lambda p: int(p.stem.split("_")[1]))
    for record in reversed(records):  # the hottest temperature that left frames
        k = record.stem.split("_")[1]
        paths = list(samples.glob(f"md_{k}_*K.extxyz"))
        if not json.loads(record.read_text())["frames"] or not paths:
            continue
        last: dict[int, Atoms] = {}
        for atoms in ase.io.read(paths[0], index=":"):
            if atoms.pbc.all():
                last[int(atoms.info.get("seed_structure", 0))] = atoms
        return [last[k] for k in sorted(last) if k < n_seeds]
    return []


def format_tradeoff(folder: Any, *, teacher: str) -> str:
    """Markdown table of every reported student of a distillation folder: accuracy (against
    the teacher's held-out labels and DFT) beside speed-up, one row per student."""

    rows = []
    for path in sorted(Path(folder).glob("students/*/report.json")):
        r = json.loads(path.read_text())
        dft = r.get("dft", {})
        params = r.get("student_parameters")
        rows.append(
            f"| {path.parent.name} | {params if params is not None else '-'} | "
            f"{r['student_vs_teacher']['force_mae']:.4f} | "
            + (f"{dft['student']['energy_mae']:.2f} / {dft['student']['force_mae']:.4f} | "
               f"{dft['teacher']['energy_mae']:.2f} / {dft['teacher']['force_mae']:.4f} | "
               if dft else "- | - | ")
            + f"{r['speed']['speedup_energy_forces']:.1f}x | {r['speed']['speedup_md_single']:.1f}x"
            f" | {r['speed']['speedup_md_batched']:.1f}x |")
    head = [f"# Students of {teacher}: accuracy against speed", "",
            "| student | parameters | F MAE vs teacher (eV/Å) | student vs DFT, E (meV/atom) / "
            "F (eV/Å) | teacher vs DFT | E+F speed-up | MD speed-up (1 traj.) | MD speed-up "
            "(batch) |", "|---|---|---|---|---|---|---|---|"]
    return "\n".join(head + rows) + "\n"


def report_student(result: Any, teacher: Potential, *, teacher_name: str,
                   seeds: Sequence[Atoms], dft_test: Sequence[Atoms] | None,
                   cfg: ReportConfig, progress: Callable[[str], None] | None = None) -> str:
    """Compare the student of a `training.distill.DistillResult` with its teacher, write
    students/<name>/report.json and report.md and the folder's trade-off table (report.md);
    returns the student's Markdown report. A student already reported is read back."""
    from congener.data.structures import elements_of, read_structures
    from congener.files import write_json, write_text
    from congener.models.checkpoint import load_potential

    student_dir = Path(result.student).parent
    if (student_dir / "report.json").is_file() and (student_dir / "report.md").is_file():
        return (student_dir / "report.md").read_text()
    student = load_potential(result.student)
    labels = read_structures(result.labels)
    report = compare_models(
        teacher, student, held_out=[labels[k] for k in result.split["test"]],
        dft_test=dft_test, speed_structure=speed_structure(seeds),
        liquid_starts=hottest_frames(result.folder, len(seeds)),
        elements=elements_of(seeds), cfg=cfg, progress=progress)
    text = format_report(report, teacher=teacher_name, counts=result.counts)
    write_text(student_dir / "report.md", text)
    write_json(student_dir / "report.json", {"counts": result.counts, **report})
    write_text(Path(result.folder) / "report.md",
               format_tradeoff(result.folder, teacher=teacher_name))
    return text
