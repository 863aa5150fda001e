"""`congener train | transfer | evaluate` through click's CliRunner, on tiny models."""

from __future__ import annotations

import json

import torch

from congener.data.structures import write_structures
from congener.models.checkpoint import load_potential
from tests.test_training import sw_labelled

SMALL = """model: {cutoff: 4.0, hidden: 8, out_emb: 8, int_emb: 4, num_blocks: 1,
        num_spherical: 3, num_radial: 3}
train: {epochs: 2, batch_size: 2, lr: 0.003}
"""




def test_train_transfer_evaluate(tmp_path, invoke, monkeypatch):
    write_structures(tmp_path / "si.extxyz", sw_labelled(5, seed=30))
    write_structures(tmp_path / "ge.extxyz", sw_labelled(5, seed=40, element="Ge", a=5.65))
    (tmp_path / "small.yaml").write_text(SMALL)
    si = [tmp_path / "si.extxyz", "--config", tmp_path / "small.yaml", "--val-fraction", 0.4]
    res = invoke("train", "--train", *si, "--seed", 3, "-o", tmp_path / "a")
    assert res.exit_code == 0, res.output
    assert "model:" in res.output and (tmp_path / "a" / "history.csv").is_file()
    # the same seed gives the same model (initial weights included)
    assert invoke("train", "--train", *si, "--seed", 3, "-o", tmp_path / "b").exit_code == 0
    a, b = (load_potential(tmp_path / x / "model.pt") for x in "ab")
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    meta = torch.load(tmp_path / "a" / "model.pt", weights_only=True)["metadata"]
    assert len(meta["train_data"]) == 16
    # a second stage continues from the first model's weights (here: 0 epochs changes nothing)
    si_plain = [tmp_path / "si.extxyz", "--val-fraction", 0.4]
    res = invoke("train", "--train", *si_plain, "--init", tmp_path / "a" / "model.pt",
                 "--energy-weight", 100, "--epochs", 1, "--lr", 1e-12, "--lr-final", 1e-12,
                 "-o", tmp_path / "c")
    assert res.exit_code == 0, res.output
    c = load_potential(tmp_path / "c" / "model.pt")
    for (name, pa), pc in zip(a.state_dict().items(), c.state_dict().values(), strict=True):
        if name != "energy_refs":
            torch.testing.assert_close(pa, pc, rtol=0, atol=1e-9, msg=name)
    res = invoke("train", "--train", tmp_path / "ge.extxyz", "--init", tmp_path / "a" / "model.pt",
                 "-o", tmp_path / "d")
    assert res.exit_code == 2 and "congener transfer" in res.output

    ge = ["--train", tmp_path / "ge.extxyz", "--val-fraction", 0.4, "--epochs", 2]
    res = invoke("transfer", tmp_path / "a" / "model.pt", "--map", "Si=Ge", *ge,
                 "--freeze", "embedding", "-o", tmp_path / "ge")
    assert res.exit_code == 0, res.output
    assert "frozen:" in res.output
    assert load_potential(tmp_path / "ge" / "model.pt").elements == ["Ge"]
    # corresponding-states start; rerunning a run folder resumes with the scales first fitted
    for scale in ("auto", "0.93,0.8"):
        res = invoke("transfer", tmp_path / "a" / "model.pt", "--map", "Si=Ge", *ge,
                     "--scale", scale, "-o", tmp_path / f"ge-{scale}")
        assert res.exit_code == 0 and "corresponding states" in res.output, res.output
    first = json.loads((tmp_path / "ge-auto" / "scales.json").read_text())
    import congener.training.scaling as scaling

    def refit(*args, **kwargs):
        raise AssertionError("a resumed run must not refit its scales")
    monkeypatch.setattr(scaling, "fit_scales", refit)
    for scale in ("auto", "0.93,0.8"):  # (the fixed scales carry NaN zero-shot errors)
        res = invoke("transfer", tmp_path / "a" / "model.pt", "--map", "Si=Ge", *ge,
                     "--scale", scale, "-o", tmp_path / f"ge-{scale}")
        assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "ge-auto" / "scales.json").read_text()) == first
    res = invoke("evaluate", tmp_path / "ge" / "model.pt", tmp_path / "ge.extxyz", "--by", "none",
                 "--json", tmp_path / "m.json")
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "m.json").read_text())["all"]["n"] == 5

    # bad input: one line, exit code 2, nothing written over
    res = invoke("evaluate", tmp_path / "ge" / "model.pt", tmp_path / "si.extxyz")
    assert res.exit_code == 2 and "error:" in res.output and "Si" in res.output
    res = invoke("transfer", tmp_path / "a" / "model.pt", "--map", "Si=Ge", *ge,
                 "--soft-freeze", 0.1, "-o", tmp_path / "x")
    assert res.exit_code == 2 and "--freeze" in res.output
    res = invoke("transfer", tmp_path / "a" / "model.pt", "--map", "Si=Ge", *ge,
                 "--config", tmp_path / "small.yaml", "-o", tmp_path / "x")
    assert res.exit_code == 2 and "architecture" in res.output
    (tmp_path / "broken.extxyz").write_text("3\nnot an extxyz header\nSi 0 0\n")
    res = invoke("train", "--train", tmp_path / "broken.extxyz", "-o", tmp_path / "y")
    assert res.exit_code == 2 and "error:" in res.output
