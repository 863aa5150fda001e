"""SevenNet as a congener model family: the Potential contract on a small random SevenNet, the
shipped models against SevenNet's own ASE calculator, checkpoints, the ASE calculator, blocks."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from congener.graph import build_graph
from congener.models.checkpoint import load_potential, save_potential
from congener.models.family import block_parameters
from congener.models.foundation.sevennet import VARIANTS, SevenNetNetwork
from congener.models.potential import Potential
from congener.models.registry import load_source
from congener.testing import (
    assert_blocks_partition,
    assert_calculator_agrees,
    check_potential,
    predict,
)
from tests.conftest import family_potential, rattled_ge

SMALL = {"chemical_species": ["Si", "Ge"], "cutoff": 4.0, "channel": 8, "lmax": 2,
         "num_convolution_layer": 2, "weight_nn_hidden_neurons": [8],
         "radial_basis": {"radial_basis_name": "bessel", "bessel_basis_num": 4},
         "cutoff_function": {"cutoff_function_name": "XPLOR", "cutoff_on": 3.5},
         "self_connection_type": "linear", "is_parity": False, "conv_denominator": 4.0,
         "shift": [0.3, -0.2], "scale": [1.5, 2.0]}
BLOCKS_7NET_0 = ["embedding", "interaction:0", "interaction:1", "interaction:2",
                 "interaction:3", "interaction:4", "readout"]
# variant -> (sevenn's name, fidelity)
SEVENN_NAMES = {"7net-0": ("7net-0", None), "7net-0_22May2024": ("7net-0_22may2024", None),
                "7net-l3i5": ("7net-l3i5", None), "7net-mf-0-pbe": ("7net-mf-0", "PBE"),
                "7net-mf-0-r2scan": ("7net-mf-0", "R2SCAN")}


def small_sevennet(seed: int = 0, **changes) -> Potential:
    """A randomly initialised SevenNet of ~1500 parameters (float64) with Si and Ge refs."""
    torch.manual_seed(seed)
    return family_potential(SevenNetNetwork.from_config({**SMALL, **changes}))



def sevenn_calculator(variant: str):
    from sevenn.calculator import SevenNetCalculator

    name, modal = SEVENN_NAMES[variant]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return SevenNetCalculator(name, device="cpu", modal=modal)


@pytest.fixture(scope="module")
def sevennet_0() -> Potential:
    return load_source("sevennet:7net-0", dtype=torch.float64)


def test_small_sevennet_passes_the_potential_contract():
    potential = small_sevennet()
    assert 1000 < sum(p.numel() for p in potential.parameters()) < 5000
    check_potential(potential)
    forces = predict(potential, rattled_ge()).forces
    assert float(forces.abs().max()) > 1e-4  # the checks did not pass on a flat model


def test_small_sevennet_other_architectures_pass_the_contract():
    # NequIP self-connection, O(3) parity, polynomial envelope; an MLP readout
    check_potential(small_sevennet(self_connection_type="nequip", is_parity=True, lmax=1,
                                   cutoff_function={"cutoff_function_name": "poly_cut"}))
    check_potential(small_sevennet(readout_as_fcn=True, readout_fcn_hidden_neurons=[4],
                                   lmax=1))


def test_shift_is_zero_and_scale_kept_in_the_network():
    # SevenNet's per-species lists follow its type order (chemical symbols sorted: Ge, Si)
    network = small_sevennet().network
    rescale = network.model.rescale_atomic_energy
    assert torch.equal(rescale.shift, torch.zeros_like(rescale.shift))
    assert network.config()["_type_map"] == {"32": 0, "14": 1}
    assert network.config()["scale"] == SMALL["scale"]
    assert network.config()["shift"] == [0.0, 0.0]
    assert network.supported_elements() == ["Si", "Ge"]


def test_edges_beyond_the_cutoff_are_ignored():
    potential = small_sevennet()
    atoms = rattled_ge()
    exact = potential(build_graph(atoms, 4.0).to(dtype=torch.float64), stress=True)
    skin = potential(build_graph(atoms, 5.5).to(dtype=torch.float64), stress=True)
    assert float(skin.energy[0]) == pytest.approx(float(exact.energy[0]), abs=1e-10)
    assert torch.allclose(skin.forces, exact.forces, atol=1e-10)
    assert torch.allclose(skin.stress, exact.stress, atol=1e-12)


def test_free_cluster_equals_the_cluster_in_a_large_box():
    potential = small_sevennet()
    cluster = rattled_ge()[:5]
    cluster.set_cell(np.zeros((3, 3)))
    cluster.pbc = False
    boxed = cluster.copy()
    boxed.set_cell(np.eye(3) * 30.0)
    boxed.pbc = True
    free, periodic = predict(potential, cluster), predict(potential, boxed)
    assert float(free.energy[0]) == pytest.approx(float(periodic.energy[0]), abs=1e-10)
    assert np.allclose(free.forces.numpy(), periodic.forces.numpy(), atol=1e-10)
    assert float(free.forces.abs().max()) > 1e-4


def test_shipped_7net_0_matches_sevenns_calculator():
    atoms = rattled_ge()
    potential = load_source("sevennet:7net-0")  # float32, as SevenNet runs
    assert potential.metadata["family"] == "sevennet"
    assert potential.metadata["variant"] == "7net-0"
    assert potential.cutoff == 5.0
    out = predict(potential, atoms, stress=True, dtype=torch.float32)
    ref = atoms.copy()
    ref.calc = sevenn_calculator("7net-0")
    n = len(atoms)
    assert abs(float(out.energy[0]) - ref.get_potential_energy()) / n < 1e-5
    assert np.abs(out.forces.detach().numpy() - ref.get_forces()).max() < 1e-4
    assert np.abs(out.stress[0].detach().numpy() - ref.get_stress(voigt=False)).max() < 1e-5


def test_every_variant_ships_inside_the_sevenn_package():
    import os

    import sevenn

    from congener.models.foundation.sevennet import _checkpoint_path

    assert set(VARIANTS) == set(SEVENN_NAMES)
    package = os.path.dirname(sevenn.__file__)
    for variant in VARIANTS:
        path = _checkpoint_path(variant)
        assert os.path.isfile(path) and path.startswith(package), (variant, path)


@pytest.mark.parametrize("variant", ["7net-l3i5", "7net-mf-0-r2scan"])
def test_other_shipped_sevennets_match_sevenns_calculator(variant, tmp_path):
    atoms = rattled_ge(seed=5)
    potential = load_source(f"sevennet:{variant}")
    assert potential.metadata["variant"] == variant
    out = predict(potential, atoms, dtype=torch.float32)
    ref = atoms.copy()
    ref.calc = sevenn_calculator(variant)
    assert abs(float(out.energy[0]) - ref.get_potential_energy()) / len(atoms) < 1e-5
    assert np.abs(out.forces.detach().numpy() - ref.get_forces()).max() < 1e-4
    if variant.startswith("7net-mf-0"):  # the fidelity travels with the checkpoint
        assert potential.network.config()["modal"] == "R2SCAN"
        loaded = load_potential(save_potential(tmp_path / "mf.pt", potential))
        again = predict(loaded, atoms, dtype=torch.float32)
        # float32 sums over threads are not bit-reproducible, even call to call
        assert torch.allclose(out.forces, again.forces, atol=1e-5)
        assert torch.allclose(out.energy, again.energy, atol=1e-4)


def test_energy_refs_are_sevennets_species_shift(sevennet_0):
    from sevenn.util import load_checkpoint

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        shift = load_checkpoint("7net-0").config["shift"]  # indexed by atomic number
    refs = sevennet_0.get_energy_refs()
    assert len(refs) == 89
    assert refs["Ge"] == pytest.approx(shift[32], abs=1e-6)
    assert refs["H"] == pytest.approx(shift[1], abs=1e-6)
    rescale = sevennet_0.network.model.rescale_atomic_energy
    assert float(rescale.shift.abs().max()) == 0.0
    assert float(rescale.scale[0]) == pytest.approx(1.73)


def test_float64_and_float32_agree(sevennet_0):
    atoms = rattled_ge()
    double = predict(sevennet_0, atoms, stress=True)
    single = predict(sevennet_0.to(torch.float32), atoms, stress=True, dtype=torch.float32)
    sevennet_0.to(torch.float64)
    assert double.forces.dtype == torch.float64
    assert abs(float(double.energy[0] - single.energy[0])) / len(atoms) < 1e-5
    assert float((double.forces - single.forces.double()).abs().max()) < 1e-4


def test_checkpoint_round_trip_and_calculator(sevennet_0, tmp_path):
    atoms = rattled_ge()
    atoms.set_cell(atoms.cell.array @ np.array([[1.0, 0.03, 0.0], [0, 1, 0], [0, 0, 1]]),
                   scale_atoms=True)
    path = save_potential(tmp_path / "sevennet.pt", sevennet_0, metadata=sevennet_0.metadata)
    loaded = load_potential(path, dtype=torch.float64)
    assert loaded.metadata["variant"] == "7net-0"
    original = predict(sevennet_0, atoms, stress=True)
    again = predict(loaded, atoms, stress=True)
    # the same weights (CPU threads make sums reproducible only to rounding)
    assert torch.equal(torch.cat([v.reshape(-1) for v in sevennet_0.state_dict().values()]),
                       torch.cat([v.reshape(-1) for v in loaded.state_dict().values()]))
    assert torch.allclose(original.energy, again.energy, rtol=0, atol=1e-10)
    assert torch.allclose(original.forces, again.forces, rtol=0, atol=1e-12)
    assert torch.allclose(original.stress, again.stress, rtol=0, atol=1e-14)
    assert loaded.get_energy_refs() == sevennet_0.get_energy_refs()

    assert_calculator_agrees(loaded, atoms, atol=1e-10)


def test_blocks_cover_every_parameter_once_in_order(sevennet_0):
    network = sevennet_0.network
    blocks = network.blocks()
    assert [name for name, _ in blocks] == BLOCKS_7NET_0
    assert_blocks_partition(network)
    members = block_parameters(network)
    sizes = dict(network.named_parameters())
    count = {b: sum(sizes[p].numel() for p in ps) for b, ps in members}
    assert count["embedding"] == 89 * 128 + 8
    assert sum(count.values()) == 842_623
    assert network.block_aliases() == {"interactions": BLOCKS_7NET_0[1:-1]}
    elements = network.supported_elements()
    assert len(elements) == 89 and elements[0] == "H" and "Ge" in elements
    small = small_sevennet().network
    assert sorted(n for _, ps in block_parameters(small) for n in ps) == \
        sorted(n for n, _ in small.named_parameters())


def test_config_is_json_and_rebuilds_the_architecture(sevennet_0):
    config = json.loads(json.dumps(sevennet_0.network.config()))
    rebuilt = SevenNetNetwork.from_config(config)
    assert rebuilt.cutoff == 5.0
    assert float(rebuilt.model.rescale_atomic_energy.shift.abs().max()) == 0.0
    assert {n: p.shape for n, p in rebuilt.named_parameters()} == \
        {n: p.shape for n, p in sevennet_0.network.named_parameters()}
