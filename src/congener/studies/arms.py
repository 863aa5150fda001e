"""Arms of a study: the ways to start a potential that one study compares side by side.

An arm has a name (its runs are `<name>-n<size>-s<seed>`) and a start:
    scratch                 random DimeNet++ weights (the study's `model` section);
    transfer, frozen,       the study's congener source (its `source` section and `mapping`):
    scaled                  all weights, partly frozen (the study's `freeze`), or after a
                            corresponding-states scaling (training.scaling);
    chgnet:0.3.0, ...       a foundation model (models.registry), or
    path/to/model.pt        a congener checkpoint of any family, fine-tuned on the target data.
Per arm, optionally: `zero_shot: true` (evaluated as it starts, no training: foundation and
checkpoint starts), `freeze` (parts in the words of training.transfer: first:N, last:N, block
names, aliases, patterns), `soft_freeze` (a learning-rate factor for the frozen parts instead),
`refs` (keep | refit | train: the reference energies), `train` (overrides of the study's train
section: a loss recipe, a learning rate), `cutoff` (scratch and transfer only: a cutoff in Å
other than the study's, or `scaled`: the cutoff the corresponding-states start of the same
run would have; these are the controls of a `scaled` arm, see `scaled_controls`).

The study's `modes` list is a shorthand for the built-in arms of the same names, so every
study file written before arms existed means what it meant.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from typing import Any

from congener.bounds import check_float
from congener.errors import ConfigError

BUILTIN = ("scratch", "transfer", "frozen", "scaled")  # the former modes
SOURCE_STARTS = ("transfer", "frozen", "scaled")  # starts from the study's congener source
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


@dataclass(frozen=True)
class Arm:
    """One way to start (see module doc)."""

    name: str
    start: str
    zero_shot: bool = False
    freeze: tuple[str, ...] | None = None
    soft_freeze: float | None = None
    refs: str | None = None
    train: dict[str, Any] = field(default_factory=dict)
    cutoff: float | str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ConfigError(f"arm name {self.name!r} must be letters, digits and . _ + - "
                              "(it names the run folders)")
        where = f"arm {self.name}"
        if not isinstance(self.start, str) or not self.start.strip():
            raise ConfigError(f"{where}: start must be scratch, transfer, frozen, scaled, a "
                              f"foundation name (chgnet:0.3.0) or a checkpoint (got "
                              f"{self.start!r})")
        if not isinstance(self.zero_shot, bool):
            raise ConfigError(f"{where}: zero_shot must be true or false")
        if self.zero_shot and self.start in BUILTIN:
            raise ConfigError(f"{where}: zero_shot evaluates a trained model as it is: give a "
                              "foundation name or a checkpoint as start")
        if self.freeze is not None:
            parts = self.freeze
            if isinstance(parts, str) or not all(isinstance(p, str) and p for p in parts):
                raise ConfigError(f"{where}: freeze must be a list of parts (got {parts!r})")
            object.__setattr__(self, "freeze", tuple(parts))
            if self.start in ("scratch", "scaled", "transfer"):
                raise ConfigError(f"{where}: freeze applies to frozen, foundation and "
                                  "checkpoint starts")
        if self.soft_freeze is not None:
            check_float(f"{where}: soft_freeze", self.soft_freeze, 0.0, 1.0)
            if not (self.freeze or self.start == "frozen"):
                raise ConfigError(f"{where}: soft_freeze scales the parts named by freeze")
        if self.refs is not None and self.refs not in ("keep", "refit", "train"):
            raise ConfigError(f"{where}: refs must be keep, refit or train (got {self.refs!r})")
        if self.zero_shot and self.refs == "train":
            raise ConfigError(f"{where}: a zero-shot arm does not train: refs keep or refit")
        if not isinstance(self.train, dict):
            raise ConfigError(f"{where}: train must be a mapping of train settings")
        if "refs" in self.train:
            raise ConfigError(f"{where}: give the references as the arm's refs, not in train")
        from congener.training.config import TrainConfig

        known = {f.name for f in fields(TrainConfig)}
        unknown = sorted(set(self.train) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown train setting {unknown[0]!r}")
        if self.start not in BUILTIN and ":" in self.start:
            _check_foundation_name(self.start, where)
        if self.cutoff is not None:
            if self.start not in ("scratch", "transfer"):
                raise ConfigError(f"{where}: cutoff applies to scratch and transfer starts "
                                  "(a scaled start sets its own; other families keep theirs)")
            if self.cutoff != "scaled":
                check_float(f"{where}: cutoff", self.cutoff, 0.5, 20.0)

    @property
    def scaled_cutoff(self) -> bool:
        """Whether the arm takes the cutoff of the same run's corresponding-states start."""
        return self.cutoff == "scaled"

    @property
    def uses_source(self) -> bool:
        """Whether the arm starts from the study's congener source model."""
        return self.start in SOURCE_STARTS or self.scaled_cutoff

    @property
    def outside_start(self) -> bool:
        """A foundation model or a checkpoint path (not the study's own models)."""
        return self.start not in BUILTIN


def _check_foundation_name(start: str, where: str) -> None:
    from pathlib import Path

    from congener.models.registry import FOUNDATIONS

    family = start.partition(":")[0]
    if family in FOUNDATIONS or Path(start).exists() or len(family) < 2:
        return
    raise ConfigError(f"{where}: start {start!r} is neither a file nor a foundation name "
                      f"(families: {', '.join(FOUNDATIONS)})")


def arm_from_dict(values: Any, index: int) -> Arm:
    """An `Arm` from one entry of a study file's `arms` list."""
    if not isinstance(values, dict):
        raise ConfigError(f"arms[{index}] must be a mapping with name and start (got "
                          f"{values!r})")
    known = {f.name for f in fields(Arm)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"arms[{index}]: unknown key {unknown[0]!r} (known: "
                          f"{', '.join(sorted(known))})")
    missing = [k for k in ("name", "start") if k not in values]
    if missing:
        raise ConfigError(f"arms[{index}] needs {' and '.join(missing)}")
    return Arm(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def builtin(name: str) -> Arm:
    """The arm a former mode stands for."""
    return Arm(name=name, start=name)


def scaled_controls(arms: tuple[Arm, ...]) -> tuple[Arm, ...]:
    """The controls of a `scaled` arm: scratch and transfer at the cutoff of the same run's
    corresponding-states start (`scratch-rc`, `transfer-rc`), unless the arms hold them.

    For DimeNet++ distances enter only as d / cutoff, so the length scale and the cutoff are
    one parameter: `transfer-rc` is the source with the length scale and without the energy
    scale, and `scratch-rc` learns from the data alone with the larger cutoff. Scaled against
    transfer-rc isolates the energy scale; transfer-rc against transfer and scratch-rc against
    scratch measure what the larger cutoff gives."""
    if not any(a.start == "scaled" for a in arms):
        return ()
    have = {(a.start, a.cutoff) for a in arms}
    names = {a.name for a in arms}
    return tuple(Arm(name=name, start=start, cutoff="scaled")
                 for name, start in (("scratch-rc", "scratch"), ("transfer-rc", "transfer"))
                 if (start, "scaled") not in have and name not in names)


def check_arms(arms: tuple[Arm, ...]) -> None:
    """Names unique."""
    names = [a.name for a in arms]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"arms: {twice[0]} is named twice")
