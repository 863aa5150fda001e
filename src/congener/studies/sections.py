"""The sections of a study configuration (`congener.studies.config`): target and source data,
budget, temperature runs, the search on validation data, the phonon and MD stages. Each is a
frozen dataclass that checks its values on construction (one-line `ConfigError`s)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from congener.bounds import check_float, check_floats, check_int, check_ints
from congener.errors import ConfigError
from congener.simulation.md import MAX_TEMPERATURE_K
from congener.simulation.md import check_settings as check_md_settings
from congener.training.config import LOSS_SHAPE, TrainConfig, from_dict

RUN_KINDS = ("curve", "temperature", "hpo")  # RunSpec.kind


@dataclass(frozen=True)
class TargetSpec:
    data: str = "sw:Ge"
    test: str | None = None
    test_size: int = 40
    val_size: int = 5
    keys: dict[str, str] | None = None  # label keys of a data file (data.formats.LabelKeys)

    def __post_init__(self) -> None:
        _check_text("target.data", self.data)
        _check_text("target.test", self.test, optional=True)
        check_int("target.test_size", self.test_size, 1)
        check_int("target.val_size", self.val_size, 1)
        _label_keys(self.keys, "target.keys")

    def label_keys(self):
        return _label_keys(self.keys, "target.keys")


@dataclass(frozen=True)
class SourceSpec:
    data: str | None = "sw:Si"
    model: str | None = None
    val_size: int = 10
    keys: dict[str, str] | None = None  # label keys of a data file (data.formats.LabelKeys)

    def __post_init__(self) -> None:
        _check_text("source.data", self.data, optional=True)
        _check_text("source.model", self.model, optional=True)
        check_int("source.val_size", self.val_size, 1)
        _label_keys(self.keys, "source.keys")

    def label_keys(self):
        return _label_keys(self.keys, "source.keys")


def _label_keys(values: Any, where: str):
    """`LabelKeys` of a section (None: ASE's own keys); one-line errors for bad entries."""
    from congener.data.formats import LabelKeys

    if values is None:
        return None
    if not isinstance(values, dict):
        raise ConfigError(f"{where} must map energy/forces/stress/virial to key names "
                          f"(got {values!r})")
    return LabelKeys.from_dict(values, where)


@dataclass(frozen=True)
class Budget:
    """How long each run trains; one rule for every arm of a study.

    rule "fixed": `updates` optimizer updates per run (converted to epochs per size, within
    min_epochs..max_epochs). rule "converge": train until the validation loss has not improved
    for `patience_updates` updates, up to a cap that grows with the training-set size:
    max(updates, updates_per_structure x size), at most `max_updates`; a run that reaches the
    cap is reported as stopped by the cap (it may not have converged).
    """

    updates: int = 150
    min_epochs: int = 5
    max_epochs: int = 150
    validations: int = 15  # validations per run (validation every epochs/validations)
    rule: str = "fixed"  # or "converge"
    patience_updates: int = 300  # converge: updates without a better validation loss
    updates_per_structure: int = 50  # converge: the cap grows with the training set
    max_updates: int = 20000  # converge: the cap's ceiling

    def __post_init__(self) -> None:
        for name in ("updates", "min_epochs", "validations", "patience_updates",
                     "updates_per_structure", "max_updates"):
            check_int(f"budget.{name}", getattr(self, name), 1)
        check_int("budget.max_epochs", self.max_epochs, self.min_epochs)
        if self.rule not in ("fixed", "converge"):
            raise ConfigError(f"budget.rule must be fixed or converge (got {self.rule!r})")

    def epochs(self, size: int, batch_size: int) -> int:
        """Epochs of a run (the cap, under rule converge)."""
        per_epoch = -(-size // batch_size)
        if self.rule == "converge":
            cap = min(self.max_updates, max(self.updates, self.updates_per_structure * size))
            return max(self.min_epochs, -(-cap // per_epoch))
        return max(self.min_epochs, min(self.max_epochs, -(-self.updates // per_epoch)))

    def patience(self, size: int, batch_size: int) -> int:
        """Early-stopping patience in epochs (0: none, rule fixed)."""
        if self.rule != "converge":
            return 0
        return max(1, -(-self.patience_updates // -(-size // batch_size)))

    def val_every(self, size: int, batch_size: int) -> int:
        """Epochs between validations: `validations` per run, and under rule converge at
        least three per patience window."""
        epochs = self.epochs(size, batch_size)
        every = max(1, -(-epochs // self.validations))
        patience = self.patience(size, batch_size)
        return min(every, max(1, patience // 3)) if patience else every


@dataclass(frozen=True)
class TemperatureSpec:
    temperature_K: float = 2000.0
    sizes: tuple[int, ...] = (1,)

    def __post_init__(self) -> None:
        check_float("temperature.temperature_K", self.temperature_K, 0.0, MAX_TEMPERATURE_K,
                    low_open=True)
        object.__setattr__(self, "sizes", check_ints("temperature.sizes", self.sizes, 1))


@dataclass(frozen=True)
class HPOSpec:
    """Search per arm on validation data (size `size`, first seed), never on the test set.

    Candidates: initial learning rates `lr` x decays `decay` (lr_final / lr; default: the train
    section's) x the product of `grid` (other train settings, e.g. energy_weight: [10, 30]).
    `metric`: what picks the candidate, the validation loss or a validation MAE (the loss is not
    comparable across loss weights, so a grid over weights needs a MAE, or `balanced`: energy
    and force MAE, each over the arm's best candidate's, summed). `folds`: k-fold
    cross-validation over the first seed's training and validation structures at `size` (a
    validation set of a few structures is a poor judge); null: the held-out validation set."""

    size: int = 10
    lr: tuple[float, ...] = (1e-3, 3e-3)
    decay: tuple[float, ...] | None = None
    grid: dict[str, tuple] = field(default_factory=dict)
    metric: str = "val_loss"
    folds: int | None = None

    def __post_init__(self) -> None:
        check_int("hpo.size", self.size, 1)
        object.__setattr__(self, "lr", check_floats("hpo.lr", self.lr, 0.0, 1.0,
                                                    low_open=True))
        if self.decay is not None:  # ratios lr_final / lr
            object.__setattr__(self, "decay", check_floats("hpo.decay", self.decay, 0.0, 1.0,
                                                           low_open=True))
        if not isinstance(self.grid, dict):
            raise ConfigError(f"hpo.grid must map train settings to lists (got {self.grid!r})")
        known = set(TrainConfig.__dataclass_fields__) - {"lr", "lr_final", "seed", "epochs"}
        grid = {}
        for key, values in self.grid.items():
            if key not in known:
                raise ConfigError(f"hpo.grid: {key!r} is not a train setting that a search "
                                  "can vary (lr and decay have their own keys)")
            values = tuple(values) if isinstance(values, list | tuple) else (values,)
            if not values:
                raise ConfigError(f"hpo.grid.{key} lists no value")
            # each candidate must make a valid train section (ints become floats where due)
            grid[key] = tuple(getattr(from_dict(TrainConfig, {key: v}, "hpo.grid"), key)
                              for v in values)
        object.__setattr__(self, "grid", grid)
        if self.metric not in HPO_METRICS:
            raise ConfigError(f"hpo.metric must be one of {', '.join(HPO_METRICS)} "
                              f"(got {self.metric!r})")
        weights = sorted(set(grid) & set(LOSS_SHAPE))
        if self.metric == "val_loss" and weights:
            raise ConfigError(f"hpo.grid varies {weights[0]}: validation losses of different "
                              "loss weights are not comparable; give hpo.metric balanced, "
                              "val_force_mae or val_energy_mae")
        if self.folds is not None:
            check_int("hpo.folds", self.folds, 2)

    def candidates(self) -> list[tuple[float, float | None, tuple[tuple[str, Any], ...]]]:
        """Every (lr, decay, settings) of the search."""
        import itertools

        keys = list(self.grid)
        combos = list(itertools.product(*(self.grid[k] for k in keys)))
        return [(lr, d, tuple(zip(keys, combo, strict=True)))
                for lr in self.lr for d in (self.decay or (None,)) for combo in combos]


HPO_METRICS = ("val_loss", "val_force_mae", "val_energy_mae", "balanced")


@dataclass(frozen=True)
class PhononStage:
    """Phonon DOS of the models of one kind of run and size, against a reference:
    `sw` (exact Stillinger-Weber through LAMMPS), `largest` (the largest transfer model of the
    learning curve) or a model path."""

    runs: str = "temperature"
    size: int = 1
    reference: str = "sw"

    def __post_init__(self) -> None:
        if self.runs not in RUN_KINDS:
            raise ConfigError(f"phonons.runs must be one of {', '.join(RUN_KINDS)} "
                              f"(got {self.runs!r})")
        check_int("phonons.size", self.size, 1)
        _check_text("phonons.reference", self.reference)


@dataclass(frozen=True)
class MDStage:
    """NVT MD of the learning-curve models of the given sizes from the hottest structure,
    its cell scaled to `density_g_cm3` where given (a liquid needs its own density: the data's
    hottest cell may be a crystal's), after `melt_steps` at `melt_K` where given (the crystal
    order melted away; those frames are not analysed, but a trajectory that fails there counts
    as unstable)."""

    sizes: tuple[int, ...] = (10,)
    trajectories: int = 2
    temperature_K: float = 1200.0
    timestep_fs: float = 0.5
    steps: int = 400
    friction_per_ps: float = 1.0
    sample_every: int = 20
    checkpoint_every: int = 2000  # steps between checkpoints (studies.validation.md_stage)
    arms: tuple[str, ...] | None = None  # the arms whose models run MD (None: every arm)
    density_g_cm3: float | None = None  # None: the start structure's own density
    melt_K: float = 2500.0
    melt_steps: int = 0
    name: str = "md"  # the folder under validation/ (one per protocol on the same models)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sizes", check_ints("md.sizes", self.sizes, 1))
        if self.density_g_cm3 is not None:
            check_float("md.density_g_cm3", self.density_g_cm3, 0.0, 30.0, low_open=True)
        check_float("md.melt_K", self.melt_K, 0.0, MAX_TEMPERATURE_K, low_open=True)
        check_int("md.melt_steps", self.melt_steps, 0)
        if not (isinstance(self.name, str) and re.fullmatch(r"[A-Za-z0-9_-]+", self.name)):
            raise ConfigError(f"md.name must be a folder name of letters, digits, '-' and '_' "
                              f"(got {self.name!r})")
        if self.arms is not None and (isinstance(self.arms, str) or not all(
                isinstance(a, str) and a for a in self.arms)):
            raise ConfigError(f"md.arms must be a list of arm names (got {self.arms!r})")
        check_int("md.checkpoint_every", self.checkpoint_every, 1)
        check_int("md.trajectories", self.trajectories, 1)
        check_md_settings(temperature_K=self.temperature_K, timestep_fs=self.timestep_fs,
                          steps=self.steps, friction_per_ps=self.friction_per_ps,
                          sample_every=self.sample_every,
                          names={k: f"md.{k}" for k in ("temperature_K", "timestep_fs", "steps",
                                                        "friction_per_ps", "sample_every")})
        if self.sample_every > self.steps:
            raise ConfigError(f"md.sample_every ({self.sample_every}) must not exceed md.steps "
                              f"({self.steps})")

    def protocol(self) -> dict[str, Any]:
        """The settings that decide what a model's trajectories are (a stored result made
        under others is not reused)."""
        return {"temperature_K": float(self.temperature_K), "timestep_fs": float(self.timestep_fs),
                "steps": self.steps, "friction_per_ps": float(self.friction_per_ps),
                "trajectories": self.trajectories, "density_g_cm3": self.density_g_cm3,
                "melt_K": float(self.melt_K) if self.melt_steps else None,
                "melt_steps": self.melt_steps}


def _check_text(name: str, value: Any, *, optional: bool = False) -> None:
    if not ((value is None and optional) or (isinstance(value, str) and value.strip())):
        raise ConfigError(f"{name} must be a non-empty string{' or null' if optional else ''} "
                          f"(got {value!r})")
