"""Trainer: lowers the force error, fits energy references, resumes, stops on NaN."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from ase.units import GPa

from congener.data.lammps_sw import LammpsSWCalculator
from congener.data.structures import label
from congener.errors import CheckpointError, ConfigError, DataError, SimulationUnstable
from congener.models.checkpoint import load_potential
from congener.training.config import TrainConfig
from congener.training.data import LabelledSet
from congener.training.refs import fit_energy_refs, network_energies
from congener.training.trainer import fit, validate
from tests.conftest import rattled_diamond, small_potential


def sw_labelled(n: int, seed: int = 0, element: str = "Si", a: float = 5.43):
    calc = LammpsSWCalculator(element)
    out = []
    for k in range(n):
        atoms = rattled_diamond(element, a=a, amount=0.15, seed=seed + k, shear=0.05 * (k % 3))
        atoms.calc = calc
        e, f, s = atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
        out.append(label(atoms.copy(), energy=e, forces=f, stress=s, group="rattled"))
    return out


@pytest.fixture(scope="module")
def sw_sets():
    return sw_labelled(12, seed=0), sw_labelled(4, seed=100)


def test_training_lowers_force_error(sw_sets, tmp_path):
    train, val = sw_sets
    pot = small_potential(cutoff=4.0, dtype=torch.float32)
    cfg = TrainConfig(epochs=15, batch_size=4, lr=3e-3, lr_final=1e-3, seed=1)
    tset, vset = LabelledSet(train, 4.0), LabelledSet(val, 4.0)
    before = validate(pot, vset, cfg)["val_force_mae"]
    result = fit(pot, tset, vset, cfg, run_dir=tmp_path / "run")
    after = result.best_val["val_force_mae"]
    assert after < 0.7 * before, (before, after)
    assert (tmp_path / "run" / "model.pt").is_file()
    assert len(result.history) == 15


def test_force_only_fits_energy_constant(sw_sets):
    train, _ = sw_sets
    # mixed cell sizes: the constant is the mean per-atom offset, each structure weighing alike
    calc = LammpsSWCalculator("Si")
    big = rattled_diamond("Si", amount=0.3, seed=77).repeat((2, 2, 1))
    big.calc = calc
    big = label(big.copy(), energy=big.get_potential_energy(), forces=big.get_forces())
    data = LabelledSet([*train[:3], big], 4.0)
    pot = small_potential(cutoff=4.0)
    refs = fit_energy_refs(pot, data)
    # with the constant fitted, the mean per-atom energy residual vanishes
    resid = (data.energy.numpy() - network_energies(pot, data)) / data.n_atoms.numpy()
    assert np.mean(resid - refs["Si"]) == pytest.approx(0.0, abs=1e-10)


def test_energy_mode_refits_references_after_training(sw_sets, tmp_path):
    train, val = sw_sets
    cfg = TrainConfig(epochs=3, batch_size=4, lr=3e-3, seed=3, dtype="float64",
                      energy_weight=1.0)
    tset, vset = LabelledSet(train, 4.0), LabelledSet(val, 4.0)
    pot = small_potential(cutoff=4.0)
    fit(pot, tset, vset, cfg, run_dir=tmp_path / "run")
    per_atom = tset.energy.numpy() / tset.n_atoms.numpy()

    def residual(p):  # per-atom energy errors on the training data, references included
        return (network_energies(p, tset) / tset.n_atoms.numpy() + p.get_energy_refs()["Si"]
                - per_atom)

    # the final references are the least-squares constant of the final weights: no mean offset
    assert np.mean(residual(pot)) == pytest.approx(0.0, abs=1e-10)
    # best.pt holds the same weights with the references fitted before training: an offset
    # remains there, and the refit can only lower the training energy MSE
    before = load_potential(tmp_path / "run" / "best.pt", dtype=torch.float64)
    assert abs(np.mean(residual(before))) > 1e-4
    assert np.mean(residual(pot) ** 2) < np.mean(residual(before) ** 2)
    saved = load_potential(tmp_path / "run" / "model.pt", dtype=torch.float64)
    assert saved.get_energy_refs() == pot.get_energy_refs()


@pytest.mark.parametrize("ema_decay", [0.0, 0.5])
def test_resume_continues_identically(sw_sets, tmp_path, ema_decay):
    train, val = sw_sets
    # with the moving average also a warm-up that runs across the interruption (3 steps/epoch)
    cfg = TrainConfig(epochs=4, batch_size=4, lr=3e-3, seed=2, dtype="float64",
                      ema_decay=ema_decay, warmup_steps=8 if ema_decay else 0)
    tset, vset = LabelledSet(train, 4.0), LabelledSet(val, 4.0)
    full = fit(small_potential(cutoff=4.0), tset, vset, cfg, run_dir=tmp_path / "a")
    # stop after 2 epochs by raising from the callback, then resume
    def stop(row):
        if row["epoch"] == 1:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        fit(small_potential(cutoff=4.0), tset, vset, cfg, run_dir=tmp_path / "b", callback=stop)
    if not ema_decay:  # a checkpoint of an older version, without the settings added since
        last = torch.load(tmp_path / "b" / "last.pt", weights_only=False)
        for key in ("loss", "huber_delta", "ema_decay", "warmup_steps"):
            del last["config"][key]
        del last["ema"], last["identity"]
        torch.save(last, tmp_path / "b" / "last.pt")
    resumed = fit(small_potential(cutoff=4.0), tset, vset, cfg, run_dir=tmp_path / "b")
    a = [r["val_force_mae"] for r in full.history]
    b = [r["val_force_mae"] for r in resumed.history]
    np.testing.assert_allclose(a, b, rtol=1e-10)
    for p, q in zip(full_params := list(load_potential(tmp_path / "a" / "model.pt").parameters()),
                    load_potential(tmp_path / "b" / "model.pt").parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=0)
    assert full_params
    with pytest.raises(CheckpointError, match="another training configuration"):
        fit(small_potential(cutoff=4.0), tset, vset, TrainConfig(epochs=5, seed=2,
                                                                 dtype="float64"),
            run_dir=tmp_path / "b")


def test_nan_stops_with_clear_error(sw_sets, tmp_path):
    train, val = sw_sets
    pot = small_potential(cutoff=4.0)
    with torch.no_grad():
        pot.network.outputs[1].lins[0].weight.fill_(float("nan"))
    with pytest.raises(SimulationUnstable, match="epoch 0"):
        fit(pot, LabelledSet(train, 4.0), LabelledSet(val, 4.0), TrainConfig(epochs=2),
            run_dir=tmp_path / "nan")


def test_nan_after_good_epochs_keeps_best_model(sw_sets, tmp_path):
    train, val = sw_sets
    pot = small_potential(cutoff=4.0)
    cfg = TrainConfig(epochs=4, batch_size=4, seed=3)

    def poison(row):
        if row["epoch"] == 1:
            with torch.no_grad():
                pot.network.outputs[1].lins[0].weight.fill_(float("nan"))

    with pytest.raises(SimulationUnstable, match=r"epoch 2.*best model so far.*model\.pt"):
        fit(pot, LabelledSet(train, 4.0), LabelledSet(val, 4.0), cfg, run_dir=tmp_path / "r",
            callback=poison)
    assert all(torch.isfinite(v).all() for v in pot.state_dict().values())
    saved = load_potential(tmp_path / "r" / "model.pt")
    assert all(torch.isfinite(v).all() for v in saved.state_dict().values())
    meta = torch.load(tmp_path / "r" / "model.pt", weights_only=True)["metadata"]
    assert "stopped" in meta["note"]


def test_resume_ignores_threads_and_keeps_early_stop(sw_sets, tmp_path):
    train, val = sw_sets
    tset, vset = LabelledSet(train, 4.0), LabelledSet(val, 4.0)
    cfg = TrainConfig(epochs=30, batch_size=4, lr=1e-9, lr_final=1e-9, seed=4, patience=2,
                      threads=1)
    first = fit(small_potential(cutoff=4.0), tset, vset, cfg, run_dir=tmp_path / "r")
    assert first.stopped_early and len(first.history) < 30
    # a rerun with another thread count resumes, and the early-stopped run stays stopped
    again = fit(small_potential(cutoff=4.0), tset, vset, replace(cfg, threads=2),
                run_dir=tmp_path / "r")
    assert again.stopped_early and len(again.history) == len(first.history)


def test_patience_counts_epochs_not_validations(sw_sets):
    train, val = sw_sets
    pot = small_potential(cutoff=4.0)
    names = [n for n, _ in pot.named_parameters()]
    for name, p in pot.named_parameters():
        p.requires_grad_(name == names[0])
    # one trainable tensor at learning rate 0: the first validation (epoch 1) stays the best
    cfg = TrainConfig(epochs=20, batch_size=4, seed=6, val_every=2, patience=3)
    result = fit(pot, LabelledSet(train, 4.0), LabelledSet(val, 4.0), cfg,
                 lr_scales={names[0]: 0.0})
    assert result.best_epoch == 1 and result.stopped_early
    assert len(result.history) == 6  # validated at epochs 1, 3, 5; 5 - 1 >= 3


def test_resume_refuses_another_model_data_or_freezing(sw_sets, tmp_path):
    train, val = sw_sets
    cfg = TrainConfig(epochs=1, batch_size=4, seed=5)
    tset, vset = LabelledSet(train, 4.0), LabelledSet(val, 4.0)
    meta = {"source_model": "si.pt"}
    fit(small_potential(cutoff=4.0), tset, vset, cfg, run_dir=tmp_path / "r", metadata=meta)
    # the same setup reruns (the run is finished: nothing left to train)
    fit(small_potential(cutoff=4.0), tset, vset, cfg, run_dir=tmp_path / "r", metadata=meta)
    frozen = small_potential(cutoff=4.0)
    frozen.network.embedding.emb.weight.requires_grad_(False)
    moved = [a.copy() for a in train]
    for a, b in zip(moved, train, strict=True):
        a.calc = b.calc
    moved[3].positions[0, 0] += 1e-3
    changed = {  # what the rerun changes -> what the refusal says differs
        r"model settings \(cutoff\)": (small_potential(cutoff=3.5), tset, vset, None),
        "training data": (small_potential(cutoff=4.0), LabelledSet(moved, 4.0), vset, None),
        "validation data": (small_potential(cutoff=4.0), tset, LabelledSet(val[:3], 4.0), None),
        "frozen parameters": (frozen, tset, vset, None),
        "soft-frozen parameters": (small_potential(cutoff=4.0), tset, vset,
                                   {"network.embedding.emb.weight": 0.1}),
    }
    for what, (pot, t, v, scales) in changed.items():
        with pytest.raises(CheckpointError, match=f"other {what};"):
            fit(pot, t, v, cfg, run_dir=tmp_path / "r", lr_scales=scales, metadata=meta)
    # where the starting weights came from is no part of it (the checkpoint's are used)
    fit(small_potential(cutoff=4.0, seed=1), tset, vset, cfg, run_dir=tmp_path / "r",
        metadata={"source_model": "./si.pt"})


def test_empty_sets_are_refused_by_name():
    with pytest.raises(DataError, match="validation set holds no structures"):
        LabelledSet([], 4.0, name="validation set")


def test_checkpoint_roundtrip_and_corruption(sw_sets, tmp_path):
    train, _ = sw_sets
    pot = small_potential(cutoff=4.0, dtype=torch.float64)
    from congener.models.checkpoint import save_potential
    from congener.testing import predict
    save_potential(tmp_path / "m.pt", pot, {"note": "x"})
    back = load_potential(tmp_path / "m.pt", dtype=torch.float64)
    np.testing.assert_allclose(predict(back, train[0]).forces.numpy(),
                               predict(pot, train[0]).forces.numpy(), rtol=1e-12)
    assert back.get_energy_refs() == pot.get_energy_refs()
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable"):
        load_potential(tmp_path / "bad.pt")


def test_config_rejects_bad_values():
    with pytest.raises(ConfigError, match=r"train\.lr must be > 0"):
        TrainConfig(lr=-0.1)
    with pytest.raises(ConfigError, match=r"train\.loss must be mse or huber"):
        TrainConfig(loss="l1")
    with pytest.raises(ConfigError, match=r"train\.ema_decay must be in \[0, 1\)"):
        TrainConfig(ema_decay=1.0)
    with pytest.raises(ConfigError, match=r"unknown key train\.epoch"):
        TrainConfig.from_dict({"epoch": 3})


def test_ema_keeps_the_moving_average_of_the_step_weights(sw_sets):
    """One step per epoch: the kept model is e_k = d e_(k-1) + (1 - d) w_k at the best epoch."""
    train, val = sw_sets
    decay = 0.6
    cfg = TrainConfig(epochs=5, batch_size=len(train), lr=3e-3, seed=3, dtype="float64",
                      energy_weight=10.0, ema_decay=decay)
    pot = small_potential(cutoff=4.0)
    steps: list[list[torch.Tensor]] = []
    result = fit(pot, LabelledSet(train, 4.0), LabelledSet(val, 4.0), cfg,
                 callback=lambda row: steps.append([p.detach().clone()
                                                    for p in pot.parameters()]))
    ema = steps[0]
    averages = [ema]
    for weights in steps[1:]:
        ema = [decay * e + (1 - decay) * w for e, w in zip(ema, weights, strict=True)]
        averages.append(ema)
    assert result.best_epoch > 0  # at epoch 0 the average is the raw weights
    expected = averages[result.best_epoch]
    # the raw weights moved on after the best epoch; the kept ones are its moving average
    for p, q in zip(pot.parameters(), expected, strict=True):
        torch.testing.assert_close(p.detach(), q, rtol=1e-9, atol=1e-12)
    assert not all(torch.equal(a, b) for a, b in zip(steps[-1], expected, strict=True))


def test_huber_loss_is_quadratic_below_delta_and_linear_above():
    from congener.models.potential import Prediction
    from congener.training.data import Targets
    from congener.training.losses import loss

    forces = torch.tensor([[0.005, -0.5, 0.0], [0.02, 0.0, -0.003]], dtype=torch.float64)
    pred = Prediction(energy=torch.tensor([1.03], dtype=torch.float64), forces=forces)
    ref = Targets(energy=torch.tensor([1.0], dtype=torch.float64), forces=torch.zeros_like(forces),
                  stress=torch.zeros(1, 3, 3, dtype=torch.float64),
                  has_stress=torch.tensor([False]), n_atoms=torch.tensor([2.0],
                                                                         dtype=torch.float64))
    delta = 0.01
    cfg = TrainConfig(loss="huber", huber_delta=delta, energy_weight=2.0, force_weight=3.0)

    def huber(x):
        return torch.where(x.abs() < delta, 0.5 * x**2, delta * (x.abs() - 0.5 * delta)).mean()

    huber_e = delta * (0.015 - 0.5 * delta)  # |error| 0.015 eV/atom > delta: linear branch
    terms = loss(pred, ref, cfg)
    assert float(terms.total) == pytest.approx(2.0 * huber_e + 3.0 * float(huber(forces)),
                                               rel=1e-12)
    # the stress term, in GPa: diagonal errors 0.005 (quadratic) and 2 GPa (linear)
    gpa = np.diag([0.005, 2.0, 0.0])
    pred.stress = torch.tensor(gpa * GPa, dtype=torch.float64).unsqueeze(0)
    ref.has_stress = torch.tensor([True])
    with_stress = loss(pred, ref, replace(cfg, stress_weight=0.5))
    assert float(with_stress.total) == pytest.approx(
        float(terms.total) + 0.5 * float(huber(torch.tensor(gpa))), rel=1e-10)
    assert float(with_stress.stress_mse) == pytest.approx(float(np.mean(gpa**2)), rel=1e-10)
    # the logged terms stay plain mean squared errors
    assert float(terms.force_mse) == pytest.approx(float((forces**2).mean()), rel=1e-12)
    assert float(terms.energy_mse) == pytest.approx(0.015**2, rel=1e-12)
    mse = loss(pred, ref, TrainConfig(energy_weight=2.0, force_weight=3.0))
    assert float(mse.total) == pytest.approx(2.0 * 0.015**2 + 3.0 * float((forces**2).mean()))


@pytest.mark.parametrize("weights", [None, [2.0, 5.0, 1.0]])
def test_stress_term_counts_only_labelled_structures(weights):
    """Three structures, the second without a stress label: the stress term is the mean
    over the labelled ones' components (weighted by their structure weights), whatever the
    unlabelled one's stress prediction; a batch with no label adds nothing."""
    from congener.models.potential import Prediction
    from congener.training.data import Targets
    from congener.training.losses import loss

    f64 = torch.float64
    forces = torch.zeros(3, 3, dtype=f64)
    errors = [np.diag([1.0, 0.0, 0.0]), np.full((3, 3), 50.0), np.diag([0.0, 3.0, 0.0])]
    pred = Prediction(energy=torch.zeros(3, dtype=f64), forces=forces,
                      stress=torch.tensor(np.stack(errors) * GPa, dtype=f64))
    w = None if weights is None else torch.tensor(weights, dtype=f64)
    ref = Targets(energy=torch.zeros(3, dtype=f64), forces=forces,
                  stress=torch.zeros(3, 3, 3, dtype=f64),
                  has_stress=torch.tensor([True, False, True]),
                  n_atoms=torch.tensor([1, 1, 1]), weight=w)
    cfg = TrainConfig(energy_weight=1.0, force_weight=1.0, stress_weight=1.0)
    rows = [1.0 / 9, 9.0 / 9]  # mean squared component of structures 0 and 2 (GPa^2)
    rw = [1.0, 1.0] if weights is None else [weights[0], weights[2]]
    expected = (rw[0] * rows[0] + rw[1] * rows[1]) / (rw[0] + rw[1])
    terms = loss(pred, ref, cfg)
    assert float(terms.total) == pytest.approx(expected, rel=1e-12)
    assert float(terms.stress_mse) == pytest.approx(np.mean(rows), rel=1e-12)
    ref.has_stress = torch.tensor([False, False, False])
    none = loss(pred, ref, cfg)
    assert float(none.total) == 0.0 and float(none.stress_mse) == 0.0


@pytest.mark.parametrize("warmup", [0, 3])
def test_warmup_scales_the_first_updates(sw_sets, warmup):
    """Adam's first update moves every weight by lr * g / |g| = +-lr; with warm-up over w
    updates the first one is lr / (w + 1)."""
    train, val = sw_sets
    lr = 1e-3
    cfg = TrainConfig(epochs=1, batch_size=len(train), lr=lr, lr_final=lr, seed=0,
                      dtype="float64", energy_weight=1.0, warmup_steps=warmup)
    pot = small_potential(cutoff=4.0).to(torch.float64)
    before = [p.detach().clone() for p in pot.parameters()]
    fit(pot, LabelledSet(train, 4.0), LabelledSet(val, 4.0), cfg)
    steps = torch.cat([(p.detach() - b).abs().flatten()
                       for p, b in zip(pot.parameters(), before, strict=True)])
    moved = steps[steps > 0]
    assert moved.numel() > 0.5 * steps.numel()
    torch.testing.assert_close(moved.median(), torch.tensor(lr / (warmup + 1), dtype=moved.dtype),
                               rtol=1e-4, atol=0)  # Adam eps: g / (|g| + 1e-8)
