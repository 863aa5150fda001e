"""Multi-stage training whose stopping stage is chosen on validation data.

A chain of stages (force matching, then energy + force, then more of the same at a lower
learning rate ...) is how the best single models are trained; when to stop the chain is a
choice, and like every choice it is made on validation data, never on the test set. Each stage
starts from the model the previous stage kept (its best validated epoch), trains in its own
folder (`stage-<k>/`, resumable like any run), and is scored on the validation set by
`metric`. The chain stops after `patience` stages without a better score (or when the stages
run out), and the stage with the best score is the result: `model.pt` of the chain folder,
recorded with every stage's scores in `stages.json`. Losses of stages with other loss weights
are not comparable, so such chains are scored by a validation MAE.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from congener import files
from congener.errors import ConfigError
from congener.models.checkpoint import load_potential, save_potential
from congener.models.potential import Potential
from congener.training.config import LOSS_SHAPE, TrainConfig
from congener.training.data import LabelledSet
from congener.training.trainer import Callback, fit, validate

METRICS = ("val_loss", "val_force_mae", "val_energy_mae")


@dataclass
class StagesResult:
    """Every finished stage's validation scores, and the stage chosen (0-based)."""

    stages: list[dict[str, Any]] = field(default_factory=list)
    chosen: int = -1
    metric: str = "val_force_mae"
    stopped_by: str = ""  # "patience" or "stages" (all ran)

    def as_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "chosen": self.chosen, "stopped_by": self.stopped_by,
                "stages": self.stages}


def check_stages(stages: Sequence[TrainConfig], metric: str, patience: int) -> None:
    """Refuse a chain that cannot be judged: no stage, an unknown metric, a loss metric across
    stages whose loss weights differ, patience below 1."""
    if not stages:
        raise ConfigError("stages: give at least one stage")
    if metric not in METRICS:
        raise ConfigError(f"stages: metric must be one of {', '.join(METRICS)} (got {metric!r})")
    if patience < 1:
        raise ConfigError(f"stages: patience must be >= 1 (got {patience})")
    if metric == "val_loss":
        shapes = {tuple(getattr(s, k) for k in LOSS_SHAPE) for s in stages}
        if len(shapes) > 1:
            raise ConfigError("stages: the loss weights differ between stages, so their "
                              "validation losses are not comparable; give metric "
                              "val_force_mae or val_energy_mae")


def _score(scores: dict[str, float], metric: str) -> float:
    value = scores.get(metric, math.inf)
    return float(value) if math.isfinite(value) else math.inf


def train_stages(potential: Potential, train: LabelledSet, val: LabelledSet,
                 stages: Sequence[TrainConfig], run_dir: str | Path, *,
                 metric: str = "val_force_mae", patience: int = 1,
                 metadata: dict[str, Any] | None = None, callback: Callback | None = None,
                 on_stage: Callable[[int, dict[str, Any]], None] | None = None
                 ) -> StagesResult:
    """Train `stages` one after another from `potential` (see module doc); on return
    `potential` holds the chosen stage's weights and `run_dir/model.pt` is that model.
    Rerunning resumes: finished stages are read back, an interrupted one continues."""
    check_stages(stages, metric, patience)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    record = run_dir / "stages.json"
    done: list[dict[str, Any]] = []
    if record.is_file():
        done = json.loads(record.read_text()).get("stages", [])
    result = StagesResult(metric=metric)
    best, since = math.inf, 0
    for k, cfg in enumerate(stages):
        stage_dir = run_dir / f"stage-{k}"
        if k < len(done) and (stage_dir / "model.pt").is_file():
            row = done[k]
            current = load_potential(stage_dir / "model.pt")
            potential.load_state_dict(current.state_dict())
        else:
            res = fit(potential, train, val, cfg, run_dir=stage_dir, callback=callback,
                      metadata={**(metadata or {}), "stage": k})
            scores = validate(potential, val, cfg)  # the kept weights, after the refit
            row = {"stage": k, **{m: float(scores[m]) for m in METRICS},
                   "epochs": len(res.history), "seconds": res.seconds,
                   "lr": cfg.lr, "lr_final": cfg.lr_final, "energy_weight": cfg.energy_weight,
                   "stress_weight": cfg.stress_weight}
            done = [*done[:k], row]
            files.write_json(record, {**result.as_dict(), "stages": done})
        result.stages.append(row)
        if on_stage:
            on_stage(k, row)
        score = _score(row, metric)
        if score < best:
            best, since, result.chosen = score, 0, k
        else:
            since += 1
            if since >= patience:
                result.stopped_by = "patience"
                break
    result.stopped_by = result.stopped_by or "stages"
    if result.chosen < 0:
        raise ConfigError(f"stages: no stage reached a finite {metric} on validation")
    chosen = load_potential(run_dir / f"stage-{result.chosen}" / "model.pt")
    potential.load_state_dict(chosen.state_dict())
    save_potential(run_dir / "model.pt", potential,
                   {**(metadata or {}), "stages": len(result.stages), "chosen_stage":
                    result.chosen, "chosen_by": metric})
    files.write_json(record, result.as_dict())
    return result


def read_stages(path: str | Path, base: TrainConfig) -> tuple[list[TrainConfig], str, int]:
    """Stages from a YAML/TOML file: `stages` (a list of train settings, each over `base`),
    `repeat_last` (more copies of the last stage: a chain that validation may stop early),
    `metric` and `patience`. Returns (stages, metric, patience)."""
    from dataclasses import asdict

    from congener.training.config import from_dict, read_mapping

    values = read_mapping(path)
    unknown = sorted(set(values) - {"stages", "repeat_last", "metric", "patience"})
    if unknown:
        raise ConfigError(f"{path}: unknown key {unknown[0]!r} (known: stages, repeat_last, "
                          "metric, patience)")
    listed = values.get("stages")
    if not isinstance(listed, list) or not all(isinstance(s, dict) for s in listed):
        raise ConfigError(f"{path}: stages must be a list of train settings")
    repeat = values.get("repeat_last", 0)
    if not isinstance(repeat, int) or isinstance(repeat, bool) or repeat < 0:
        raise ConfigError(f"{path}: repeat_last must be an integer >= 0 (got {repeat!r})")
    stages = [from_dict(TrainConfig, {**asdict(base), **s}, f"stages[{k}]")
              for k, s in enumerate(listed)]
    stages += stages[-1:] * repeat
    metric, patience = values.get("metric", "val_force_mae"), values.get("patience", 1)
    if not isinstance(patience, int) or isinstance(patience, bool):
        raise ConfigError(f"{path}: patience must be an integer (got {patience!r})")
    check_stages(stages, metric, patience)
    return stages, metric, patience
