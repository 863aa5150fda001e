"""Transfer: species mapping copies everything, frozen parameters stay bit-identical."""

from __future__ import annotations

import pytest
import torch

from congener.errors import ConfigError, DataError
from congener.testing import predict
from congener.training.config import TrainConfig
from congener.training.data import LabelledSet
from congener.training.trainer import fit
from congener.training.transfer import describe_blocks, freeze, lr_scales, map_species, select
from tests.conftest import rattled_diamond, small_potential
from tests.test_training import sw_labelled


def test_mapped_model_gives_source_prediction_on_renamed_structure():
    si = small_potential(("Si",))
    ge = map_species(si, {"Si": "Ge"})
    assert ge.elements == ["Ge"]
    a = rattled_diamond("Si", seed=1)
    b = a.copy()
    b.symbols = "Ge8"
    pa, pb = predict(si, a), predict(ge, b)
    torch.testing.assert_close(pa.forces, pb.forces, rtol=0, atol=0)
    assert float(pa.energy[0]) == pytest.approx(float(pb.energy[0]), abs=1e-12)
    with pytest.raises(DataError):
        predict(ge, a)  # the Si element is gone from the target model


def test_fresh_embedding_changes_prediction():
    si = small_potential(("Si",))
    ge = map_species(si, {"Si": "Ge"}, fresh_embedding=True)
    b = rattled_diamond("Si", seed=1)
    b.symbols = "Ge8"
    a = rattled_diamond("Si", seed=1)
    assert float((predict(si, a).forces - predict(ge, b).forces).abs().max()) > 1e-6


def test_select_parts():
    pot = small_potential()
    emb = select(pot, ["embedding"])
    assert emb and all(n.startswith("network.embedding.") for n in emb)
    block1 = select(pot, ["interaction:1"])
    assert block1 and all(n.startswith("network.interactions.1.") for n in block1)
    with pytest.raises(ConfigError, match="'interaction:7' matches no block"):
        select(pot, ["interaction:7"])
    with pytest.raises(ConfigError, match="matches no block or parameter"):
        select(pot, ["nonsense*"])
    # mace-freeze's vocabulary: the first / last N blocks in the order data flows through them
    order = ["basis", "embedding", "output:0", "interaction:0", "output:1", "interaction:1",
             "output:2"]
    assert [name for name, _ in describe_blocks(pot)] == order
    first3 = set(select(pot, ["first:3"]))
    assert first3 == set(select(pot, ["basis", "embedding", "output:0"]))
    assert set(select(pot, ["last:2"])) == set(select(pot, ["interaction:1", "output:2"]))
    assert set(select(pot, ["first:-2"])) == set(select(pot, ["last:2"]))  # negative = last
    assert set(select(pot, ["interactions"])) == set(select(pot, ["interaction:*"]))
    with pytest.raises(ConfigError, match=r"count of blocks in 1\.\.7"):
        select(pot, ["first:8"])
    # every parameter in exactly one block; the counts add up to the model's size
    sizes = dict(describe_blocks(pot))
    assert sum(sizes.values()) == sum(p.numel() for p in pot.parameters())


def test_frozen_parameters_are_bit_identical_after_training():
    train = sw_labelled(4, seed=7)
    si = small_potential(("Si",), dtype=torch.float32)
    pot = map_species(si, {"Si": "Si"})
    frozen = freeze(pot, ["embedding", "interaction:0", "output:0"])
    before = {n: p.detach().clone() for n, p in pot.named_parameters()}
    assert {n for n, p in pot.named_parameters() if not p.requires_grad} == set(frozen)
    fit(pot, LabelledSet(train, 4.0), LabelledSet(train[:2], 4.0),
        TrainConfig(epochs=3, batch_size=2, lr=1e-2))
    after = dict(pot.named_parameters())
    for name, value in before.items():
        same = torch.equal(after[name].detach(), value)
        assert same == (name in frozen), name


def test_soft_freeze_scales_learning_rate():
    pot = small_potential(("Si",), dtype=torch.float64)
    scales = lr_scales(pot, ["outputs"], 0.1)
    assert scales and all(v == 0.1 for v in scales.values())
    with pytest.raises(ConfigError):
        lr_scales(pot, ["outputs"], 2.0)
    # one Adam step moves each parameter by about lr (sign of its gradient): scaled ones by
    # 0.1 lr, the others by lr
    train = sw_labelled(2, seed=9)
    before = {n: p.detach().clone() for n, p in pot.named_parameters()}
    fit(pot, LabelledSet(train, 4.0), LabelledSet(train, 4.0),
        TrainConfig(epochs=1, batch_size=2, lr=1e-3, lr_final=1e-3, dtype="float64"),
        lr_scales=scales)
    steps = {n: (p.detach() - before[n]).abs().max().item() for n, p in pot.named_parameters()}
    scaled = [steps[n] for n in scales]
    free = [v for n, v in steps.items() if n not in scales and v > 0]
    assert max(scaled) == pytest.approx(1e-4, rel=1e-3) and free
    assert max(free) == pytest.approx(1e-3, rel=1e-3)
