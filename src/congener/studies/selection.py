"""Choices a study makes, made on validation data only: the per-arm search.

The search trains every candidate setting (learning rate, decay, a grid of other train
settings: `HPOSpec.candidates`) of every arm at one training-set size on the first seed's
structures and scores it on validation data: the run's held-out validation set, or k-fold
cross-validation over its training and validation structures together (`hpo.folds`), where
each structure is judged once and the score is the mean over the folds. The score is the
validation loss, a validation MAE, or `balanced`: per arm, each candidate's energy MAE over the
arm's best energy MAE plus its force MAE over the best force MAE, so that neither term decides
alone where loss weights differ. A control arm (one that changes only the cutoff of another
arm, such as `scratch-rc`) is not searched: it takes the choice of the arm it controls, so that
the two differ in the cutoff alone. Search runs never read
the test set (`studies.run.run_one`); the learning-curve runs take the chosen settings and read
the test set once, after training, so every figure of the report comes from a protocol that
did not look at the test set. `selection_section` writes the protocol and the scores into the
report.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from congener.studies.config import RunSpec, StudyConfig

Settings = tuple[tuple[str, Any], ...]
Choice = tuple[float | None, float | None, Settings]  # (lr, decay, other train settings)
Choices = dict[str, Choice]  # arm -> its choice


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float | int) and not isinstance(value, bool) \
        else str(value)


def candidate_name(lr: float | None, decay: float | None, settings: Settings) -> str:
    """The part of a search run's name that says which candidate it trains."""
    parts = ([f"lr{lr:g}"] if lr is not None else []) + \
        ([f"decay{decay:g}"] if decay else []) + [f"{k}{_fmt(v)}" for k, v in settings]
    return "-".join(parts) or "base"


def arm_candidates(cfg: StudyConfig, arm_name: str) -> list[Choice]:
    """The candidates of one arm: an arm's own train overrides are kept (not searched)."""
    arm = cfg.arm(arm_name)
    out = []
    for lr, decay, settings in cfg.hpo.candidates():
        lr = None if "lr" in arm.train else lr
        settings = tuple((k, v) for k, v in settings if k not in arm.train)
        if (lr, decay, settings) not in out:
            out.append((lr, decay, settings))
    return out


def _folds(spec: RunSpec, k: int) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """k (train, validation) index splits of the run's training and validation structures."""
    pool = np.array(sorted(spec.train_idx + spec.val_idx))
    order = np.random.default_rng(3000 + spec.seed).permutation(len(pool))
    parts = np.array_split(pool[order], k)
    return [(tuple(sorted(int(i) for j, p in enumerate(parts) if j != f for i in p)),
             tuple(sorted(int(i) for i in parts[f]))) for f in range(k)]


def controlled(cfg: StudyConfig, arm_name: str) -> str | None:
    """The arm that `arm_name` controls (the same start without a cutoff of its own), if the
    study has it."""
    arm = cfg.arm(arm_name)
    if arm.cutoff is None:
        return None
    return next((a.name for a in cfg.arm_list() if a.start == arm.start and a.cutoff is None
                 and a.train == arm.train), None)


def plan_search(cfg: StudyConfig, base: Sequence[RunSpec]) -> list[RunSpec]:
    """Search runs from the first seed's learning-curve runs at `hpo.size` (`base`): one per
    arm, candidate and fold. Arms that do not train, or have one candidate, are not searched."""
    if cfg.hpo is None:
        return []
    runs = []
    for spec in base:
        arm = cfg.arm(spec.mode)
        candidates = arm_candidates(cfg, spec.mode)
        if arm.zero_shot or len(candidates) < 2 or controlled(cfg, spec.mode):
            continue
        splits = (_folds(spec, cfg.hpo.folds) if cfg.hpo.folds
                  else [(spec.train_idx, spec.val_idx)])
        for lr, decay, settings in candidates:
            for fold, (train, val) in enumerate(splits):
                name = f"hpo-{spec.mode}-{candidate_name(lr, decay, settings)}" + \
                    (f"-f{fold}" if cfg.hpo.folds else "")
                runs.append(replace(spec, name=name, kind="hpo", lr=lr, decay=decay,
                                    settings=settings, train_idx=train, val_idx=val,
                                    fold=fold if cfg.hpo.folds else None))
    return runs


def _value(res: dict[str, Any], metric: str) -> float:
    value = (res.get("val") or {}).get(metric, math.inf)
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else math.inf


def _metrics(metric: str) -> tuple[str, ...]:
    return ("val_energy_mae", "val_force_mae") if metric == "balanced" else (metric,)


def scores(cfg: StudyConfig, results: Sequence[tuple[RunSpec, dict[str, Any]]]
           ) -> dict[str, dict[Choice, float]]:
    """arm -> candidate -> its score: the mean over folds of the validation metric (for
    `balanced`, the sum of its energy and force MAE, each over the arm's best candidate's).
    A fold that never validated a finite value makes the candidate's score infinite."""
    names = _metrics(cfg.hpo.metric)
    raw: dict[str, dict[Choice, list[list[float]]]] = defaultdict(lambda: defaultdict(list))
    for spec, res in results:
        if spec.kind == "hpo":
            raw[spec.mode][(spec.lr, spec.decay, spec.settings)].append(
                [_value(res, m) for m in names])
    out: dict[str, dict[Choice, float]] = {}
    for arm, by_candidate in raw.items():
        means = {c: np.mean(np.asarray(v), axis=0) for c, v in by_candidate.items()}
        best = np.min(np.stack(list(means.values())), axis=0)
        best = np.where(np.isfinite(best) & (best > 0), best, 1.0)
        out[arm] = {c: float(np.sum(m / best)) if len(names) > 1 else float(m[0])
                    for c, m in means.items()}
    return out


def choose(cfg: StudyConfig, results: Sequence[tuple[RunSpec, dict[str, Any]]]) -> Choices:
    """Per arm, the candidate with the lowest score (`scores`; ties keep the first
    candidate); control arms take the choice of the arm they control."""
    chosen: Choices = {}
    for arm, by_candidate in scores(cfg, results).items():
        chosen[arm] = min(by_candidate, key=lambda c: by_candidate[c])
    for arm in cfg.arm_names():
        base = controlled(cfg, arm)
        if base in chosen:
            chosen[arm] = chosen[base]
    return chosen


def chosen_kwargs(choices: Choices | None, arm: str) -> dict[str, Any]:
    """RunSpec fields of an arm's choice (empty: the study's train section decides)."""
    if not choices or arm not in choices:
        return {}
    lr, decay, settings = choices[arm]
    return {"lr": lr, "decay": decay, "settings": settings}


def selection_section(cfg: StudyConfig, results: Sequence[tuple[RunSpec, dict[str, Any]]],
                      n_val: int) -> list[str]:
    """Markdown lines: the selection protocol and, when there was a search, its scores."""
    lines = ["## Selection protocol", ""]
    if cfg.hpo is None:
        lines += ["No search: every run uses the study's train section (and its arm's "
                  "overrides) as written. Each run keeps its epoch of lowest validation loss "
                  f"({n_val} held-out structures per seed) and reads the test set once, after "
                  "training; the ranking below reports test errors, it does not select.", ""]
        return lines
    h = cfg.hpo
    how = (f"{h.folds}-fold cross-validation over the first seed's {h.size} training and "
           f"{n_val} validation structures (each judged once; score: the mean over folds)"
           if h.folds else f"the first seed's {n_val} held-out validation structures")
    controls = {a: b for a in cfg.arm_names() if (b := controlled(cfg, a))}
    lines += [f"Every choice below was made at {h.size} training structures on {how}, by "
              f"`{h.metric}`; search runs never read the test set. Each learning-curve run "
              "takes its arm's choice, keeps its epoch of lowest validation loss and reads the "
              "test set once, after training."
              + "".join(f" {a} takes the choice of {b} (it differs in the cutoff alone)."
                        for a, b in controls.items()), ""]
    table = scores(cfg, results)
    if not table:
        return [*lines, "(no search run has finished)", ""]
    chosen = choose(cfg, results)
    folds = defaultdict(int)
    for spec, _ in results:
        if spec.kind == "hpo":
            folds[(spec.mode, (spec.lr, spec.decay, spec.settings))] += 1
    lines += [f"| arm | candidate | score ({h.metric}, mean over folds) | folds | chosen |",
              "|---|---|---|---|---|"]
    for arm, by_candidate in sorted(table.items()):
        for cand, score in by_candidate.items():
            mark = "**yes**" if cand == chosen[arm] else ""
            lines.append(f"| {arm} | {candidate_name(*cand)} | {score:.4g} | "
                         f"{folds[(arm, cand)]} | {mark} |")
    return [*lines, ""]
