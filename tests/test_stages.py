"""Multi-stage training: the stopping stage is chosen on validation, never on the test set."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from congener.data.structures import write_structures
from congener.errors import ConfigError
from congener.models.checkpoint import load_potential, save_potential
from congener.training.config import TrainConfig
from congener.training.data import LabelledSet
from congener.training.stages import read_stages, train_stages
from tests.conftest import small_potential
from tests.test_training import sw_labelled

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def sets():
    data = sw_labelled(10, seed=70)
    return data[:6], data[6:8], data[8:]


def _stage(**kw) -> TrainConfig:
    return TrainConfig(**{"epochs": 3, "batch_size": 3, "lr": 1e-3, "lr_final": 1e-3,
                          "energy_weight": 1.0, "dtype": "float64", **kw})


def test_chain_stops_by_patience_and_keeps_the_best_validated_stage(sets, tmp_path,
                                                                   monkeypatch):
    train, val, _ = sets
    pot = small_potential(cutoff=4.0)
    tset, vset = LabelledSet(train, 4.0), LabelledSet(val, 4.0)
    # stages 1 and 2 (seed 99) end with their weights spoilt by noise, as a diverging stage
    # would: validation must stop the chain after stage 2 (patience 2) and keep stage 0;
    # stage 3 never runs
    import congener.training.stages as module

    real_fit = module.fit

    def fit_then_spoil(potential, train, val, cfg, *, run_dir, **kwargs):
        res = real_fit(potential, train, val, cfg, run_dir=run_dir, **kwargs)
        if cfg.seed == 99:
            with torch.no_grad():
                for p in potential.parameters():
                    p.add_(0.5 * torch.randn_like(p))
            save_potential(run_dir / "model.pt", potential)
        return res

    monkeypatch.setattr(module, "fit", fit_then_spoil)
    stages = [_stage(), _stage(seed=99), _stage(seed=99), _stage()]
    result = train_stages(pot, tset, vset, stages, tmp_path / "chain", patience=2)
    scores = [s["val_force_mae"] for s in result.stages]
    assert len(result.stages) == 3 and result.stopped_by == "patience"
    assert result.chosen == int(np.argmin(scores)) == 0
    assert not (tmp_path / "chain" / "stage-3").exists()
    # model.pt is stage 0's model: the same forces on a validation structure
    kept = load_potential(tmp_path / "chain" / "model.pt")
    stage0 = load_potential(tmp_path / "chain" / "stage-0" / "model.pt")
    from congener.graph import build_graph

    g = build_graph(val[0], 4.0).to(dtype=torch.float32)
    f_kept, f0 = kept(g).forces.detach(), stage0(g).forces.detach()
    assert np.allclose(f_kept.numpy(), f0.numpy(), atol=1e-6)
    assert not np.allclose(f_kept.numpy(), load_potential(
        tmp_path / "chain" / "stage-1" / "model.pt")(g).forces.detach().numpy(), atol=1e-3)
    record = json.loads((tmp_path / "chain" / "stages.json").read_text())
    assert record["chosen"] == 0 and record["metric"] == "val_force_mae"
    # a rerun reads the finished stages back instead of training them again
    def no_training(*args, **kwargs):
        raise AssertionError("a finished stage must not train again")

    monkeypatch.setattr(module, "fit", no_training)
    again = train_stages(small_potential(cutoff=4.0), tset, vset, stages, tmp_path / "chain",
                         patience=2)
    assert again.chosen == 0 and [s["val_force_mae"] for s in again.stages] == scores


def test_loss_metric_refused_across_loss_weights(tmp_path):
    stages = [_stage(energy_weight=0.0), _stage(energy_weight=30.0)]
    with pytest.raises(ConfigError, match="not comparable"):
        train_stages(small_potential(), None, None, stages, tmp_path, metric="val_loss")
    path = tmp_path / "stages.yaml"
    path.write_text("stages: [{energy_weight: 0.0},\n"
                    "         {energy_weight: 30.0, lr: 0.0005, lr_final: 1.0e-5}]\n"
                    "repeat_last: 2\nmetric: val_energy_mae\npatience: 3\n")
    chain, metric, patience = read_stages(path, _stage())
    assert (metric, patience) == ("val_energy_mae", 3)
    assert len(chain) == 4 and chain[3].lr == 5e-4 and chain[0].energy_weight == 0.0
    assert chain[0].epochs == 3  # the base's settings under each stage's
    path.write_text("stages: [{energy_weight: 0.0}]\nrepeat: 2\n")
    with pytest.raises(ConfigError, match="unknown key 'repeat'"):
        read_stages(path, _stage())


def test_train_command_with_stages_reads_the_test_set_once_after_the_choice(sets, tmp_path,
                                                                            invoke):
    train, val, test = sets
    for name, data in (("train", train), ("val", val), ("test", test)):
        write_structures(tmp_path / f"{name}.extxyz", data)
    (tmp_path / "stages.yaml").write_text(
        "stages: [{energy_weight: 0.0, epochs: 2}, {energy_weight: 10.0, epochs: 2}]\n"
        "repeat_last: 1\npatience: 1\n")
    r = invoke("train", "--train", tmp_path / "train.extxyz", "--val", tmp_path / "val.extxyz",
               "--test", tmp_path / "test.extxyz", "--stages", tmp_path / "stages.yaml",
               "--cutoff", 4.0, "--batch-size", 3, "-o", tmp_path / "run")
    assert r.exit_code == 0, r.output
    record = json.loads((tmp_path / "run" / "stages.json").read_text())
    assert "chosen on validation (val_force_mae): stage" in r.out
    assert f"stage {record['chosen']} of {len(record['stages'])}" in r.out
    assert (tmp_path / "run" / "test_metrics.json").is_file() and "test: energy MAE" in r.out
