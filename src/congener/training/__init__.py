"""Training: losses, the loop (scratch and transfer alike), transfer steps, energy references."""

from congener.training.config import TrainConfig
from congener.training.data import LabelledSet
from congener.training.refs import fit_energy_refs
from congener.training.trainer import TrainResult, fit
from congener.training.transfer import freeze, lr_scales, map_species

__all__ = ["LabelledSet", "TrainConfig", "TrainResult", "fit", "fit_energy_refs", "freeze",
           "lr_scales", "map_species"]
