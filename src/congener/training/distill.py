"""Distillation: a fast student potential trained on the labels of a slower teacher.

Radova et al. (2025) close their frozen-transfer workflow by using the fine-tuned foundation
model as the ground truth of a cheaper surrogate. `distill` does it in resumable stages, each
leaving its result in the output folder so that a rerun skips what is finished:

    samples/md_<k>_<T>K.extxyz   teacher MD over the temperature ladder (simulation.sampling),
                                 samples/md_<k>.pt its checkpoint while it runs
    samples/rattle.extxyz, samples/strain.extxyz
    snapshots.extxyz             all samples after de-duplication (sampling.json: the counts)
    labels/part-<k>.extxyz       teacher labels, chunk by chunk
    teacher_labels.extxyz        energies, forces, stresses; teacher name and version per frame
    split.json                   held-out teacher labels: train / validation / test indices
    students/<name>/             each student's training run (training.trainer.fit; resumable)

The teacher's samples and labels are shared by every student of the folder (a smaller
DimeNet++ beside the default one costs only its training): the folder's settings.json fixes
the teacher, seeds, sampling and split; each student's settings.json its architecture,
training and DFT mix. A student is validated on teacher labels it does not train on; DFT
structures can be mixed into its training set with a weight per structure (`dft_weight`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from congener.bounds import check_float, check_floats, check_int, check_seed
from congener.data.structures import read_structures, validate, write_structures
from congener.errors import ConfigError, DataError
from congener.files import folder_lock, output_folder, write_json
from congener.graph import build_graph
from congener.models.dimenet import DimeNetConfig
from congener.models.potential import Potential
from congener.simulation import sampling
from congener.training.config import TrainConfig, from_dict

Progress = Callable[[str, int, int], None]  # (stage, done, total): progress bars at the CLI


@dataclass(frozen=True)
class SamplingConfig:
    """Which configurations the teacher labels (see `simulation.sampling`).

    MD: `temperatures_K`, or `n_temperatures` evenly from `min_temperature_K` to
    `max_temperature_K` (default twice the melting point); each seed structure runs
    `trajectories_per_seed` trajectories (0: no MD) of `md_steps` steps, snapshots every
    `sample_every` steps after `equilibration_steps`. Rattled copies: `rattle_copies` per
    seed and sigma. Strained copies: `strain_copies` per seed, volume within
    ±`max_volume_strain`, shear within ±`max_shear`. `dedup_threshold` (relative descriptor
    distance, e.g. 0.02) drops near-duplicates; None keeps every sample.
    """

    temperatures_K: tuple[float, ...] | None = None
    n_temperatures: int = 6
    min_temperature_K: float = 300.0
    max_temperature_K: float | None = None
    md_steps: int = 400
    equilibration_steps: int = 100
    sample_every: int = 25
    timestep_fs: float = 2.0
    friction_per_ps: float = 5.0
    trajectories_per_seed: int = 1
    rattle_sigmas_A: tuple[float, ...] = (0.02, 0.05, 0.1)
    rattle_copies: int = 1
    max_volume_strain: float = 0.1
    max_shear: float = 0.05
    strain_copies: int = 2
    dedup_threshold: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("temperatures_K", "rattle_sigmas_A"):
            value = getattr(self, name)
            if value is not None:
                if not isinstance(value, list | tuple):
                    raise ConfigError(f"sampling.{name} must be a list of numbers")
                object.__setattr__(self, name, tuple(float(v) for v in value))
        if self.temperatures_K is not None:
            check_floats("sampling.temperatures_K", self.temperatures_K, 0.0, 20_000.0,
                         low_open=True)
        check_floats("sampling.rattle_sigmas_A", self.rattle_sigmas_A, 0.0, 1.0, low_open=True)
        for name in ("n_temperatures", "md_steps", "sample_every"):
            check_int(f"sampling.{name}", getattr(self, name), 1)
        for name in ("equilibration_steps", "trajectories_per_seed", "rattle_copies",
                     "strain_copies"):
            check_int(f"sampling.{name}", getattr(self, name), 0)
        if not (self.trajectories_per_seed or self.rattle_copies or self.strain_copies):
            raise ConfigError("sampling asks for no snapshot: trajectories_per_seed, "
                              "rattle_copies and strain_copies are all 0")
        check_float("sampling.min_temperature_K", self.min_temperature_K, 0.0, 20_000.0,
                    low_open=True)
        if self.max_temperature_K is not None:
            check_float("sampling.max_temperature_K", self.max_temperature_K, 0.0, 20_000.0,
                        low_open=True)
        check_float("sampling.timestep_fs", self.timestep_fs, 0.0, 10.0, low_open=True)
        check_float("sampling.friction_per_ps", self.friction_per_ps, 0.0, 1000.0)
        check_float("sampling.max_volume_strain", self.max_volume_strain, 0.0, 0.5)
        check_float("sampling.max_shear", self.max_shear, 0.0, 0.3)
        if self.dedup_threshold is not None:
            check_float("sampling.dedup_threshold", self.dedup_threshold, 0.0, 2.0)
        check_seed("sampling.seed", self.seed)
        if self.equilibration_steps >= self.md_steps:
            raise ConfigError(f"sampling.equilibration_steps ({self.equilibration_steps}) must "
                              f"be below md_steps ({self.md_steps}): no snapshot would be taken")

    def temperatures(self, elements: Sequence[str]) -> list[float]:
        if self.temperatures_K is not None:
            return list(self.temperatures_K)
        return sampling.temperature_ladder(elements, n=self.n_temperatures,
                                           min_temperature_K=self.min_temperature_K,
                                           max_temperature_K=self.max_temperature_K)


@dataclass(frozen=True)
class DistillConfig:
    """Sampling, the student's architecture and training, the held-out fractions of the
    teacher labels, the weight of mixed-in DFT structures and the labelling batch size."""

    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    model: DimeNetConfig = field(default_factory=DimeNetConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        epochs=100, energy_weight=30.0, stress_weight=0.01, patience=20))
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    dft_weight: float = 1.0
    label_batch: int = 8
    label_chunk: int = 64
    threads: int = 0

    def __post_init__(self) -> None:
        for name in ("val_fraction", "test_fraction"):
            check_float(name, getattr(self, name), 0.0, 0.5, low_open=True)
        check_float("dft_weight", self.dft_weight, 0.0)
        check_int("label_batch", self.label_batch, 1)
        check_int("label_chunk", self.label_chunk, 1)
        check_int("threads", self.threads, 0)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DistillConfig:
        """From a mapping with sections `sampling`, `model`, `train` and the scalar keys."""
        values = dict(values or {})
        sections = {"sampling": SamplingConfig, "model": DimeNetConfig}
        built: dict[str, Any] = {k: from_dict(c, values.pop(k, None), k)
                                 for k, c in sections.items()}
        train = {**_default_train(), **(values.pop("train", None) or {})}
        built["train"] = TrainConfig.from_dict(train)
        known = {f.name for f in fields(cls)} - set(built)
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown distillation key {unknown[0]!r} (known: "
                              f"{', '.join(sorted(known | set(built)))})")
        return from_dict(cls, {**values, **built}, "distill")


def _default_train() -> dict[str, Any]:
    return {f.name: getattr(DistillConfig().train, f.name) for f in fields(TrainConfig)}


@dataclass
class DistillResult:
    """Paths and counts of a finished distillation (`student`: the student's model.pt)."""

    folder: Path
    labels: Path
    student: Path
    counts: dict[str, Any]
    split: dict[str, list[int]]


def teacher_identity(teacher: Potential, name: str) -> dict[str, str]:
    """Name, family and version of a teacher, as written into every label's metadata: the
    package version for a foundation model, the file's hash for a congener checkpoint."""
    family = teacher.network.family
    path = Path(name)
    if path.is_file():
        version = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    else:
        from importlib.metadata import PackageNotFoundError
        from importlib.metadata import version as pkg_version

        package = {"chgnet": "chgnet", "sevennet": "sevenn"}.get(name.partition(":")[0], "")
        try:
            version = f"{package} {pkg_version(package)}" if package else "unknown"
        except PackageNotFoundError:
            version = "unknown"
    return {"teacher": str(name), "teacher_family": family, "teacher_version": version}


def label(teacher: Potential, structures: Sequence[Atoms], *, batch_size: int = 8,
          identity: dict[str, str] | None = None) -> tuple[list[Atoms], list[int]]:
    """The teacher's energy, forces and (for cells with a volume) stress of each structure, as
    single-point results. Returns the labelled copies and the indices of structures whose
    prediction was not finite (left out)."""
    param = next(teacher.parameters())
    labelled, dropped = [], []
    for start in range(0, len(structures), batch_size):
        chunk = list(structures[start:start + batch_size])
        volume = [bool(a.pbc.all()) and a.cell.rank == 3 for a in chunk]
        for group in ([k for k, v in enumerate(volume) if v],
                      [k for k, v in enumerate(volume) if not v]):
            if not group:
                continue
            graph = build_graph([chunk[k] for k in group], teacher.cutoff)
            with torch.enable_grad():
                out = teacher(graph.to(param.device, param.dtype), stress=volume[group[0]])
            forces = out.forces.detach().cpu().double().numpy()
            offsets = np.cumsum([0, *[len(chunk[k]) for k in group]])
            for j, k in enumerate(group):
                atoms = chunk[k].copy()
                atoms.calc = None
                energy = float(out.energy[j])
                f = forces[offsets[j]:offsets[j + 1]]
                stress = None
                if out.stress is not None:
                    s = out.stress[j].detach().cpu().double().numpy()
                    stress = np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])
                if not (np.isfinite(energy) and np.isfinite(f).all()
                        and (stress is None or np.isfinite(stress).all())):
                    dropped.append(start + k)
                    continue
                atoms.info.update(identity or {})
                atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=f,
                                                   **({"stress": stress} if stress is not None
                                                      else {}))
                labelled.append((start + k, atoms))
    labelled.sort(key=lambda pair: pair[0])
    return [a for _, a in labelled], sorted(dropped)


def split_indices(n: int, val_fraction: float, test_fraction: float, seed: int
                  ) -> dict[str, list[int]]:
    """Random train / validation / test indices (each held-out part at least one structure)."""
    n_val, n_test = max(1, round(val_fraction * n)), max(1, round(test_fraction * n))
    if n - n_val - n_test < 1:
        raise DataError(f"{n} labelled snapshots cannot be split into training, validation and "
                        "test: sample more (sampling counts) or lower the fractions")
    order = np.random.default_rng(seed).permutation(n).tolist()
    return {"val": sorted(order[:n_val]), "test": sorted(order[n_val:n_val + n_test]),
            "train": sorted(order[n_val + n_test:])}


def distill(teacher: Potential, seeds: Sequence[Atoms], folder: str | Path,
            cfg: DistillConfig, *, teacher_name: str, dft: Sequence[Atoms] | None = None,
            student_name: str = "student", progress: Progress | None = None,
            md_callback: Callable[[int, Any], None] | None = None) -> DistillResult:
    """Sample, label with `teacher`, and train the student `student_name` (see the module
    doc). Reruns resume; a folder (or student) holding other settings is refused."""
    if not seeds:
        raise DataError("no seed structures")
    if not student_name or not all(c.isalnum() or c in "-_." for c in student_name) \
            or student_name.startswith("."):
        raise ConfigError(f"student name {student_name!r}: use letters, digits, - _ and .")
    validate(seeds, where="seed structures", labelled=False)
    elements = sorted({s for a in seeds for s in a.get_chemical_symbols()})
    unknown = sorted(set(elements) - set(teacher.elements))
    if unknown:
        raise DataError(f"the seed structures hold {', '.join(unknown)}, which the teacher "
                        f"{teacher_name} does not know (it knows {len(teacher.elements)} "
                        "elements)")
    folder = output_folder(folder)
    with folder_lock(folder, f"distillation folder {folder}"):
        _check_settings(folder, _folder_settings(cfg, seeds, teacher_name))
        student_dir = output_folder(folder / "students" / student_name)
        _check_settings(student_dir, _student_settings(cfg, dft))
        counts = _sample(teacher, seeds, folder, cfg, elements, progress, md_callback)
        identity = teacher_identity(teacher, teacher_name)
        labels = _label_all(teacher, folder, cfg, identity, progress)
        counts["labelled"] = len(labels)
        counts["teacher_failures"] = json.loads((folder / "labels" / "dropped.json")
                                                .read_text())["dropped"]
        split = split_indices(len(labels), cfg.val_fraction, cfg.test_fraction,
                              cfg.sampling.seed)
        write_json(folder / "split.json", split)
        counts["split"] = {k: len(v) for k, v in split.items()}
        write_json(folder / "counts.json", counts)
        student = _train_student(labels, split, student_dir, cfg, elements, dft, teacher_name,
                                 progress)
    counts = {**counts, "dft_train": len(dft or [])}
    return DistillResult(folder, folder / "teacher_labels.extxyz", student, counts, split)


def _structures_hash(structures: Sequence[Atoms]) -> str:
    digest = hashlib.sha256()
    for atoms in structures:
        for array in (atoms.numbers, atoms.positions, atoms.cell.array):
            digest.update(np.ascontiguousarray(array).tobytes())
        if atoms.calc is not None and "energy" in atoms.calc.results:
            digest.update(np.float64(atoms.calc.results["energy"]).tobytes())
    return digest.hexdigest()[:16]


def _folder_settings(cfg: DistillConfig, seeds: Sequence[Atoms], teacher_name: str
                     ) -> dict[str, Any]:
    """What the shared samples, labels and split depend on."""
    return {"teacher": str(teacher_name), "sampling": _jsonable(asdict(cfg.sampling)),
            "split": [cfg.val_fraction, cfg.test_fraction], "seeds": _structures_hash(seeds)}


def _student_settings(cfg: DistillConfig, dft: Sequence[Atoms] | None) -> dict[str, Any]:
    """What one student depends on beyond the folder's labels."""
    return {"model": _jsonable(asdict(cfg.model)), "train": _jsonable(asdict(cfg.train)),
            "dft": _structures_hash(dft or []), "dft_weight": cfg.dft_weight if dft else None}


def _check_settings(folder: Path, settings: dict[str, Any]) -> None:
    """Record what a folder holds; refuse a rerun that asks for something else."""
    path = folder / "settings.json"
    if path.is_file():
        old = json.loads(path.read_text())
        changed = [k for k in settings if old.get(k) != settings[k]]
        if changed:
            raise ConfigError(f"{folder} holds a distillation with another {changed[0]}; "
                              "use a new -o folder (another --name for another student), "
                              "or delete this one")
        return
    write_json(path, settings)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _sample(teacher: Potential, seeds: Sequence[Atoms], folder: Path, cfg: DistillConfig,
            elements: list[str], progress: Progress | None,
            md_callback: Callable[[int, Any], None] | None) -> dict[str, Any]:
    snapshots = folder / "snapshots.extxyz"
    summary_path = folder / "sampling.json"
    if snapshots.is_file() and summary_path.is_file():
        return json.loads(summary_path.read_text())
    s = cfg.sampling
    samples_dir = output_folder(folder / "samples")
    temperatures = s.temperatures(elements) if s.trajectories_per_seed else []
    md_counts, everything = [], []
    for k, temperature in enumerate(temperatures):
        if progress:
            progress("teacher MD", k, len(temperatures))
        path = samples_dir / f"md_{k}_{temperature:.0f}K.extxyz"
        record = samples_dir / f"md_{k}.json"
        if not (path.is_file() and record.is_file()):
            sample = sampling.md_frames(
                teacher, seeds, temperature, steps=s.md_steps,
                equilibration_steps=s.equilibration_steps, sample_every=s.sample_every,
                timestep_fs=s.timestep_fs, friction_per_ps=s.friction_per_ps,
                seed=s.seed + 1000 * k, trajectories_per_seed=s.trajectories_per_seed,
                checkpoint=samples_dir / f"md_{k}.pt", threads=cfg.threads or None,
                callback=md_callback)
            if sample.frames:
                write_structures(path, sample.frames)
            else:
                path.write_text("")
            write_json(record, {"temperature_K": temperature, "frames": len(sample.frames),
                                "trajectories": sample.n_trajectories,
                                "failed": sample.n_failed, "failures": sample.failures})
            (samples_dir / f"md_{k}.pt").unlink(missing_ok=True)
        md_counts.append(json.loads(record.read_text()))
        everything += _read(path)
    if progress and temperatures:
        progress("teacher MD", len(temperatures), len(temperatures))
    rng = np.random.default_rng(s.seed)
    rattled = sampling.rattled(seeds, s.rattle_sigmas_A, s.rattle_copies, rng)
    strained = sampling.strained(seeds, max_volume_strain=s.max_volume_strain,
                                 max_shear=s.max_shear, copies=s.strain_copies, rng=rng)
    for name, items in (("rattle", rattled), ("strain", strained)):
        if items:
            write_structures(samples_dir / f"{name}.extxyz", items)
    everything += rattled + strained
    if not everything:
        raise DataError("the sampling produced no snapshot (every MD trajectory failed and no "
                        "rattled or strained copies were asked for)")
    kept = (list(range(len(everything))) if s.dedup_threshold is None
            else sampling.deduplicate(everything, s.dedup_threshold))
    summary = {"temperatures_K": temperatures, "md": md_counts,
               "md_frames": sum(c["frames"] for c in md_counts),
               "md_failed_trajectories": sum(c["failed"] for c in md_counts),
               "md_trajectories": sum(c["trajectories"] for c in md_counts),
               "rattled": len(rattled), "strained": len(strained),
               "sampled": len(everything), "duplicates_removed": len(everything) - len(kept),
               "snapshots": len(kept)}
    write_structures(snapshots, [everything[k] for k in kept])
    write_json(summary_path, summary)
    return summary


def _read(path: Path) -> list[Atoms]:
    if not path.is_file() or path.stat().st_size == 0:
        return []
    import ase.io

    return list(ase.io.read(path, index=":"))


def _label_all(teacher: Potential, folder: Path, cfg: DistillConfig,
               identity: dict[str, str], progress: Progress | None) -> list[Atoms]:
    final = folder / "teacher_labels.extxyz"
    dropped_path = folder / "labels" / "dropped.json"
    if final.is_file() and dropped_path.is_file():
        return read_structures(final)
    snapshots = _read(folder / "snapshots.extxyz")
    parts_dir = output_folder(folder / "labels")
    labelled, dropped = [], []
    chunks = range(0, len(snapshots), cfg.label_chunk)
    teacher.eval()
    for n, start in enumerate(chunks):
        if progress:
            progress("teacher labels", start, len(snapshots))
        part = parts_dir / f"part-{n:04d}.extxyz"
        part_dropped = parts_dir / f"part-{n:04d}.dropped.json"
        if not (part.is_file() and part_dropped.is_file()):  # a finished chunk is kept
            chunk = snapshots[start:start + cfg.label_chunk]
            done, bad = label(teacher, chunk, batch_size=cfg.label_batch, identity=identity)
            if done:
                write_structures(part, done)
            else:
                part.write_text("")
            write_json(part_dropped, [start + k for k in bad])
        labelled += _read(part)
        dropped += json.loads(part_dropped.read_text())
    if progress:
        progress("teacher labels", len(snapshots), len(snapshots))
    if not labelled:
        raise DataError(f"the teacher gave no finite label for any of {len(snapshots)} "
                        "snapshots")
    write_structures(final, labelled)
    write_json(dropped_path, {"dropped": len(dropped), "indices": dropped})
    return read_structures(final)


def _train_student(labels: list[Atoms], split: dict[str, list[int]], run_dir: Path,
                   cfg: DistillConfig, elements: list[str], dft: Sequence[Atoms] | None,
                   teacher_name: str, progress: Progress | None) -> Path:
    from congener.models.checkpoint import build_potential
    from congener.training.data import LabelledSet
    from congener.training.trainer import fit

    model_path = run_dir / "model.pt"
    if model_path.is_file() and (run_dir / "result.json").is_file():
        return model_path
    train = [labels[k] for k in split["train"]]
    val = [labels[k] for k in split["val"]]
    weights = None
    if dft:
        weights = [1.0] * len(train) + [cfg.dft_weight] * len(dft)
        train = train + list(dft)
    torch.manual_seed(cfg.train.seed)
    student = build_potential(elements, cfg.model)
    tset = LabelledSet(train, student.cutoff, name="student training set", weights=weights)
    vset = LabelledSet(val, student.cutoff, name="held-out teacher labels (validation)")
    train_cfg = replace(cfg.train, threads=cfg.train.threads or cfg.threads)

    def callback(row: dict[str, float]) -> None:
        if progress:
            progress("student training", row["epoch"] + 1, train_cfg.epochs)

    result = fit(student, tset, vset, train_cfg, run_dir=run_dir,
                 metadata={"mode": "distilled", "teacher": str(teacher_name),
                           "dft_structures": len(dft or []), "dft_weight": cfg.dft_weight},
                 callback=callback)
    write_json(run_dir / "result.json",
               {"best_epoch": result.best_epoch, "best_val": result.best_val,
                "seconds": result.seconds})
    return model_path
