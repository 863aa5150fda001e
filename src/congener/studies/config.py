"""Study configuration: a validated, frozen description of a learning-curve experiment.

A YAML/TOML file has the sections below; every key is optional (defaults: the built-in
Stillinger-Weber Si -> Ge study that `congener study` runs with no file).

    name: sw-si-ge
    target: {data: "sw:Ge", test: null, test_size: 40, val_size: 5}
    source: {data: "sw:Si", model: null, val_size: 10}
    mapping: {Si: Ge}
    sizes: [1, 10, 50]
    seeds: [0, 1, 2]
    modes: [scratch, transfer]   # also: frozen, scaled (transfer from a corresponding-states start)
    budget: {updates: 150, min_epochs: 5, max_epochs: 150, validations: 15}
    model: {cutoff: 4.3}          # DimeNetConfig fields (a given source model must match)
    train: {lr: 0.001, ...}       # TrainConfig fields (the base of every run)
    source_train: {epochs: 25}    # TrainConfig overrides for the source model
    freeze: [embedding, interaction:0]   # used by the `frozen` mode
    soft_freeze: null             # a factor: `frozen` mode scales instead of freezing
    temperature: {temperature_K: 2000, sizes: [1]}  # transferability runs (optional)
    hpo: {size: 10, lr: [0.001, 0.003], decay: [0.1, 0.01]}  # per-mode search (optional)
    phonons: {runs: temperature, size: 1, reference: sw}  # DOS stage (null: off)
    md: {sizes: [10], trajectories: 2, temperature_K: 1200, timestep_fs: 0.5, steps: 400}
    workers: 2

Data specifications: `sw:<El>` generates Stillinger-Weber data (quick preset, overridable
with `sw:<El>:paper`), `mlearn:<folder>` reads Zuo et al. training.json/test.json without
surfaces, anything else is a structure file (extended XYZ).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from congener.errors import ConfigError
from congener.models.dimenet import DimeNetConfig
from congener.training.config import TrainConfig, from_dict, read_mapping


class Mode(StrEnum):
    """How a target model starts: random weights, all source weights, partly frozen, or all
    source weights after a corresponding-states scaling (`congener.training.scaling`)."""

    scratch = "scratch"
    transfer = "transfer"
    frozen = "frozen"
    scaled = "scaled"


@dataclass(frozen=True)
class TargetSpec:
    data: str = "sw:Ge"
    test: str | None = None
    test_size: int = 40
    val_size: int = 5


@dataclass(frozen=True)
class SourceSpec:
    data: str | None = "sw:Si"
    model: str | None = None
    val_size: int = 10


@dataclass(frozen=True)
class Budget:
    """Optimizer updates per run, converted to epochs per training-set size."""

    updates: int = 150
    min_epochs: int = 5
    max_epochs: int = 150
    validations: int = 15  # validations per run (validation every epochs/validations)

    def epochs(self, size: int, batch_size: int) -> int:
        per_epoch = -(-size // batch_size)
        return max(self.min_epochs, min(self.max_epochs, -(-self.updates // per_epoch)))


@dataclass(frozen=True)
class TemperatureSpec:
    temperature_K: float = 2000.0
    sizes: tuple[int, ...] = (1,)


@dataclass(frozen=True)
class HPOSpec:
    """Search per mode on the validation set (size `size`, first seed): initial learning rates
    `lr` and, optionally, decays `decay` (lr_final / lr; default: the train section's)."""

    size: int = 10
    lr: tuple[float, ...] = (1e-3, 3e-3)
    decay: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if not self.lr or min(self.lr) <= 0:
            raise ConfigError("hpo.lr must list positive learning rates")
        if self.decay is not None and (not self.decay or not all(0 < d <= 1 for d in self.decay)):
            raise ConfigError("hpo.decay must list ratios lr_final/lr in (0, 1]")


@dataclass(frozen=True)
class PhononStage:
    """Phonon DOS of the models of one kind of run and size, against a reference:
    `sw` (exact Stillinger-Weber through LAMMPS), `largest` (the largest transfer model of the
    learning curve) or a model path."""

    runs: str = "temperature"
    size: int = 1
    reference: str = "sw"


@dataclass(frozen=True)
class MDStage:
    """NVT MD of the learning-curve models of the given sizes from the hottest structure."""

    sizes: tuple[int, ...] = (10,)
    trajectories: int = 2
    temperature_K: float = 1200.0
    timestep_fs: float = 0.5
    steps: int = 400
    friction_per_ps: float = 1.0
    sample_every: int = 20


@dataclass(frozen=True)
class StudyConfig:
    name: str = "sw-si-ge"
    target: TargetSpec = field(default_factory=TargetSpec)
    source: SourceSpec = field(default_factory=SourceSpec)
    mapping: dict[str, str] = field(default_factory=lambda: {"Si": "Ge"})
    sizes: tuple[int, ...] = (1, 10, 50)
    seeds: tuple[int, ...] = (0, 1, 2)
    modes: tuple[Mode, ...] = (Mode.scratch, Mode.transfer)
    budget: Budget = field(default_factory=Budget)
    model: DimeNetConfig = field(default_factory=lambda: DimeNetConfig(cutoff=4.3))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        lr=3e-3, lr_final=3e-4, energy_weight=0.0, batch_size=4))
    source_train: TrainConfig = field(default_factory=lambda: TrainConfig(
        epochs=25, lr=3e-3, lr_final=3e-4, batch_size=4))
    freeze: tuple[str, ...] = ("embedding", "interaction:0")
    soft_freeze: float | None = None
    temperature: TemperatureSpec | None = field(default_factory=TemperatureSpec)
    hpo: HPOSpec | None = None
    phonons: PhononStage | None = field(default_factory=PhononStage)
    md: MDStage | None = field(default_factory=MDStage)
    workers: int = 2

    def __post_init__(self) -> None:
        if not self.sizes or min(self.sizes) < 1:
            raise ConfigError(f"sizes must be positive integers (got {list(self.sizes)})")
        if not self.seeds:
            raise ConfigError("seeds must list at least one seed")
        if self.workers < 1:
            raise ConfigError(f"workers must be >= 1 (got {self.workers})")
        uses_source = any(m != Mode.scratch for m in self.modes)
        if uses_source and not (self.source.model or self.source.data):
            raise ConfigError("source: give a model or data for transfer modes")
        if self.target.val_size < 1:
            raise ConfigError("target.val_size must be >= 1")

    def as_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)

    def stored(self) -> dict[str, Any]:
        """The settings as a study folder's config.json holds them (JSON types only)."""
        import json

        return json.loads(json.dumps(self.as_dict(), default=str))


_SECTIONS = {"target": TargetSpec, "source": SourceSpec, "budget": Budget,
             "model": DimeNetConfig, "train": TrainConfig, "source_train": TrainConfig,
             "temperature": TemperatureSpec, "hpo": HPOSpec, "phonons": PhononStage,
             "md": MDStage}


def study_config(values: dict[str, Any] | None = None) -> StudyConfig:
    """Build a `StudyConfig` from a mapping (sections merged over the defaults)."""
    values = dict(values or {})
    default = StudyConfig()
    known = set(StudyConfig.__dataclass_fields__)
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown study key {unknown[0]!r} (known: {', '.join(sorted(known))})")
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key in _SECTIONS:
            if value is None and key in ("temperature", "hpo", "phonons", "md"):
                kwargs[key] = None
                continue
            if not isinstance(value, dict):
                raise ConfigError(f"{key} must be a mapping (got {value!r})")
            base = getattr(default, key)
            merged = ({**base.__dict__, **value} if base is not None and key not in ("hpo",)
                      else value)
            merged = {k: tuple(v) if isinstance(v, list) else v for k, v in merged.items()}
            kwargs[key] = from_dict(_SECTIONS[key], merged, key)
        elif key in ("sizes", "seeds", "freeze"):
            kwargs[key] = tuple(value if isinstance(value, list | tuple) else [value])
        elif key == "modes":
            try:
                kwargs[key] = tuple(Mode(m) for m in value)
            except ValueError as exc:
                raise ConfigError(f"modes: {exc} (choose from {', '.join(Mode)})") \
                    from exc
        else:
            kwargs[key] = value
    return replace(default, **kwargs)


def load_study_config(path: str | Path | None) -> StudyConfig:
    """The built-in defaults, or a YAML/TOML study file merged over them."""
    return study_config(read_mapping(path) if path else {})


@dataclass(frozen=True)
class RunSpec:
    """One training run of the study (indices refer to `data/target_pool.extxyz`)."""

    name: str
    kind: str  # "curve", "temperature" or "hpo"
    mode: Mode
    size: int
    seed: int
    train_idx: tuple[int, ...]
    val_idx: tuple[int, ...]
    lr: float | None = None
    decay: float | None = None  # lr_final / lr; None: the study's train section decides


def spec_from_dict(values: dict[str, Any]) -> RunSpec:
    """Inverse of `dataclasses.asdict` for a RunSpec (used in worker processes)."""
    return RunSpec(**{**values, "mode": Mode(values["mode"]),
                      "train_idx": tuple(values["train_idx"]),
                      "val_idx": tuple(values["val_idx"])})


def config_from_dict(values: dict[str, Any]) -> StudyConfig:
    """Rebuild a StudyConfig from `StudyConfig.as_dict()` (used in worker processes)."""
    return study_config(values)
