"""What a training run can learn from its data, checked before the first update.

A model knows the elements of its training data and nothing else: a validation set with another
element would give that element an untrained embedding and a reference energy of 0 eV, and
every later use of the model would treat it as known. A loss term the data cannot feed (a
stress weight on data without stress) would be dropped without a word. Both are refused here;
what is legal but weak (an element in one training structure, a stress term fed by some of
the structures) is a `CongenerWarning`.
"""

from __future__ import annotations

import warnings

from congener.data.structures import elements_of
from congener.errors import ConfigError, CongenerWarning, DataError
from congener.models.potential import Potential
from congener.training.config import TrainConfig
from congener.training.data import LabelledSet

# keys under which other codes store stress-like labels (ASE reads only `stress` as a label)
_STRESS_LIKE = ("stress", "virial")


def check_training_data(potential: Potential, train: LabelledSet, val: LabelledSet,
                        cfg: TrainConfig) -> None:
    """Raise `DataError`/`ConfigError` for data a run cannot learn from; warn for weak data."""
    trained = set(elements_of(train.structures))
    unseen = [e for e in elements_of(val.structures) if e not in trained]
    if unseen:
        raise DataError(f"the validation set holds {', '.join(unseen)}, which no training "
                        "structure has: a model knows only the elements of its training data")
    untrained = [e for e in potential.elements if e not in trained]
    if untrained:
        warnings.warn(f"the model knows {', '.join(untrained)} from its starting weights, but "
                      "no training structure has it: its reference energy is not refitted",
                      CongenerWarning, stacklevel=2)
    if len(train) > 1:
        for element in sorted(trained):
            holders = sum(element in a.get_chemical_symbols() for a in train.structures)
            if holders == 1:
                warnings.warn(f"{element} appears in only 1 of {len(train)} training "
                              "structures: its reference energy rests on that one structure",
                              CongenerWarning, stacklevel=2)
    if cfg.stress_weight > 0:
        _check_stress(train, cfg)


def _check_stress(train: LabelledSet, cfg: TrainConfig) -> None:
    n_stress, n = int(train.has_stress.sum()), len(train)
    if n_stress == n:
        return
    if n_stress == 0:
        other = sorted({key for a in train.structures for key in a.info
                        if any(s in key.lower() for s in _STRESS_LIKE)})
        hint = (f"; they hold {', '.join(other)}, which is not read as the stress label "
                "(rename it to `stress`, in eV/Å³, ASE's sign)") if other else ""
        raise ConfigError(f"stress_weight {cfg.stress_weight:g} asks for a stress term, but none "
                          f"of the {n} training structures carries a stress (the extended-XYZ "
                          f"key `stress`){hint}; set the stress weight to 0 or add the labels")
    warnings.warn(f"the stress term is fed by {n_stress} of {n} training structures (the others "
                  "carry no stress)", CongenerWarning, stacklevel=2)
