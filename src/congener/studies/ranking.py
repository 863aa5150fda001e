"""The arms ranked at each training size, with the price of their accuracy.

For every arm and size: test energy and force MAE (mean ± std over seeds), per-seed wins
against the `scratch` arm on the same training set, the time and updates to train a run, and
the arm's energy+forces time per structure and MD steps/s. Speed is measured once per arm on
the model of its largest size and first seed (`speed_of`, cached in `speed/<arm>.json`), on the
first test structure, in this process: compare arms within one report, not across machines.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from congener.errors import CongenerError
from congener.studies.config import RunSpec, StudyConfig

Log = Callable[[str], None]


def speed_of(model_path: Path, structure: Any, *, reps: int = 5, md_steps: int = 20
             ) -> dict[str, float]:
    """Energy+forces time (ms per structure, median of `reps` after a warm-up) and MD
    steps/s (one Langevin trajectory at 300 K, 1 fs) of the model in `model_path`."""
    import torch

    from congener.graph import build_graph
    from congener.models.checkpoint import load_potential
    from congener.simulation.md import run_md

    potential = load_potential(model_path)
    times = []
    for _ in range(reps + 1):
        start = time.perf_counter()
        graph = build_graph(structure, potential.cutoff).to(dtype=torch.float32)
        potential(graph)
        times.append(time.perf_counter() - start)
    def md_seconds(steps: int) -> float:  # a speed, not a stability test: checks off
        start = time.perf_counter()
        run_md(potential, [structure.copy()], temperature_K=300.0, timestep_fs=1.0,
               steps=steps, seed=0, sample_every=steps, stability_check=False)
        return time.perf_counter() - start

    # the difference of two runs leaves out the set-up (first graph, first forces)
    per_step = (md_seconds(md_steps + 2) - md_seconds(2)) / md_steps
    return {"ef_ms": 1000 * float(np.median(times[1:])),
            "md_steps_per_s": 1.0 / per_step if per_step > 0 else float("nan"),
            "n_atoms": len(structure), "threads": torch.get_num_threads()}


def measure_speeds(study_dir: Path, results: Sequence[tuple[RunSpec, dict[str, Any]]],
                   log: Log | None = None, cached_only: bool = False
                   ) -> dict[str, dict[str, float]]:
    """Arm -> speed (see `speed_of`), measured on each arm's largest-size, first-seed model."""
    from congener.data.structures import read_structures
    from congener.studies.run import write_json

    chosen: dict[str, RunSpec] = {}
    for spec, _ in results:
        if spec.kind != "curve":
            continue
        best = chosen.get(spec.mode)
        if best is None or (spec.size, -spec.seed) > (best.size, -best.seed):
            chosen[spec.mode] = spec
    out, structure = {}, None
    for arm, spec in sorted(chosen.items()):
        path = study_dir / "speed" / f"{arm}.json"
        if path.is_file():
            try:
                cached = json.loads(path.read_text())
                if cached.get("run") == spec.name:  # a larger size came since: measure again
                    out[arm] = cached
                    continue
            except ValueError:
                pass  # cut off: measure again
        model = study_dir / "runs" / spec.name / "model.pt"
        if cached_only or not model.is_file():
            continue
        if structure is None:
            structure = read_structures(study_dir / "data" / "target_test.extxyz")[0]
        if log:
            log(f"speed of {arm} ({spec.name})")
        try:
            out[arm] = speed_of(model, structure) | {"run": spec.name}
        except CongenerError as exc:  # recorded, not fatal: the errors are the study's result
            out[arm] = {"run": spec.name, "error": str(exc)}
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, out[arm])
    return out


def _fmt(values: list[float], digits: int) -> str:
    v = np.asarray(values, dtype=float)
    if not len(v):
        return ""
    std = float(v.std(ddof=1)) if len(v) > 1 else 0.0
    return f"{v.mean():.{digits}f} ± {std:.{digits}f}"


def validation_pick(val_f: dict[str, list[float]], val_e: dict[str, list[float]] | None = None
                    ) -> str | None:
    """The arm with the lowest mean validation force MAE, or with `val_e` the lowest balanced
    score (energy MAE over the best arm's plus force MAE over the best arm's, as the search's
    `balanced`); arms without finite values are passed over."""
    def means(values: dict[str, list[float]]) -> dict[str, float]:
        return {a: float(np.mean(v)) for a, v in values.items() if v and np.all(np.isfinite(v))}

    f = means(val_f)
    if val_e is not None:
        e = means(val_e)
        both = set(f) & set(e)
        if not both:
            return None
        best_e, best_f = min(e[a] for a in both), min(f[a] for a in both)
        score = {a: e[a] / (best_e or 1.0) + f[a] / (best_f or 1.0) for a in both}
        return min(sorted(both), key=lambda a: score[a])
    return min(f, key=lambda a: f[a]) if f else None


def ranking_section(cfg: StudyConfig, results: Sequence[tuple[RunSpec, dict[str, Any]]],
                    speeds: dict[str, dict[str, float]]) -> list[str]:
    """Markdown lines: per size, the arms ranked by mean test force MAE (see module doc)."""
    runs: dict[tuple[int, str], dict[int, dict[str, Any]]] = defaultdict(dict)
    for spec, res in results:
        if spec.kind == "curve":
            runs[(spec.size, spec.mode)][spec.seed] = res
    if len({arm for _, arm in runs}) < 2:
        return []
    balanced = cfg.hpo is not None and cfg.hpo.metric == "balanced"
    lines = ["## Arms ranked at each size", "",
             "Test errors (mean ± std over seeds), ranked by force MAE; wins: seeds on which "
             "the arm beats `scratch` on the same training set (energy, force); train: "
             "seconds and optimizer updates per run (0 for zero-shot); E+F: milliseconds per "
             "energy+forces of one test structure; MD: steps/s of one trajectory (the arm's "
             "largest model, this machine, measured once per arm); stopped by: patience "
             "(validation stopped improving), cap (the converge budget's ceiling, flagged (!): "
             "maybe not converged), budget (fixed updates) or zero-shot; val F: validation force "
             "MAE (the seed's held-out structures, the same for every arm). The ranking reads "
             "the test set, after every choice was made: it reports, it does not select. The "
             "arm a user should take is the one the validation data pick, named under each "
             "table.", ""]
    for size in sorted({s for s, _ in runs}):
        arms = [a for s, a in runs if s == size]
        mean_f = {a: np.mean([r["test"]["force_mae"] for r in runs[(size, a)].values()])
                  for a in arms}
        lines += [f"### {size} training structures", "",
                  "| rank | arm | seeds | E MAE (meV/atom) | F MAE (eV/Å) | val F (eV/Å) | "
                  "wins vs scratch (E, F) | train (s) | updates | stopped by | E+F (ms) | "
                  "MD (steps/s) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        scratch = runs.get((size, "scratch"), {})
        val_f = {a: [(r.get("val") or {}).get("val_force_mae", np.nan)
                     for r in runs[(size, a)].values()] for a in arms}
        val_e = {a: [(r.get("val") or {}).get("val_energy_mae", np.nan)
                     for r in runs[(size, a)].values()] for a in arms}
        for rank, arm in enumerate(sorted(arms, key=lambda a: mean_f[a]), 1):
            by_seed = runs[(size, arm)]
            e = [r["test"]["energy_mae"] for r in by_seed.values()]
            f = [r["test"]["force_mae"] for r in by_seed.values()]
            common = sorted(set(by_seed) & set(scratch)) if arm != "scratch" else []
            wins = ""
            if common:
                we = sum(by_seed[s]["test"]["energy_mae"] < scratch[s]["test"]["energy_mae"]
                         for s in common)
                wf = sum(by_seed[s]["test"]["force_mae"] < scratch[s]["test"]["force_mae"]
                         for s in common)
                wins = f"{we}/{len(common)}, {wf}/{len(common)}"
            secs = np.mean([r.get("seconds", 0.0) for r in by_seed.values()])
            updates = np.mean([r.get("updates", np.nan) for r in by_seed.values()])
            sp = speeds.get(arm, {})
            ef = f"{sp['ef_ms']:.0f}" if "ef_ms" in sp else ""
            md = f"{sp['md_steps_per_s']:.1f}" if "md_steps_per_s" in sp else ""
            upd = "" if np.isnan(updates) else f"{updates:.0f}"
            stops = [r.get("stopped", "") for r in by_seed.values()]
            stop = ", ".join(f"{k} {stops.count(k)}/{len(stops)}" + (" (!)" if k == "cap" else "")
                             for k in dict.fromkeys(stops) if k)
            lines.append(f"| {rank} | {arm} | {len(by_seed)} | {_fmt(e, 2)} | {_fmt(f, 4)} | "
                         f"{_fmt(val_f[arm], 4)} | {wins} | {secs:.0f} | {upd} | {stop} | {ef} | "
                         f"{md} |")
        pick = validation_pick(val_f, val_e if balanced else None)
        if pick:
            tests = [r["test"] for r in runs[(size, pick)].values()]
            how = ("lowest balanced score of the mean validation energy and force MAE, each over "
                   "the best arm's, as the search chose" if balanced else
                   "lowest mean validation force MAE over its seeds")
            lines += ["", f"Validation picks **{pick}** ({how}); its test errors: E "
                      f"{_fmt([t['energy_mae'] for t in tests], 2)} meV/atom, F "
                      f"{_fmt([t['force_mae'] for t in tests], 4)} eV/Å."]
        lines.append("")
    return lines
