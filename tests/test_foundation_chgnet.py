"""CHGNet as a congener model family: the Potential contract on a small random CHGNet, the
shipped models against CHGNet's own predictions, checkpoints, the ASE calculator, blocks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from chgnet.model import CHGNet
from pymatgen.io.ase import AseAtomsAdaptor

from congener.errors import DataError
from congener.graph import build_graph
from congener.models.checkpoint import load_potential, save_potential
from congener.models.family import block_parameters
from congener.models.foundation.chgnet import VARIANTS, CHGNetNetwork
from congener.models.potential import Potential
from congener.models.registry import load_source
from congener.testing import (
    assert_blocks_partition,
    assert_calculator_agrees,
    check_potential,
    predict,
)
from tests.conftest import family_potential, rattled_ge

SMALL = {"atom_fea_dim": 8, "bond_fea_dim": 8, "angle_fea_dim": 8, "num_radial": 5,
         "num_angular": 5, "n_conv": 3, "atom_conv_hidden_dim": 8, "bond_conv_hidden_dim": 8,
         "angle_layer_hidden_dim": 0, "mlp_hidden_dims": [8, 8], "atom_graph_cutoff": 5.0,
         "bond_graph_cutoff": 3.0, "cutoff_coeff": 8, "gMLP_norm": "layer",
         "readout_norm": "layer"}
BLOCKS_0_3_0 = ["atom_embedding", "bond_embedding", "angle_embedding",
                "atom_conv:0", "bond_conv:0", "angle_conv:0",
                "atom_conv:1", "bond_conv:1", "angle_conv:1",
                "atom_conv:2", "bond_conv:2", "angle_conv:2",
                "atom_conv:3", "readout"]


def small_chgnet(seed: int = 0, **changes) -> Potential:
    """A randomly initialised CHGNet of ~5700 parameters (float64) with Si and Ge refs."""
    torch.manual_seed(seed)
    return family_potential(CHGNetNetwork.from_config({**SMALL, **changes}))



@pytest.fixture(scope="module")
def chgnet_030() -> Potential:
    return load_source("chgnet:0.3.0", dtype=torch.float64)


def test_small_chgnet_passes_the_potential_contract():
    potential = small_chgnet()
    check_potential(potential)
    forces = predict(potential, rattled_ge()).forces
    assert float(forces.abs().max()) > 1e-4  # the checks did not pass on a flat model


def test_small_chgnet_without_bond_and_angle_updates_and_pooled_readout():
    check_potential(small_chgnet(update_bond=False, update_angle=False))
    check_potential(small_chgnet(mlp_first=False, n_conv=2))


@pytest.mark.parametrize("variant", VARIANTS)
def test_shipped_chgnet_matches_its_own_predictions(variant):
    atoms = rattled_ge()
    potential = load_source(f"chgnet:{variant}")
    assert potential.metadata["variant"] == variant
    assert potential.metadata["family"] == "chgnet"
    out = predict(potential, atoms, stress=True, dtype=torch.float32)
    model = CHGNet.load(model_name=variant, use_device="cpu", verbose=False)
    ref = model.predict_structure(AseAtomsAdaptor.get_structure(atoms), task="efs")
    n = len(atoms)
    assert abs(float(out.energy[0]) / n - float(ref["e"])) < 1e-5
    assert np.abs(out.forces.detach().numpy() - ref["f"]).max() < 1e-4
    stress_gpa = out.stress[0].detach().double().numpy() * 160.21766208
    assert np.abs(stress_gpa - ref["s"]).max() < 1e-3


def test_energy_refs_are_chgnets_atomref(chgnet_030):
    model = CHGNet.load(model_name="0.3.0", use_device="cpu", verbose=False)
    weights = model.composition_model.fc.weight.detach().double().reshape(-1)
    refs = chgnet_030.get_energy_refs()
    assert len(refs) == 94
    assert refs["Ge"] == pytest.approx(float(weights[31]))
    assert refs["H"] == pytest.approx(float(weights[0]))
    assert chgnet_030.network.model.composition_model is None
    assert chgnet_030.cutoff == 6.0


def test_free_cluster_equals_the_cluster_in_a_large_box(chgnet_030):
    cluster = rattled_ge()[:5]
    cluster.set_cell(np.zeros((3, 3)))
    cluster.pbc = False
    boxed = cluster.copy()
    boxed.set_cell(np.eye(3) * 30.0)
    boxed.pbc = True
    free = predict(chgnet_030, cluster)
    periodic = predict(chgnet_030, boxed)
    assert float(free.energy[0]) == pytest.approx(float(periodic.energy[0]), abs=1e-9)
    assert np.allclose(free.forces.numpy(), periodic.forces.numpy(), atol=1e-9)
    assert float(free.forces.abs().max()) > 1e-3


def test_graph_with_a_short_cutoff_is_refused(chgnet_030):
    graph = build_graph(rattled_ge(), 4.0).to(dtype=torch.float64)
    with pytest.raises(DataError, match="cutoff of 6"):
        chgnet_030(graph)


def test_checkpoint_round_trip_and_calculator(chgnet_030, tmp_path):
    atoms = rattled_ge()
    atoms.set_cell(atoms.cell.array @ np.array([[1.0, 0.03, 0.0], [0, 1, 0], [0, 0, 1]]),
                   scale_atoms=True)
    path = save_potential(tmp_path / "chgnet.pt", chgnet_030, metadata=chgnet_030.metadata)
    loaded = load_potential(path, dtype=torch.float64)
    assert loaded.metadata["variant"] == "0.3.0"
    original = predict(chgnet_030, atoms, stress=True)
    again = predict(loaded, atoms, stress=True)
    assert torch.equal(original.energy, again.energy)
    assert torch.equal(original.forces, again.forces)
    assert torch.equal(original.stress, again.stress)
    assert loaded.get_energy_refs() == chgnet_030.get_energy_refs()

    assert_calculator_agrees(loaded, atoms, atol=1e-10)


def test_blocks_cover_every_parameter_once_in_order(chgnet_030):
    network = chgnet_030.network
    blocks = network.blocks()
    assert [name for name, _ in blocks] == BLOCKS_0_3_0
    assert_blocks_partition(network)
    members = block_parameters(network)
    sizes = dict(network.named_parameters())
    count = {b: sum(sizes[p].numel() for p in ps) for b, ps in members}
    assert count["atom_embedding"] == 94 * 64
    assert sum(count.values()) == 412_431
    aliases = network.block_aliases()
    assert aliases["atom_convs"] == [f"atom_conv:{k}" for k in range(4)]
    assert aliases["bond_convs"] == [f"bond_conv:{k}" for k in range(3)]
    assert aliases["angle_convs"] == [f"angle_conv:{k}" for k in range(3)]
    assert aliases["embeddings"] == BLOCKS_0_3_0[:3]
    assert network.supported_elements()[0] == "H" and len(network.supported_elements()) == 94


def test_config_is_json_and_rebuilds_the_architecture(chgnet_030):
    import json

    config = json.loads(json.dumps(chgnet_030.network.config()))
    rebuilt = CHGNetNetwork.from_config(config)
    assert rebuilt.model.composition_model is None
    assert {n: p.shape for n, p in rebuilt.named_parameters()} == \
        {n: p.shape for n, p in chgnet_030.network.named_parameters()}
