"""Elemental energy referencing: per-element constants fitted by least squares."""

from __future__ import annotations

import numpy as np
import torch
from ase.data import atomic_numbers

from congener.models.potential import Potential
from congener.training.data import LabelledSet, predictions


@torch.no_grad()
def network_energies(potential: Potential, data: LabelledSet, *, batch_size: int = 16
                     ) -> np.ndarray:
    """Energies [S] (eV) of the network alone, without reference energies."""
    return np.concatenate([(out.energy - potential.reference_energy(graph)).cpu().numpy()
                           for graph, out in predictions(potential, data, batch_size=batch_size)])


def fit_energy_refs(potential: Potential, data: LabelledSet) -> dict[str, float]:
    """Set E_ref[Z] so that sum_atoms E_ref[Z] best fits E_DFT - E_network per atom.

    The least-squares residuals are per-atom energies (each row divided by its atom count), so
    large and small cells weigh alike; with one element this is exactly the mean per-atom
    offset (the paper's energy constant). Returns and sets the new references.
    """
    residual = data.energy.numpy() - network_energies(potential, data)
    elements = potential.elements
    counts = np.array([[int((a.numbers == atomic_numbers[e]).sum()) for e in elements]
                       for a in data.structures], dtype=float)
    present = counts.sum(0) > 0
    n_atoms = counts.sum(1, keepdims=True)
    solution = np.linalg.lstsq(counts[:, present] / n_atoms, residual / n_atoms[:, 0],
                               rcond=None)[0]
    refs = dict(zip([e for e, p in zip(elements, present, strict=True) if p],
                    solution.tolist(), strict=True))
    potential.set_energy_refs(refs)
    return refs
