"""Training configuration, validated once at the boundary."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from congener.bounds import check_float, check_int, check_seed
from congener.errors import ConfigError, first_line

LOSSES = ("mse", "huber")  # TrainConfig.loss: the paper's squared errors, or Huber terms
# the settings that shape the loss: validation losses under different values of these are not
# comparable (training.stages, the study's search)
LOSS_SHAPE = ("energy_weight", "force_weight", "stress_weight", "loss", "huber_delta")
REFS = ("refit", "train", "keep")  # TrainConfig.refs: what happens to the reference energies


@dataclass(frozen=True)
class TrainConfig:
    """How to train. Losses: the paper's force matching (Eq. 1) unless energy/stress weights > 0.

    energy_weight multiplies the per-atom energy MSE ((eV/atom)^2), force_weight the force
    MSE per component ((eV/Å)^2), stress_weight the stress MSE ((eV/Å³)^2 scaled to GPa^2).
    `loss="huber"` replaces each squared error by the Huber function with threshold
    `huber_delta`, in each term's unit (eV/atom, eV/Å, GPa): x^2/2 below it, linear above, so
    large errors pull less and the fit leans toward the median, which MAE measures.
    The learning rate decays exponentially from `lr` to `lr_final` over `epochs`.
    `warmup_steps` > 0 ramps the learning rate linearly up to its scheduled value over the
    first that many updates: a restarted Adam (fresh moments) otherwise moves every weight by
    about `lr` in its first steps, which knocks a trained model (a fine-tuning or a later
    stage) away from where it was.
    `ema_decay` > 0 keeps an exponential moving average of the weights (updated after every
    step, as in MACE and NequIP); validation, checkpoints and the final model then use it.
    `refs`: the per-element reference energies (Huang et al. 2025's elemental energy
    referencing): "refit" fits them by least squares on the training data before training and
    again to the kept weights after it; "train" fits them before and then lets them move with
    the weights (an energy term is needed for that); "keep" leaves the starting model's values
    (a foundation model's own references).
    """

    epochs: int = 100
    batch_size: int = 8
    lr: float = 1e-3
    lr_final: float = 1e-5
    energy_weight: float = 0.0
    force_weight: float = 1.0
    stress_weight: float = 0.0
    loss: str = "mse"  # "mse" (the paper's Eq. 1) or "huber"
    huber_delta: float = 0.01
    ema_decay: float = 0.0  # 0 = off; e.g. 0.99
    warmup_steps: int = 0  # updates over which the learning rate ramps up from 0; 0 = off
    patience: int = 0  # stop at a validation >= this many epochs after the best; 0 = never
    grad_clip: float = 10.0  # max gradient norm; 0 = off
    seed: int = 0
    dtype: str = "float32"
    device: str = "auto"
    threads: int = 0  # 0 = all cores
    val_every: int = 1  # validate every this many epochs (and at the last one)
    refs: str = "refit"  # reference energies: "refit", "train" or "keep"

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "val_every"):
            check_int(f"train.{name}", getattr(self, name), 1)
        for name in ("patience", "threads", "warmup_steps"):
            check_int(f"train.{name}", getattr(self, name), 0)
        check_seed("train.seed", self.seed)
        for name in ("lr", "lr_final"):  # Adam moves each weight by about lr per step
            check_float(f"train.{name}", getattr(self, name), 0.0, low_open=True)
            check_float(f"train.{name}", getattr(self, name), high=1.0)
        if self.lr_final > self.lr:
            raise ConfigError(f"train.lr_final ({self.lr_final:g}) must not exceed train.lr "
                              f"({self.lr:g}): the learning rate decays from lr to lr_final; "
                              "set lr_final too when lowering lr")
        for name in ("energy_weight", "force_weight", "stress_weight", "grad_clip"):
            check_float(f"train.{name}", getattr(self, name), 0.0)
        if self.energy_weight == 0 and self.force_weight == 0:
            raise ConfigError("train: energy_weight and force_weight cannot both be 0")
        if self.loss not in LOSSES:
            raise ConfigError(f"train.loss must be {' or '.join(LOSSES)} (got {self.loss!r})")
        check_float("train.huber_delta", self.huber_delta, 0.0, low_open=True)
        check_float("train.ema_decay", self.ema_decay, 0.0, 1.0, high_open=True)
        if self.refs not in REFS:
            raise ConfigError(f"train.refs must be {', '.join(REFS)} (got {self.refs!r})")
        if self.refs == "train" and self.energy_weight == 0:
            raise ConfigError("train.refs 'train' moves the reference energies with the energy "
                              "term: give energy_weight > 0 (or refs 'refit')")
        if self.dtype not in ("float32", "float64"):
            raise ConfigError(f"train.dtype must be float32 or float64 (got {self.dtype!r})")

    @property
    def force_only(self) -> bool:
        """The paper's mode: energy constants are fitted after training."""
        return self.energy_weight == 0

    @classmethod
    def from_dict(cls, values: dict[str, Any], section: str = "train") -> TrainConfig:
        """Build from a mapping, rejecting unknown keys and wrong types in one line."""
        return from_dict(cls, values, section)


def from_dict(cls: type, values: dict[str, Any] | None, section: str) -> Any:
    """Instantiate dataclass `cls` from a mapping with one-line errors for bad keys/types."""
    values = dict(values or {})
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"unknown key {section}.{unknown[0]} (known: {', '.join(known)})")
    for name, value in values.items():
        default = getattr(cls, name, None)
        if isinstance(default, bool) or default is None:
            continue
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            values[name] = float(value)
        elif isinstance(default, int | float | str) and not isinstance(value, type(default)):
            raise ConfigError(f"{section}.{name} must be {type(default).__name__} "
                              f"(got {value!r})")
    return cls(**values)


def read_mapping(path: str | Path) -> dict[str, Any]:
    """Read a YAML (.yaml/.yml) or TOML (.toml) file into a dict; `ConfigError` if unreadable."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no such config file: {path}")
    try:
        if path.suffix == ".toml":
            import tomllib

            data = tomllib.loads(path.read_text())
        else:
            import yaml

            data = yaml.safe_load(path.read_text()) or {}
    except Exception as exc:
        raise ConfigError(f"cannot parse {path}: {first_line(exc)}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    return data
