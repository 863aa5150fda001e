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
    arms: [{name: chgnet-ft, start: "chgnet:0.3.0", freeze: [first:3], refs: refit}, ...]
                                  # instead of modes: any start (studies.arms), zero-shot too
    budget: {updates: 150, min_epochs: 5, max_epochs: 150, validations: 15}
                                  # or {rule: converge, patience_updates: 300,
                                  #     updates_per_structure: 50, max_updates: 20000}
    model: {cutoff: 4.3}          # DimeNetConfig fields (a given source model must match)
    train: {lr: 0.001, ...}       # TrainConfig fields (the base of every run)
    source_train: {epochs: 25}    # TrainConfig overrides for the source model
    freeze: [embedding, interaction:0]   # used by the `frozen` mode
    soft_freeze: null             # a factor: `frozen` mode scales instead of freezing
    temperature: {temperature_K: 2000, sizes: [1]}  # transferability runs (optional)
    hpo: {size: 10, lr: [0.001, 0.003], decay: [0.1, 0.01],   # per-arm search on validation
          grid: {energy_weight: [10, 30]}, metric: val_force_mae, folds: 3}   # (optional)
    phonons: {runs: temperature, size: 1, reference: sw}  # DOS stage (null: off)
    md: {sizes: [10], trajectories: 2, temperature_K: 1200, timestep_fs: 0.5, steps: 400}
    distill: {arms: [sevennet-ft], size: 10, students: {default: {}}}  # studies.distill_stage
    workers: 2
    executor: {kind: slurm, partition: cpu, time_min: 120, cpus_per_task: 4}
                                  # where runs execute: local (default), slurm, ray
                                  # (studies.executors); not a fixed setting
    scaled_controls: true         # a scaled arm brings scratch-rc and transfer-rc (its cutoff)

Selection protocol: every choice the study makes (the search's settings per arm) is made on
validation data, held out or by k-fold cross-validation (`hpo.folds`); search runs never read
the test set; each learning-curve run reads it once, after training.

Data specifications: `sw:<El>` generates Stillinger-Weber data (quick preset, overridable
with `sw:<El>:paper`), `mlearn:<folder>` reads Zuo et al. training.json/test.json without
surfaces, anything else is a structure file (extended XYZ).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from congener.bounds import MAX_SEED, check_float, check_int, check_ints
from congener.errors import ConfigError
from congener.models.dimenet import MAX_Z, DimeNetConfig
from congener.studies.arms import Arm, arm_from_dict, builtin, check_arms, scaled_controls
from congener.studies.distill_stage import DistillStage
from congener.studies.executors import ExecutorSpec
from congener.studies.sections import (  # noqa: F401  (the sections, importable from here)
    HPO_METRICS,
    RUN_KINDS,
    Budget,
    HPOSpec,
    MDStage,
    PhononStage,
    SourceSpec,
    TargetSpec,
    TemperatureSpec,
    _check_text,
)
from congener.training.config import TrainConfig, from_dict, read_mapping


class Mode(StrEnum):
    """How a target model starts: random weights, all source weights, partly frozen, or all
    source weights after a corresponding-states scaling (`congener.training.scaling`)."""

    scratch = "scratch"
    transfer = "transfer"
    frozen = "frozen"
    scaled = "scaled"


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
    distill: DistillStage | None = None
    workers: int = 2
    arms: tuple[Arm, ...] = ()  # when given, the study's arms (`modes` is then unused)
    executor: ExecutorSpec = field(default_factory=ExecutorSpec)
    scaled_controls: bool = True  # a scaled arm brings scratch and transfer at its cutoff

    def __post_init__(self) -> None:
        _check_text("name", self.name)
        if not isinstance(self.arms, tuple) or not all(isinstance(a, Arm) for a in self.arms):
            raise ConfigError("arms must be a list of mappings with name and start")
        check_arms(self.arms)
        for key, kind in (("target", TargetSpec), ("source", SourceSpec), ("budget", Budget),
                          ("model", DimeNetConfig), ("train", TrainConfig),
                          ("source_train", TrainConfig), ("temperature", TemperatureSpec),
                          ("hpo", HPOSpec), ("phonons", PhononStage), ("md", MDStage),
                          ("distill", DistillStage), ("executor", ExecutorSpec)):
            value = getattr(self, key)
            if not (isinstance(value, kind) or (value is None and key in _OPTIONAL)):
                raise ConfigError(f"{key} must be a mapping of {kind.__name__} fields "
                                  f"(got {value!r})")
        object.__setattr__(self, "sizes", check_ints("sizes", self.sizes, 1,
                                                     what="positive integers"))
        object.__setattr__(self, "seeds", check_ints(
            "seeds", self.seeds, 0, MAX_SEED, what=f"integers in [0, {MAX_SEED}]"))
        object.__setattr__(self, "modes", _modes(self.modes))
        _check_mapping(self.mapping)
        if (isinstance(self.freeze, str) or not isinstance(self.freeze, tuple | list)
                or not all(isinstance(p, str) and p.strip() for p in self.freeze)):
            raise ConfigError(f"freeze must be a list of parameter parts such as embedding or "
                              f"interaction:0 (got {self.freeze!r})")
        object.__setattr__(self, "freeze", tuple(self.freeze))
        if any(a.start == "frozen" and not a.freeze for a in self.arm_list()) \
                and not self.freeze:
            raise ConfigError("freeze must name at least one part for the frozen mode")
        if self.soft_freeze is not None:
            check_float("soft_freeze", self.soft_freeze, 0.0, 1.0)
        check_int("workers", self.workers, 1)
        if not isinstance(self.scaled_controls, bool):
            raise ConfigError("scaled_controls must be true or false")
        check_arms(self.arm_list())
        if self.md is not None and self.md.arms is not None:
            unknown = sorted(set(self.md.arms) - set(self.arm_names()))
            if unknown:
                raise ConfigError(f"md.arms: the study has no arm {unknown[0]!r} (arms: "
                                  f"{', '.join(self.arm_names())})")
        if self.uses_source() and not (self.source.model or self.source.data):
            raise ConfigError("source: give a model or data for transfer modes")
        if self.target.val_size < 1:
            raise ConfigError("target.val_size must be >= 1")

    def arm_list(self) -> tuple[Arm, ...]:
        """The study's arms: `arms`, or the built-in arms of `modes`, and the cutoff controls
        of a `scaled` arm (`arms.scaled_controls`) unless `scaled_controls` is false."""
        arms = self.arms or tuple(builtin(str(m)) for m in self.modes)
        return arms + (scaled_controls(arms) if self.scaled_controls else ())

    def arm(self, name: str) -> Arm:
        """The arm called `name`; `ConfigError` if there is none."""
        for arm in self.arm_list():
            if arm.name == name:
                return arm
        raise ConfigError(f"the study has no arm {name!r}")

    def arm_names(self) -> list[str]:
        return [a.name for a in self.arm_list()]

    def uses_source(self) -> bool:
        """Whether some arm starts from the study's congener source model."""
        return any(a.uses_source for a in self.arm_list())

    def as_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)

    def stored(self) -> dict[str, Any]:
        """The settings as a study folder's config.json holds them (JSON types only)."""
        import json

        return json.loads(json.dumps(self.as_dict(), default=str))


_OPTIONAL = ("temperature", "hpo", "phonons", "md", "distill")


def _modes(values: Any) -> tuple[Mode, ...]:
    choices = ", ".join(Mode)
    try:
        if isinstance(values, str) or not isinstance(values, tuple | list) or not values:
            raise ValueError
        modes = tuple(Mode(m) for m in values)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"modes must list at least one of {choices} (got {values!r})") \
            from exc
    if len(set(modes)) != len(modes):
        raise ConfigError(f"modes lists a mode twice (got {[str(m) for m in modes]})")
    return modes


def _check_mapping(mapping: Any) -> None:
    """{source element: target element}: known chemical symbols, one source per target."""
    from ase.data import atomic_numbers

    if not isinstance(mapping, dict) or not mapping:
        raise ConfigError(f"mapping must map source elements to target elements, e.g. "
                          f"{{Si: Ge}} (got {mapping!r})")
    for symbol in (*mapping, *mapping.values()):
        if not isinstance(symbol, str) or not 1 <= atomic_numbers.get(symbol, 0) <= MAX_Z:
            raise ConfigError(f"mapping: {symbol!r} is not a chemical symbol (H to Pu)")
    targets = list(mapping.values())
    for target in targets:
        if targets.count(target) > 1:
            sources = sorted(s for s, t in mapping.items() if t == target)
            raise ConfigError(f"mapping: {', '.join(sources)} all map to {target}; one source "
                              "element per target")


_SECTIONS = {"target": TargetSpec, "source": SourceSpec, "budget": Budget,
             "model": DimeNetConfig, "train": TrainConfig, "source_train": TrainConfig,
             "temperature": TemperatureSpec, "hpo": HPOSpec, "phonons": PhononStage,
             "md": MDStage, "distill": DistillStage, "executor": ExecutorSpec}


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
            if value is None and key in _OPTIONAL:
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
            # one number (or one part name for freeze) stands for a list of one; anything
            # else that is not a list is left for StudyConfig to refuse
            single = (str if key == "freeze" else int)
            kwargs[key] = (tuple(value) if isinstance(value, list | tuple) else (value,)
                           if isinstance(value, single) and not isinstance(value, bool)
                           else value)
        elif key == "arms":
            if isinstance(value, str) or not isinstance(value, list | tuple) or not value:
                raise ConfigError(f"arms must be a non-empty list of mappings with name and "
                                  f"start (got {value!r})")
            if "modes" in values:
                raise ConfigError("give arms or modes, not both (a mode is the arm of its name)")
            kwargs[key] = tuple(arm_from_dict(v, k) if not isinstance(v, Arm) else v
                                for k, v in enumerate(value))
        elif key == "modes":
            if isinstance(value, str) or not isinstance(value, list | tuple):
                raise ConfigError(f"modes must be a list such as [scratch, transfer] "
                                  f"(got {value!r})")
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
    mode: str  # the arm's name (a former mode's name for the built-in arms)
    size: int
    seed: int
    train_idx: tuple[int, ...]
    val_idx: tuple[int, ...]
    lr: float | None = None
    decay: float | None = None  # lr_final / lr; None: the study's train section decides
    settings: tuple[tuple[str, Any], ...] = ()  # train settings chosen by the search
    fold: int | None = None  # the cross-validation fold of a search run


def spec_from_dict(values: dict[str, Any]) -> RunSpec:
    """Inverse of `dataclasses.asdict` for a RunSpec (used in worker processes)."""
    return RunSpec(**{**values, "mode": str(values["mode"]),
                      "train_idx": tuple(values["train_idx"]),
                      "val_idx": tuple(values["val_idx"]),
                      "settings": tuple(tuple(kv) for kv in values.get("settings", ()))})


def config_from_dict(values: dict[str, Any]) -> StudyConfig:
    """Rebuild a StudyConfig from `StudyConfig.as_dict()` (used in worker processes)."""
    values = dict(values)
    if values.get("arms"):
        values.pop("modes", None)  # arms replace modes
    else:
        values.pop("arms", None)
    return study_config(values)
