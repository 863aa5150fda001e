"""Training: losses, the loop (scratch and transfer alike), transfer steps, energy references,
corresponding-states scaling."""

from congener.training.config import TrainConfig
from congener.training.data import LabelledSet
from congener.training.refs import fit_energy_refs
from congener.training.scaling import Scales, fit_scales, scale_potential
from congener.training.trainer import TrainResult, fit
from congener.training.transfer import freeze, lr_scales, map_species

__all__ = ["LabelledSet", "Scales", "TrainConfig", "TrainResult", "fit", "fit_energy_refs",
           "fit_scales", "freeze", "lr_scales", "map_species", "scale_potential"]
