"""The learning-curve study: sizes x seeds x modes, plus temperature-transferability runs.

Layout of a study folder:
    config.json              the resolved study configuration
    data/                    target pool and test set, source train/val (extended XYZ)
    source/                  the source model's training run (model.pt)
    runs/<name>/             one folder per run: config.json, checkpoints, metrics.json
    results.csv, report.md, *.png

Every run is independent and writes `metrics.json` last, so running the study again skips
finished runs and resumes interrupted ones from their checkpoints. A run that fails (a NaN
loss, unreadable data) writes `failed.json` instead; the others go on, the report lists it,
and the next invocation retries it.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Sequence
from concurrent.futures import as_completed
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from congener.data.split import nested_subsets, split_structures
from congener.data.structures import read_structures, write_structures
from congener.errors import ConfigError, CongenerError, DataError
from congener.files import folder_lock, write_json
from congener.parallel import worker_pool
from congener.runtime import available_cores
from congener.studies.config import RunSpec, StudyConfig, config_from_dict
from congener.studies.executors import Engine, run_on_engine
from congener.studies.preflight import preflight
from congener.studies.ranking import measure_speeds
from congener.studies.selection import (
    Choices,
    candidate_name,
    choose,
    chosen_kwargs,
    plan_search,
    selection_section,
)
from congener.studies.sources import load_spec

RunDone = Callable[["RunSpec", dict[str, Any]], None]

# Settings that decide what a finished run means; a study folder keeps them fixed. Sizes,
# seeds, modes, workers and the validation stages may change between invocations.
FIXED_SETTINGS = ("target", "source", "mapping", "model", "train", "source_train", "budget",
                  "hpo", "freeze", "soft_freeze")


def check_settings(cfg: StudyConfig, study_dir: Path) -> None:
    """Refuse to continue a study folder whose finished runs used other settings."""
    path = study_dir / "config.json"
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text())
    except ValueError:
        return  # unreadable: rewritten below; run folders carry their own configs
    # through the config classes, so that keys added in later versions get their defaults
    old_arms: dict[str, Any] = {}
    with contextlib.suppress(CongenerError):
        parsed = config_from_dict(old)
        old_arms = {a.name: asdict(a) for a in parsed.arm_list()}
        old = parsed.stored()
    new = cfg.stored()
    changed = [k for k in FIXED_SETTINGS if k in old and old[k] != new.get(k)]
    # arms may be added or left out later; an arm kept under its name must mean the same
    changed += [f"arm {a.name}" for a in cfg.arm_list()
                if a.name in old_arms and old_arms[a.name] != asdict(a)]
    if changed:
        raise ConfigError(f"{study_dir} holds a study with other settings ({', '.join(changed)}"
                          "); use another output folder (-o) or the same settings")


def prepare_data(cfg: StudyConfig, study_dir: Path, *, workers: int = 1,
                 progress: Callable[[str], None] | None = None) -> dict[str, Path]:
    """Materialise target pool/test and source train/val files once (skipped when present)."""
    data_dir = study_dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    paths = {k: data_dir / f"{k}.extxyz" for k in ("target_pool", "target_test",
                                                    "source_train", "source_val")}
    if not (paths["target_pool"].is_file() and paths["target_test"].is_file()):
        if progress:
            progress(f"target data: {cfg.target.data}")
        keys = cfg.target.label_keys()
        pool, test = load_spec(cfg.target.data, study_dir / "data" / "target.work", workers,
                               keys)
        if cfg.target.test:
            test = read_structures(cfg.target.test, keys=keys)
        if test is None:
            stratified = _has_temperature(pool)  # sizes then apply per temperature
            test_size = cfg.target.test_size / len(pool) if stratified else cfg.target.test_size
            parts = split_structures(pool, test=test_size, seed=12345,
                                     stratify="temperature" if stratified else None)
            pool, test = parts["train"], parts["test"]
        if not test or not pool:  # preflight refuses such plans; never keep an empty split
            raise DataError(f"the target data split into {len(pool)} pool and {len(test)} test "
                            "structures; both must hold some")
        write_structures(paths["target_test"], test)
        write_structures(paths["target_pool"], pool)
    needs_source = cfg.source.model is None and cfg.uses_source()
    if needs_source and not paths["source_train"].is_file():
        if progress:
            progress(f"source data: {cfg.source.data}")
        train, _ = load_spec(cfg.source.data, study_dir / "data" / "source.work", workers,
                             cfg.source.label_keys())
        parts = split_structures(train, val=cfg.source.val_size, seed=12345)
        write_structures(paths["source_val"], parts["val"])
        write_structures(paths["source_train"], parts["train"])
    return paths


def _has_temperature(structures: Sequence) -> bool:
    return all("temperature" in a.info for a in structures)


def plan_runs(cfg: StudyConfig, pool: Sequence, choices: Choices | None = None
              ) -> list[RunSpec]:
    """The study's runs: learning curve (nested subsets per seed) and temperature runs."""
    runs: list[RunSpec] = []
    n_pool = len(pool)
    if max(cfg.sizes) + cfg.target.val_size > n_pool:
        raise DataError(f"target pool has {n_pool} structures: too few for size "
                        f"{max(cfg.sizes)} plus {cfg.target.val_size} for validation")
    draws = {}
    for seed in cfg.seeds:
        perm = np.random.default_rng(1000 + seed).permutation(n_pool).tolist()
        val, rest = tuple(sorted(perm[:cfg.target.val_size])), perm[cfg.target.val_size:]
        draws[seed] = (val, nested_subsets(rest, cfg.sizes, seed=seed))
    for size in sorted(cfg.sizes):  # small sizes first: early partial results span all seeds
        for seed in cfg.seeds:
            val, subsets = draws[seed]
            for mode in cfg.arm_names():
                runs.append(RunSpec(f"{mode}-n{size}-s{seed}", "curve", mode, size, seed,
                                    tuple(subsets[size]), val,
                                    **chosen_kwargs(choices, mode)))
    if cfg.temperature is not None:
        runs += _temperature_runs(cfg, pool, choices)
    return runs


def _temperature_runs(cfg: StudyConfig, pool: Sequence, choices: Choices | None
                      ) -> list[RunSpec]:
    spec = cfg.temperature
    temps = np.array([float(a.info.get("temperature", np.nan)) for a in pool])
    if not np.isfinite(temps).any():
        raise DataError("temperature runs need structures with a temperature")
    nearest = temps[np.nanargmin(np.abs(temps - spec.temperature_K))]
    at_t = np.flatnonzero(temps == nearest).tolist()
    n_val = min(cfg.target.val_size, max(1, len(at_t) - max(spec.sizes)))
    if max(spec.sizes) + n_val > len(at_t):
        raise DataError(f"only {len(at_t)} pool structures at {nearest:.0f} K: too few for "
                        f"size {max(spec.sizes)} plus validation")
    runs = []
    for seed in cfg.seeds:
        perm = [at_t[k] for k in np.random.default_rng(2000 + seed).permutation(len(at_t))]
        val, rest = tuple(sorted(perm[:n_val])), perm[n_val:]
        subsets = nested_subsets(rest, spec.sizes, seed=seed)
        for size in spec.sizes:
            for mode in cfg.arm_names():
                runs.append(RunSpec(f"T{nearest:.0f}-{mode}-n{size}-s{seed}", "temperature",
                                    mode, size, seed, tuple(subsets[size]), val,
                                    **chosen_kwargs(choices, mode)))
    return runs


def plan_hpo(cfg: StudyConfig, pool: Sequence) -> list[RunSpec]:
    """Search runs (`studies.selection`): per arm, candidate and fold, at `hpo.size` on the
    first seed's structures."""
    if cfg.hpo is None:
        return []
    probe = replace(cfg, sizes=(cfg.hpo.size,), seeds=cfg.seeds[:1], temperature=None)
    return plan_search(cfg, plan_runs(probe, pool))


def execute(cfg: StudyConfig, study_dir: Path, specs: Sequence[RunSpec], *,
            on_done: RunDone | None = None) -> list[tuple[RunSpec, dict[str, Any]]]:
    """Run `specs` (finished ones are read back), in parallel over `cfg.workers` processes or
    on the engine of `cfg.executor` (Slurm, Ray: `congener.studies.executors`)."""
    from congener.studies.run import run_one

    results, pending = [], []

    def done(spec: RunSpec, res: dict[str, Any] | None, error: BaseException | None) -> None:
        if error is not None:  # recorded and skipped: one bad run must not stop the study
            _record_failure(study_dir, spec, error)
            return
        results.append((spec, res))
        if on_done:
            on_done(spec, res)

    for spec in specs:
        res = _finished_metrics(study_dir, spec)
        if res is not None:
            results.append((spec, res))
            if on_done:
                on_done(spec, res)
        else:
            pending.append(spec)
    cfg_dict = cfg.as_dict()
    if cfg.executor.kind != Engine.local and pending:
        run_on_engine(cfg.executor, study_dir, cfg_dict, pending, done)
        return results
    if cfg.workers == 1 or len(pending) <= 1:
        for spec in pending:
            try:
                res, error = run_one(str(study_dir), cfg_dict, asdict(spec), threads=0), None
            except Exception as exc:
                res, error = None, exc
            done(spec, res, error)
        return results
    threads = max(1, available_cores() // cfg.workers)
    with worker_pool(cfg.workers) as pool:  # workers die with this process
        futures = {pool.submit(run_one, str(study_dir), cfg_dict, asdict(s), threads): s
                   for s in pending}
        for future in as_completed(futures):
            error = future.exception()
            done(futures[future], None if error else future.result(), error)
    return results


def _record_failure(study_dir: Path, spec: RunSpec, error: BaseException) -> None:
    from congener.studies.run import write_json

    run_dir = study_dir / "runs" / spec.name
    run_dir.mkdir(parents=True, exist_ok=True)
    kind = "" if isinstance(error, CongenerError) else f"{type(error).__name__}: "
    write_json(run_dir / "failed.json", {"run": spec.name, "error": f"{kind}{error}"})


def failures(study_dir: Path, specs: Sequence[RunSpec]) -> dict[str, str]:
    """Run name -> error message, for the runs of `specs` whose last attempt failed."""
    out = {}
    for spec in specs:
        path = study_dir / "runs" / spec.name / "failed.json"
        if path.is_file() and not (path.parent / "metrics.json").is_file():
            try:
                out[spec.name] = json.loads(path.read_text())["error"]
            except (ValueError, KeyError):
                out[spec.name] = "unreadable failed.json"
    return out


def _finished_metrics(study_dir: Path, spec: RunSpec) -> dict[str, Any] | None:
    """The metrics of a finished run (its metrics.json is written last), else None."""
    done = study_dir / "runs" / spec.name / "metrics.json"
    try:
        return json.loads(done.read_text()) if done.is_file() else None
    except ValueError:  # a truncated file (killed while writing): run it again
        return None


def finished(study_dir: Path, specs: Sequence[RunSpec]) -> list[tuple[RunSpec, dict[str, Any]]]:
    """The runs of `specs` that have finished (their metrics.json exists)."""
    found = ((spec, _finished_metrics(study_dir, spec)) for spec in specs)
    return [(spec, res) for spec, res in found if res is not None]


def report_only(cfg: StudyConfig, study_dir: str | Path) -> tuple[Path, int]:
    """Write the report from the runs finished so far (no training); returns (path, count)."""
    study_dir = Path(study_dir)
    if not (study_dir / "data" / "target_pool.extxyz").is_file():
        raise DataError(f"{study_dir} holds no study data yet")
    with folder_lock(study_dir, f"study {study_dir}"):  # not while a run writes its files
        return _report_only(cfg, study_dir)


def _report_only(cfg: StudyConfig, study_dir: Path) -> tuple[Path, int]:
    from congener.studies.report import write_report

    check_settings(cfg, study_dir)  # a report under the study's own settings, not the defaults
    pool = read_structures(study_dir / "data" / "target_pool.extxyz")
    searched = finished(study_dir, plan_hpo(cfg, pool))
    specs = plan_runs(cfg, pool, choose(cfg, searched) if searched else None)
    results = finished(study_dir, specs)
    source = study_dir / "source" / "metrics.json"
    src = json.loads(source.read_text()) if source.is_file() else None
    extra = "\n".join(_stages(cfg, study_dir, results, cached_only=True))
    speeds = measure_speeds(study_dir, results, cached_only=True)
    return write_report(cfg, study_dir, results, src, extra=extra,
                        failed=failures(study_dir, specs), speeds=speeds,
                        selection=selection_section(cfg, searched, cfg.target.val_size)
                        ), len(results)


def _stages(cfg: StudyConfig, study_dir: Path, results: Sequence[tuple[RunSpec, dict[str, Any]]],
            log: Callable[[str], None] | None = None, cached_only: bool = False) -> list[str]:
    """The report sections of the phonon, MD and distillation stages (from their caches with
    `cached_only`)."""
    from congener.studies.distill_stage import distill_stage
    from congener.studies.validation import md_stage, phonon_stage

    sections = []
    if cfg.phonons is not None:
        sections.append(phonon_stage(cfg, study_dir, results, log, cached_only))
    if cfg.md is not None:
        sections.append(md_stage(cfg, study_dir, results, log, cached_only))
    if cfg.distill is not None:
        sections.append(distill_stage(cfg.distill, study_dir, results, log, cached_only))
    return [s for s in sections if s]


def run_study(cfg: StudyConfig, study_dir: str | Path, *,
              log: Callable[[str], None] | None = None, on_done: RunDone | None = None,
              on_epoch: Callable[[dict[str, float]], None] | None = None,
              on_start: Callable[[str, int], None] | None = None) -> Path:
    """Run the whole study (data, source model, HPO, learning curve, temperature runs) and
    write the report. Rerunning skips what is finished. Returns the path of report.md.

    Callbacks: `log(message)`; `on_start(phase, n_runs)` before the runs of a phase
    ("search", "runs"); `on_done(spec, metrics)` per run (finished ones too, read back);
    `on_epoch(row)` per epoch of the source model."""
    from congener.studies.run import check_source_architecture

    study_dir = Path(study_dir)
    if cfg.source.model and cfg.uses_source():
        check_source_architecture(cfg)  # before any settings are stored
    with folder_lock(study_dir, f"study {study_dir}"):
        check_settings(cfg, study_dir)
        preflight(cfg, study_dir)  # the plan against the data, before anything runs
        write_json(study_dir / "config.json", cfg.stored())
        return _run_locked(cfg, study_dir, log, on_done, on_epoch, on_start)


def _run_locked(cfg: StudyConfig, study_dir: Path, log: Callable[[str], None] | None,
                on_done: RunDone | None, on_epoch: Callable[[dict[str, float]], None] | None,
                on_start: Callable[[str, int], None] | None) -> Path:
    from congener.studies.report import write_report
    from congener.studies.run import train_source

    say = log or (lambda _msg: None)
    prepare_data(cfg, study_dir, workers=max(cfg.workers, available_cores()), progress=say)
    source = {}
    if cfg.uses_source():
        say(f"source model: {cfg.source.model or 'training on ' + str(cfg.source.data)}")
        source = train_source(cfg, study_dir, callback=on_epoch)
    pool = read_structures(study_dir / "data" / "target_pool.extxyz")
    choices, searched = None, []
    hpo = plan_hpo(cfg, pool)
    if hpo:
        say(f"search on validation data: {len(hpo)} runs")
        if on_start:
            on_start("search", len(hpo))
        searched = execute(cfg, study_dir, hpo, on_done=on_done)
        choices = choose(cfg, searched)
        say("chosen on validation: " + ", ".join(f"{m} {candidate_name(*c)}"
                                                 for m, c in choices.items()))
    specs = plan_runs(cfg, pool, choices)
    where = (f"{cfg.workers} worker{'s' * (cfg.workers > 1)}" if cfg.executor.kind == Engine.local
             else f"on {cfg.executor.kind}")
    say(f"{len(specs)} runs ({where})")
    if on_start:
        on_start("runs", len(specs))
    results = execute(cfg, study_dir, specs, on_done=on_done)
    failed = failures(study_dir, [*hpo, *specs])
    selection = selection_section(cfg, searched, cfg.target.val_size)
    # stages may take long
    write_report(cfg, study_dir, results, source, failed=failed, selection=selection)
    speeds = measure_speeds(study_dir, results, say)
    report = write_report(cfg, study_dir, results, source,
                          extra="\n".join(_stages(cfg, study_dir, results, say)), failed=failed,
                          speeds=speeds, selection=selection)
    if failed:
        names = ", ".join(sorted(failed)[:5]) + (", ..." if len(failed) > 5 else "")
        raise CongenerError(f"{len(failed)} run(s) failed ({names}): {report} covers the "
                            "others; each failed run's folder holds failed.json with the "
                            "error; run the study again to retry them")
    return report
