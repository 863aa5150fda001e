"""The learning-curve study end to end on tiny handmade data: runs, resume, report."""

from __future__ import annotations

import json

import numpy as np
import pytest

from congener.data.structures import write_structures
from congener.errors import ConfigError
from congener.studies.config import Mode, load_study_config, study_config
from congener.studies.learning_curve import plan_runs, run_study
from tests.test_training import sw_labelled


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("study-data")
    ge = sw_labelled(14, seed=50, element="Ge", a=5.65)
    for k, atoms in enumerate(ge):
        atoms.info["temperature"] = 300.0 if k % 2 else 2000.0
    write_structures(root / "ge.extxyz", ge)
    write_structures(root / "si.extxyz", sw_labelled(8, seed=60))
    return root


def tiny(files, **kw):
    values = {
        "name": "test", "sizes": [1, 2], "seeds": [0, 1], "modes": ["scratch", "transfer",
                                                                   "frozen"],
        "target": {"data": str(files / "ge.extxyz"), "test_size": 4, "val_size": 2},
        "source": {"data": str(files / "si.extxyz"), "val_size": 2},
        "model": {"cutoff": 4.0, "hidden": 8, "out_emb": 8, "int_emb": 4, "num_blocks": 1,
                  "num_spherical": 3, "num_radial": 3},
        "train": {"batch_size": 2}, "source_train": {"epochs": 2, "batch_size": 4},
        "budget": {"updates": 2, "min_epochs": 1, "max_epochs": 2, "validations": 2},
        "temperature": {"temperature_K": 2000, "sizes": [1]},
        "phonons": None, "md": None,
    }
    values.update(kw)
    return study_config(values)


def test_nested_training_sets_and_shared_validation(files):
    from congener.data.structures import read_structures

    cfg = tiny(files, sizes=[1, 2, 4])
    pool = read_structures(files / "ge.extxyz")
    runs = [r for r in plan_runs(cfg, pool) if r.kind == "curve"]
    for seed in cfg.seeds:
        mine = {(r.mode, r.size): r for r in runs if r.seed == seed}
        assert set(mine[(Mode.scratch, 1)].train_idx) <= set(mine[(Mode.scratch, 2)].train_idx)
        assert set(mine[(Mode.scratch, 2)].train_idx) <= set(mine[(Mode.scratch, 4)].train_idx)
        # scratch and transfer see the same data; validation never overlaps training
        assert mine[(Mode.scratch, 4)].train_idx == mine[(Mode.transfer, 4)].train_idx
        assert not set(mine[(Mode.scratch, 4)].val_idx) & set(mine[(Mode.scratch, 4)].train_idx)
    temp_runs = [r for r in plan_runs(cfg, pool) if r.kind == "temperature"]
    assert len(temp_runs) == len(cfg.seeds) * len(cfg.modes)
    assert all(pool[k].info["temperature"] == 2000.0 for r in temp_runs for k in r.train_idx)


def test_study_runs_resumes_and_reports(files, tmp_path):
    cfg = tiny(files, seeds=[0], phonons={"runs": "curve", "size": 1, "reference": "largest"},
               md={"sizes": [1], "trajectories": 2, "steps": 6, "sample_every": 2})
    report = run_study(cfg, tmp_path / "study")
    text = report.read_text()
    assert "Learning curve" in text and "Temperature transferability" in text
    assert "Phonon density of states" in text and "| scratch | 1 |" in text
    assert (tmp_path / "study" / "validation" / "phonons").is_dir()
    md = json.loads((tmp_path / "study" / "validation" / "md" / "transfer-n1-s0.json")
                    .read_text())
    assert md["summary"]["total"] == 2
    assert (tmp_path / "study" / "learning_curves.png").stat().st_size > 10_000
    lines = (tmp_path / "study" / "results.csv").read_text().strip().splitlines()
    from congener.data.structures import read_structures
    assert len(read_structures(tmp_path / "study" / "data" / "target_test.extxyz")) == 4
    assert len(lines) == 1 + 2 * 3 + 3  # header, curve runs (2 sizes x 3 modes), temperature
    # frozen mode really froze: its config lists the frozen parameters
    frozen_cfg = json.loads((tmp_path / "study" / "runs" / "frozen-n1-s0" / "config.json")
                            .read_text())
    assert any(n.startswith("network.embedding") for n in frozen_cfg["frozen"])
    from congener.studies.learning_curve import report_only
    assert report_only(cfg, tmp_path / "study")[1] == 2 * 3 + 3
    # rerun: nothing is retrained, results identical
    stamp = (tmp_path / "study" / "runs" / "scratch-n2-s0" / "metrics.json").stat().st_mtime
    run_study(cfg, tmp_path / "study")
    assert (tmp_path / "study" / "runs" / "scratch-n2-s0" / "metrics.json").stat().st_mtime \
        == stamp
    assert (tmp_path / "study" / "results.csv").read_text().strip().splitlines() == lines
    metrics = json.loads((tmp_path / "study" / "runs" / "transfer-n2-s0" / "metrics.json")
                         .read_text())
    assert np.isfinite(metrics["test"]["force_mae"])


def test_config_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("sizes: [0, 2]\n")
    with pytest.raises(ConfigError, match="sizes must be positive"):
        load_study_config(bad)
    bad.write_text("modes: [scratch, warm]\n")
    with pytest.raises(ConfigError, match="modes"):
        load_study_config(bad)
    bad.write_text("train: {lr: -1}\n")
    with pytest.raises(ConfigError, match=r"train\.lr must be > 0"):
        load_study_config(bad)
