"""Every family through the same training, freezing, referencing and CLI paths (issue 18):
small random CHGNet and SevenNet models, and the shipped CHGNet 0.3.0 end to end."""

from __future__ import annotations

import json

import pytest
import torch

from congener.data.structures import label, write_structures
from congener.models.checkpoint import load_potential, save_potential
from congener.testing import predict
from congener.training import LabelledSet, TrainConfig, fit
from congener.training.refs import fit_energy_refs
from congener.training.transfer import freeze, select, start_from
from tests.test_foundation_chgnet import small_chgnet
from tests.test_foundation_sevennet import small_sevennet
from tests.test_training import sw_labelled

FAMILIES = {"chgnet": small_chgnet, "sevennet": small_sevennet}


@pytest.fixture(scope="module")
def ge():
    structures = sw_labelled(8, seed=70, element="Ge", a=5.65)
    return structures[:6], structures[6:]


def _force_mae(potential, structures) -> float:
    errors = [(predict(potential, a).forces.detach() - torch.from_numpy(a.get_forces())).abs()
              for a in structures]
    return float(torch.cat(errors).mean())


@pytest.mark.parametrize("family", FAMILIES)
def test_fine_tune_lowers_force_error_and_keeps_frozen_blocks_bit_identical(family, ge):
    train, val = ge
    pot = start_from(FAMILIES[family](seed=1), None, ["Ge"])
    assert pot.elements == ["Ge"]  # the fine-tuned model knows its training element
    frozen = set(freeze(pot, ["first:2"]))
    assert frozen and frozen == set(select(pot, ["first:2"]))
    before = {n: p.detach().clone() for n, p in pot.named_parameters()}
    error_before = _force_mae(pot, val)
    cfg = TrainConfig(epochs=25, batch_size=3, lr=1e-2, lr_final=3e-3, seed=0,
                      dtype="float64")
    fit(pot, LabelledSet(train, pot.cutoff), LabelledSet(val, pot.cutoff), cfg)
    for name, p in pot.named_parameters():
        if name in frozen:
            assert torch.equal(p, before[name]), name
    moved = [n for n, p in pot.named_parameters() if n not in frozen and p.requires_grad
             and not torch.equal(p, before[n])]
    assert moved
    assert _force_mae(pot, val) < 0.8 * error_before


@pytest.mark.parametrize("family", FAMILIES)
def test_refit_recovers_an_exact_shift_for_every_family(family, ge):
    teacher = FAMILIES[family](seed=2)
    structures = []
    for atoms in ge[0]:
        out = predict(teacher, atoms)
        structures.append(label(atoms.copy(), energy=float(out.energy[0]) + 0.25 * len(atoms),
                                forces=out.forces.detach().numpy()))
    before = teacher.get_energy_refs()["Ge"]
    refs = fit_energy_refs(teacher, LabelledSet(structures, teacher.cutoff))
    assert refs["Ge"] == pytest.approx(before + 0.25, abs=1e-9)




@pytest.mark.parametrize("family", FAMILIES)
def test_transfer_cli_from_a_family_checkpoint(family, ge, tmp_path, invoke):
    save_potential(tmp_path / "src.pt", FAMILIES[family](seed=3).float())
    write_structures(tmp_path / "train.extxyz", ge[0])
    write_structures(tmp_path / "val.extxyz", ge[1])
    res = invoke("transfer", tmp_path / "src.pt", "--list-blocks")
    assert res.exit_code == 0 and "readout" in res.output, res.output
    res = invoke("transfer", tmp_path / "src.pt", "--train", tmp_path / "train.extxyz",
                 "--val", tmp_path / "val.extxyz", "--freeze", "first:1", "--refs", "keep",
                 "--epochs", 2, "--batch-size", 3, "-o", tmp_path / "run")
    assert res.exit_code == 0, res.output
    model = load_potential(tmp_path / "run" / "model.pt")
    assert model.network.family == family and model.elements == ["Ge"]
    source = load_potential(tmp_path / "src.pt")
    assert model.get_energy_refs()["Ge"] == source.get_energy_refs()["Ge"]  # refs kept
    meta = torch.load(tmp_path / "run" / "model.pt", weights_only=True)["metadata"]
    assert meta["train_config"]["refs"] == "keep"
    res = invoke("evaluate", tmp_path / "run" / "model.pt", tmp_path / "val.extxyz",
                 "--json", tmp_path / "m.json")
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "m.json").read_text())["all"]["n"] == 2


@pytest.mark.reliability("late", "data with an element outside a foundation's table: one line")
def test_element_outside_the_foundation_table_is_refused(tmp_path, invoke):
    save_potential(tmp_path / "src.pt", small_sevennet().float())  # knows Si and Ge only
    atoms = sw_labelled(1, seed=9)[0]
    atoms.numbers[:] = 6  # carbon with silicon's labels: the table decides before any use
    write_structures(tmp_path / "c.extxyz", [atoms])
    res = invoke("transfer", tmp_path / "src.pt", "--train", tmp_path / "c.extxyz",
                 "--val", tmp_path / "c.extxyz", "-o", tmp_path / "r")
    assert res.exit_code == 2 and "not C: outside the sevennet element table" in res.output


def test_shipped_chgnet_zero_shot_and_fine_tuned_through_the_cli(ge, tmp_path, invoke):
    write_structures(tmp_path / "train.extxyz", ge[0][:3])
    write_structures(tmp_path / "val.extxyz", ge[1])
    res = invoke("evaluate", "chgnet:0.3.0", tmp_path / "val.extxyz", "--json",
                 tmp_path / "zero.json")
    assert res.exit_code == 0, res.output
    zero = json.loads((tmp_path / "zero.json").read_text())["all"]
    res = invoke("transfer", "chgnet:0.3.0", "--train", tmp_path / "train.extxyz",
                 "--val", tmp_path / "val.extxyz", "--freeze", "embeddings,atom_conv:0",
                 "--epochs", 3, "--batch-size", 3, "--lr", 1e-3, "--lr-final", 1e-3,
                 "-o", tmp_path / "run")
    assert res.exit_code == 0, res.output
    assert "frozen:" in res.output
    tuned = load_potential(tmp_path / "run" / "model.pt")
    assert tuned.network.family == "chgnet" and tuned.elements == ["Ge"]
    res = invoke("evaluate", tmp_path / "run" / "model.pt", tmp_path / "val.extxyz", "--json",
                 tmp_path / "tuned.json")
    tuned_m = json.loads((tmp_path / "tuned.json").read_text())["all"]
    # refitted references on the SW data: the energy error falls far below zero-shot's
    assert tuned_m["energy_mae"] < zero["energy_mae"]


def test_resume_identity_holds_the_settings_of_every_family(ge, tmp_path):
    """A run folder started from one CHGNet architecture refuses to resume with another (the
    identity compared the DimeNet++ settings only)."""
    from congener.errors import CheckpointError

    train, val = ge
    cfg = TrainConfig(epochs=1, batch_size=3, seed=0, dtype="float64")
    first = start_from(small_chgnet(seed=1), None, ["Ge"])
    fit(first, LabelledSet(train, first.cutoff), LabelledSet(val, first.cutoff), cfg,
        run_dir=tmp_path / "r")
    other = start_from(small_chgnet(seed=1, atom_graph_cutoff=5.5), None, ["Ge"])
    with pytest.raises(CheckpointError, match="model settings"):
        fit(other, LabelledSet(train, other.cutoff), LabelledSet(val, other.cutoff), cfg,
            run_dir=tmp_path / "r")
