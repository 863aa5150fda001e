"""The learning-curve study end to end on tiny handmade data: runs, resume, report."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from congener.data.structures import write_structures
from congener.errors import ConfigError
from congener.studies.config import Mode, config_from_dict, load_study_config, study_config
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


def tiny_values(files, **kw) -> dict:
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
    return values


def tiny(files, **kw):
    return study_config(tiny_values(files, **kw))


def test_md_stage_melts_at_the_liquid_density(files, tmp_path):
    """md.density_g_cm3 scales the start cell, md.melt_steps runs a melting phase first
    (stored, not analysed): every trajectory is accounted for once."""
    cfg = tiny(files, sizes=[1], seeds=[0], modes=["scratch"], temperature=None, workers=1,
               md={"sizes": [1], "trajectories": 2, "steps": 4, "sample_every": 2,
                   "density_g_cm3": 5.6, "melt_K": 2500, "melt_steps": 4})
    text = run_study(cfg, tmp_path / "s").read_text()
    md_dir = tmp_path / "s" / "validation" / "md"
    melt = json.loads((md_dir / "scratch-n1-s0.melt.json").read_text())
    assert melt["summary"]["temperature_K"] == 2500.0 and melt["summary"]["steps"] == 4
    run = json.loads((md_dir / "scratch-n1-s0.json").read_text())
    assert len(run["records"]) == 2  # failures in the melt + production trajectories
    assert len(melt["final"]) + len(melt["failed"]) == 2
    assert "at 5.60 g/cm³" in text and "at 2500 K to melt it" in text
    assert not list(md_dir.glob("*.ckpt"))
    # another protocol on the same models needs its own folder; a stored one is not reused
    other = dict(cfg.md.__dict__, density_g_cm3=5.3)
    with pytest.raises(ConfigError, match=r"other settings \(density_g_cm3\).*md\.name"):
        run_study(replace(cfg, md=type(cfg.md)(**other)), tmp_path / "s")
    run_study(replace(cfg, md=type(cfg.md)(**dict(other, name="md-5_3"))), tmp_path / "s")
    assert (tmp_path / "s" / "validation" / "md-5_3" / "scratch-n1-s0.json").is_file()


def test_study_cli_shows_each_phase_with_its_total(files, tmp_path, capsys):
    from congener.cli import main

    path = tmp_path / "study.yaml"  # JSON is YAML
    path.write_text(json.dumps(tiny_values(
        files, sizes=[1], seeds=[0], modes=["scratch"], temperature=None, workers=1,
        hpo={"size": 1, "lr": [0.001, 0.003]})))
    code = main(["study", str(path), "-o", str(tmp_path / "s")])
    out, err = capsys.readouterr()
    assert code == 0, out + err
    assert "search: 100%" in err and " 2/2 " in err  # two search runs
    assert "runs: 100%" in err and " 1/1 " in err  # one curve run
    assert "| 1 |" in out and "report:" in out  # the table, then where the report is


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
               md={"sizes": [1], "trajectories": 2, "steps": 6, "sample_every": 2,
                   "arms": ["scratch", "transfer"], "checkpoint_every": 2})
    report = run_study(cfg, tmp_path / "study")
    text = report.read_text()
    assert "Learning curve" in text and "Temperature transferability" in text
    assert "Phonon density of states" in text and "| scratch | 1 |" in text
    assert (tmp_path / "study" / "validation" / "phonons").is_dir()
    md = json.loads((tmp_path / "study" / "validation" / "md" / "transfer-n1-s0.json")
                    .read_text())
    assert md["summary"]["total"] == 2
    rate = md["summary"]["system_steps_per_s"]
    assert rate > 0 and "system-steps/s per model" in text  # the speed the MD ran at
    md_dir = tmp_path / "study" / "validation" / "md"
    assert not (md_dir / "frozen-n1-s0.json").exists()  # md.arms leaves frozen out
    assert not list(md_dir.glob("*.ckpt"))  # checkpoints go once a model's result is stored
    with pytest.raises(ConfigError, match=r"md\.arms: the study has no arm 'scaled'"):
        tiny(files, md={"arms": ["scaled"]})
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
    path, count = report_only(cfg, tmp_path / "study")
    assert count == 2 * 3 + 3
    # the validation sections come back from their caches
    again = path.read_text()
    assert "Phonon density of states" in again and "Molecular dynamics" in again
    # ... under the study's own settings only
    with pytest.raises(ConfigError, match=r"other settings \(budget\)"):
        report_only(replace(cfg, budget=replace(cfg.budget, updates=3)), tmp_path / "study")
    # a cache cut short by an interrupt is redone on the rerun, not a traceback
    md_cache = tmp_path / "study" / "validation" / "md" / "transfer-n1-s0.json"
    md_cache.write_text(md_cache.read_text()[:100])
    # rerun: nothing is retrained, results identical
    stamp = (tmp_path / "study" / "runs" / "scratch-n2-s0" / "metrics.json").stat().st_mtime
    phases, done = [], []
    run_study(cfg, tmp_path / "study", on_start=lambda phase, n: phases.append((phase, n)),
              on_done=lambda spec, res: done.append(spec.name))
    assert phases == [("runs", 2 * 3 + 3)] and len(done) == 2 * 3 + 3  # totals for the bars
    assert (tmp_path / "study" / "runs" / "scratch-n2-s0" / "metrics.json").stat().st_mtime \
        == stamp
    assert (tmp_path / "study" / "results.csv").read_text().strip().splitlines() == lines
    metrics = json.loads((tmp_path / "study" / "runs" / "transfer-n2-s0" / "metrics.json")
                         .read_text())
    assert np.isfinite(metrics["test"]["force_mae"])
    assert json.loads(md_cache.read_text())["summary"]["total"] == 2


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


def test_failed_run_is_recorded_and_retried(files, tmp_path, monkeypatch):
    import congener.studies.run as run_module
    from congener.errors import CongenerError, SimulationUnstable

    cfg = tiny(files, seeds=[0], modes=["scratch"], temperature=None, workers=1)
    original = run_module.run_one

    def flaky(study_dir, cfg_dict, spec_dict, threads=0):
        if spec_dict["name"] == "scratch-n2-s0":
            raise SimulationUnstable("training loss became nan at epoch 0")
        return original(study_dir, cfg_dict, spec_dict, threads)

    monkeypatch.setattr(run_module, "run_one", flaky)
    with pytest.raises(CongenerError, match=r"1 run\(s\) failed \(scratch-n2-s0\)"):
        run_study(cfg, tmp_path / "s")
    runs = tmp_path / "s" / "runs"
    assert (runs / "scratch-n1-s0" / "metrics.json").is_file()  # the other run finished
    assert "nan at epoch 0" in json.loads((runs / "scratch-n2-s0" / "failed.json")
                                          .read_text())["error"]
    assert "scratch-n2-s0`: training loss became nan" in (tmp_path / "s" / "report.md").read_text()
    monkeypatch.setattr(run_module, "run_one", original)
    run_study(cfg, tmp_path / "s")  # the retry succeeds and clears the failure
    assert (runs / "scratch-n2-s0" / "metrics.json").is_file()
    assert not (runs / "scratch-n2-s0" / "failed.json").exists()
    assert "Failed runs" not in (tmp_path / "s" / "report.md").read_text()
    # finished runs belong to their settings: another learning rate needs another folder
    with pytest.raises(ConfigError, match=r"other settings \(train\)"):
        run_study(tiny(files, seeds=[0], modes=["scratch"], temperature=None, workers=1,
                       train={"batch_size": 2, "lr": 0.01}), tmp_path / "s")
    # but more seeds may be added to the same folder
    run_study(tiny(files, seeds=[0, 1], modes=["scratch"], temperature=None, workers=1),
              tmp_path / "s")
    assert (runs / "scratch-n2-s1" / "metrics.json").is_file()


def test_paired_improvement_counts_wins():
    from congener.studies.report import paired_improvement

    table = [{"kind": "curve", "mode": m, "size": 10, "seed": k, "force_mae": v}
             for m, vals in (("scratch", [0.2, 0.1, 0.3]), ("transfer", [0.1, 0.2, 0.15]))
             for k, v in enumerate(vals)]
    mean, std, wins, n = paired_improvement(table, "force_mae")[10]
    gains = [50.0, -100.0, 50.0]
    assert (wins, n) == (2, 3)
    assert mean == pytest.approx(np.mean(gains)) and std == pytest.approx(np.std(gains, ddof=1))


def test_search_over_learning_rate_and_decay(files):
    from congener.data.structures import read_structures
    from congener.studies.learning_curve import plan_hpo
    from congener.studies.run import run_config
    from congener.studies.selection import choose

    cfg = tiny(files, hpo={"size": 2, "lr": [1e-3, 3e-3], "decay": [0.1, 0.01]})
    pool = read_structures(files / "ge.extxyz")
    runs = plan_hpo(cfg, pool)
    assert len(runs) == 3 * 2 * 2 and {r.kind for r in runs} == {"hpo"}
    assert len({r.name for r in runs}) == len(runs)
    # the lowest validation loss wins, per mode; the curve runs then use its lr and decay
    scores = {(r.lr, r.decay): (1.0 if (r.lr, r.decay) != (3e-3, 0.01) else 0.5) for r in runs}
    choices = choose(cfg, [(r, {"val": {"val_loss": scores[(r.lr, r.decay)]}}) for r in runs])
    assert choices[Mode.scratch] == (3e-3, 0.01, ())
    # runs that never validated a finite loss lose, and do not stop the study
    never = {(1e-3, 0.1): {"val": {}}, (1e-3, 0.01): {"val": {"val_loss": float("nan")}}}
    choices_nan = choose(cfg, [(r, never.get((r.lr, r.decay), {"val": {"val_loss": 2.0}}))
                               for r in runs])
    assert choices_nan[Mode.scratch] == (3e-3, 0.1, ())
    curve = [r for r in plan_runs(cfg, pool, choices) if r.kind == "curve"]
    tcfg = run_config(cfg, curve[0].size, 0, curve[0].lr, 1, curve[0].decay)
    assert tcfg.lr == 3e-3 and tcfg.lr_final == pytest.approx(3e-5)
    with pytest.raises(ConfigError, match=r"hpo\.decay"):
        tiny(files, hpo={"lr": [1e-3], "decay": [2.0]})


def test_kfold_search_judges_every_structure_once_and_averages_the_folds(files):
    from congener.data.structures import read_structures
    from congener.studies.learning_curve import plan_hpo
    from congener.studies.run import run_config
    from congener.studies.selection import choose

    hpo = {"size": 2, "lr": [1e-3], "grid": {"energy_weight": [1, 30]},
           "metric": "val_force_mae", "folds": 2}
    cfg = tiny(files, modes=["scratch"], hpo=hpo)
    pool = read_structures(files / "ge.extxyz")
    curve = next(r for r in plan_runs(cfg, pool) if r.kind == "curve" and r.size == 2
                 and r.seed == cfg.seeds[0])
    runs = plan_hpo(cfg, pool)
    assert len(runs) == 2 * 2  # two candidates x two folds
    for cand in ((("energy_weight", 1.0),), (("energy_weight", 30.0),)):
        folds = [r for r in runs if r.settings == cand]
        vals = [set(r.val_idx) for r in folds]
        # every structure of the first seed's training and validation sets is judged once
        assert set().union(*vals) == set(curve.train_idx) | set(curve.val_idx)
        assert sum(len(v) for v in vals) == len(curve.train_idx) + len(curve.val_idx)
        assert all(not set(r.train_idx) & set(r.val_idx) for r in folds)
    # weight 30 wins fold 0 by a little and loses fold 1 by a lot: the mean decides
    score = {(1.0, 0): 0.10, (1.0, 1): 0.10, (30.0, 0): 0.09, (30.0, 1): 0.30}
    res = [(r, {"val": {"val_force_mae": score[(r.settings[0][1], r.fold)],
                        "val_loss": 0.0}}) for r in runs]
    choice = choose(cfg, res)["scratch"]
    assert choice == (1e-3, None, (("energy_weight", 1.0),))
    spec = next(r for r in plan_runs(cfg, pool, {"scratch": choice}) if r.kind == "curve")
    assert run_config(cfg, 2, 0, spec.lr, 1, spec.decay, spec.settings).energy_weight == 1.0
    # balanced: energy and force MAE over the arm's best of each; here weight 1 has the best
    # forces, weight 30 much better energies and slightly worse forces: balanced takes 30
    both = {1.0: (10.0, 0.10), 30.0: (5.0, 0.11)}
    res = [(r, {"val": {"val_energy_mae": both[r.settings[0][1]][0],
                        "val_force_mae": both[r.settings[0][1]][1]}}) for r in runs]
    assert choose(cfg, res)["scratch"][2] == (("energy_weight", 1.0),)
    balanced = replace(cfg, hpo=replace(cfg.hpo, metric="balanced"))
    assert choose(balanced, res)["scratch"][2] == (("energy_weight", 30.0),)
    # the controls of a scaled arm are not searched: they take the choice of the arm they
    # control (transfer-rc has no transfer arm here: it is searched itself)
    with_controls = tiny(files, modes=["scratch", "scaled"], hpo=hpo)
    searched = {r.mode for r in plan_hpo(with_controls, pool)}
    assert searched == {"scratch", "scaled", "transfer-rc"}
    fake = [(r, {"val": {"val_force_mae": 1.0 if r.settings[0][1] == 30.0 else 2.0}})
            for r in plan_hpo(with_controls, pool)]
    chosen = choose(with_controls, fake)
    assert chosen["scratch-rc"] == chosen["scratch"] and chosen["scratch"][2][0][1] == 30.0
    # losses of different weights are not comparable: a weight grid needs a MAE as metric
    with pytest.raises(ConfigError, match="not comparable"):
        tiny(files, hpo={**hpo, "metric": "val_loss"})
    with pytest.raises(ConfigError, match=r"hpo\.grid: 'lr'"):
        tiny(files, hpo={**hpo, "grid": {"lr": [1e-3]}})
    with pytest.raises(ConfigError, match=r"hpo\.folds"):
        tiny(files, hpo={**hpo, "folds": 1})


def test_search_runs_never_read_the_test_set(files, tmp_path):
    """A study with a search: the search runs finish with the test file made unreadable, the
    report states the protocol and the choice; the curve runs read the test set."""
    from congener.data.structures import read_structures
    from congener.studies.config import RunSpec
    from congener.studies.learning_curve import plan_hpo
    from congener.studies.run import run_one

    cfg = tiny(files, sizes=[2], seeds=[0], modes=["scratch"], temperature=None, workers=1,
               hpo={"size": 2, "lr": [1e-3, 3e-3], "folds": 2})
    study = tmp_path / "s"
    report = run_study(cfg, study).read_text()
    assert "## Selection protocol" in report and "2-fold cross-validation" in report
    assert report.count("**yes**") == 1
    searched = [d for d in (study / "runs").iterdir() if d.name.startswith("hpo-")]
    assert len(searched) == 4
    for d in searched:
        assert "test" not in json.loads((d / "metrics.json").read_text())
    assert "test" in json.loads((study / "runs" / "scratch-n2-s0" / "metrics.json").read_text())
    # rerun one search run with the test file corrupted: it must not notice
    spec: RunSpec = plan_hpo(cfg, read_structures(study / "data" / "target_pool.extxyz"))[0]
    (study / "runs" / spec.name / "metrics.json").unlink()
    (study / "data" / "target_test.extxyz").write_text("not a structure file\n")
    from dataclasses import asdict

    res = run_one(str(study), cfg.as_dict(), asdict(spec), threads=1)
    assert "test" not in res and res["val"]["val_loss"] >= 0


ROOT = Path(__file__).parents[1]
SHIPPED_CONFIGS = sorted(p.relative_to(ROOT) for pattern in
                         ("examples/*.yaml", "benchmarks/configs/**/*.yaml")
                         for p in ROOT.glob(pattern))


def test_configs_are_shipped():
    """The glob reaches both folders (an empty parametrisation below would prove nothing)."""
    for path in ("examples/dft_ge.yaml", "examples/foundation_ge.yaml",
                 "benchmarks/configs/foundation_ge10.yaml"):
        assert Path(path) in SHIPPED_CONFIGS


@pytest.mark.parametrize("path", SHIPPED_CONFIGS, ids=str)
def test_shipped_configs_load(path):
    """Every study config in examples/ and benchmarks/configs/ is valid (keys, types, ranges)
    and survives the round trip through the settings a study folder stores."""
    cfg = load_study_config(ROOT / path)
    assert config_from_dict(cfg.stored()) == cfg


def test_source_model_must_share_the_study_architecture(files, tmp_path):
    from congener.models.checkpoint import build_potential, save_potential
    from congener.models.dimenet import DimeNetConfig

    values = tiny_values(files, modes=["scratch", "transfer"], temperature=None)
    wider = DimeNetConfig(**{**values["model"], "hidden": 16})
    save_potential(tmp_path / "si.pt", build_potential(["Si"], wider), {})
    values["source"] = {"model": str(tmp_path / "si.pt")}
    with pytest.raises(ConfigError, match="has hidden 16 where the study's model section "
                                          "has hidden 8"):
        run_study(study_config(values), tmp_path / "study")
    assert not (tmp_path / "study").exists()  # refused before any setting is stored


def test_scaled_mode_fits_scales_per_run_and_reports_them(files, tmp_path, monkeypatch):
    cfg = tiny(files, sizes=[2], seeds=[0], modes=["scratch", "scaled"], temperature=None,
               workers=1)
    report = run_study(cfg, tmp_path / "study").read_text()
    run = tmp_path / "study" / "runs" / "scaled-n2-s0"
    scales = json.loads((run / "metrics.json").read_text())["scales"]
    assert scales["force_mae_after"] <= scales["force_mae_before"]
    # the run's model is the source's with the cutoff divided by the fitted length scale
    model = json.loads((run / "config.json").read_text())["model"]
    assert model["cutoff"] == pytest.approx(4.0 / scales["length"])
    assert "Corresponding-states scales" in report and "| scaled-n2-s0 |" in report
    assert "Reduction of the error by scaled against scratch" in report
    # an interrupted run resumes from the scales it started with, not from a refit
    import congener.studies.run as run_module

    (run / "metrics.json").unlink()
    def refit(*args, **kwargs):
        raise AssertionError("a resumed run must not refit its scales")
    monkeypatch.setattr(run_module, "fit_scales", refit)
    run_study(cfg, tmp_path / "study")
    assert json.loads((run / "metrics.json").read_text())["scales"] == scales


def test_scaled_arm_brings_its_cutoff_controls(files, tmp_path):
    """scratch-rc and transfer-rc run at the scaled start's cutoff; transfer-rc is the source
    with the length scale only, so the scaled start's forces are the energy scale times its."""
    from congener.data.structures import read_structures
    from congener.graph import build_graph
    from congener.studies.run import _initial_model

    cfg = tiny(files, sizes=[2], seeds=[0], modes=["scratch", "transfer", "scaled"],
               temperature=None, workers=1)
    assert cfg.arm_names() == ["scratch", "transfer", "scaled", "scratch-rc", "transfer-rc"]
    assert tiny(files, modes=["scratch", "scaled"], scaled_controls=False).arm_names() == \
        ["scratch", "scaled"]
    study = tmp_path / "study"
    report = run_study(cfg, study).read_text()
    runs = study / "runs"
    scaled = json.loads((runs / "scaled-n2-s0" / "config.json").read_text())["model"]["cutoff"]
    for arm in ("scratch-rc", "transfer-rc"):
        m = json.loads((runs / f"{arm}-n2-s0" / "metrics.json").read_text())
        assert m["cutoff"] == pytest.approx(scaled) and "scales" not in m
        model = json.loads((runs / f"{arm}-n2-s0" / "config.json").read_text())["model"]
        assert model["cutoff"] == pytest.approx(scaled)
    assert "| scratch-rc |" in report and "| transfer-rc |" in report
    val_f = {arm: json.loads((runs / f"{arm}-n2-s0" / "metrics.json").read_text())["val"]
             ["val_force_mae"] for arm in cfg.arm_names()}
    assert f"Validation picks **{min(val_f, key=val_f.get)}**" in report

    # the starts themselves, on the run's structures
    pool = read_structures(study / "data" / "target_pool.extxyz")
    spec = next(r for r in plan_runs(cfg, pool) if r.name == "scaled-n2-s0")
    train, val = [pool[k] for k in spec.train_idx], [pool[k] for k in spec.val_idx]
    starts = {name: _initial_model(cfg, cfg.arm(name), study, ["Ge"], 0, train,
                                   tmp_path / name, val) for name in ("scaled", "transfer-rc")}
    mu = starts["scaled"][1]["scales"]["energy"] if starts["scaled"][1]["scales"]["accepted"] \
        else 1.0
    graph = build_graph(val[0], scaled)
    f_scaled = starts["scaled"][0](graph.to(dtype=torch.float32)).forces.detach()
    f_rc = starts["transfer-rc"][0](graph.to(dtype=torch.float32)).forces.detach()
    assert torch.allclose(f_scaled, mu * f_rc, rtol=0, atol=1e-5 * float(f_scaled.abs().max()))
    with pytest.raises(ConfigError, match="cutoff applies to scratch and transfer"):
        values = tiny_values(files)
        values.pop("modes")
        study_config({**values, "arms": [{"name": "x", "start": "frozen", "cutoff": 5.0}]})


def test_validation_pick_by_force_or_balanced():
    from congener.studies.ranking import validation_pick

    val_f = {"a": [0.10, 0.12], "b": [0.12, 0.12], "c": [0.05, float("nan")]}
    val_e = {"a": [10.0, 10.0], "b": [4.0, 6.0], "c": [1.0, 1.0]}
    assert validation_pick(val_f) == "a"  # c has a seed without a finite value
    # balanced: a 1 + 11/5 = 3.2 (rounded), b 1.09 + 1 = 2.09: b
    assert validation_pick(val_f, val_e) == "b"


def test_arms_compare_scratch_a_family_checkpoint_zero_shot_and_frozen(files, tmp_path):
    """One study with arms: scratch, a CHGNet checkpoint fine-tuned with its first block
    frozen and its references kept, the same checkpoint zero-shot; ranking and speed."""
    from congener.models.checkpoint import save_potential
    from tests.test_foundation_chgnet import small_chgnet

    save_potential(tmp_path / "chg.pt", small_chgnet(seed=4).float())
    arms = [{"name": "scratch", "start": "scratch"},
            {"name": "chg-ft", "start": str(tmp_path / "chg.pt"), "freeze": ["first:1"],
             "refs": "keep", "train": {"lr": 0.002, "lr_final": 0.001}},
            {"name": "chg-zero", "start": str(tmp_path / "chg.pt"), "zero_shot": True}]
    values = tiny_values(files, sizes=[2], seeds=[0, 1], temperature=None, workers=1)
    values.pop("modes")
    cfg = study_config({**values, "arms": arms})
    assert cfg.arm_names() == ["scratch", "chg-ft", "chg-zero"] and not cfg.uses_source()
    report = run_study(cfg, tmp_path / "s")
    text = report.read_text()
    assert "## Arms ranked at each size" in text and "| chg-zero |" in text
    zero = json.loads((tmp_path / "s" / "runs" / "chg-zero-n2-s0" / "metrics.json").read_text())
    assert zero["epochs"] == 0 and zero["family"] == "chgnet"
    ft = json.loads((tmp_path / "s" / "runs" / "chg-ft-n2-s1" / "config.json").read_text())
    assert ft["frozen"] and ft["train"]["refs"] == "keep" and ft["train"]["lr"] == 0.002
    speed = json.loads((tmp_path / "s" / "speed" / "chg-ft.json").read_text())
    assert speed["ef_ms"] > 0 and speed["md_steps_per_s"] > 0
    assert not (tmp_path / "s" / "source").exists()  # no congener source needed
    # an arm that changes its definition under the same name is refused on a rerun
    arms[1] = {**arms[1], "refs": "refit"}
    with pytest.raises(ConfigError, match="arm chg-ft"):
        run_study(study_config({**values, "arms": arms}), tmp_path / "s")


@pytest.mark.parametrize(("arms", "needle"), [
    ([{"name": "a b", "start": "scratch"}], "arm name 'a b'"),
    ([{"name": "x", "start": "scratch"}, {"name": "x", "start": "transfer"}], "named twice"),
    ([{"name": "z", "start": "scratch", "zero_shot": True}], "zero_shot evaluates"),
    ([{"name": "c", "start": "chgnut:0.3.0"}], "neither a file nor a foundation"),
    ([{"name": "c", "start": "chgnet:0.3.0", "train": {"lrr": 1}}], "unknown train setting"),
    ([{"name": "c", "start": "scratch", "freeze": ["first:1"]}], "freeze applies to"),
    ([{"start": "scratch"}], "needs name"),
])
@pytest.mark.reliability("late", "a bad arm: one line before anything runs")
def test_bad_arms_are_refused(arms, needle):
    with pytest.raises(ConfigError, match=needle):
        study_config({"arms": arms})


def test_arms_and_modes_together_are_refused():
    with pytest.raises(ConfigError, match="arms or modes"):
        study_config({"arms": [{"name": "s", "start": "scratch"}], "modes": ["scratch"]})


def test_converge_budget_grows_with_size_and_stops_on_validation(files, tmp_path):
    from congener.studies.config import Budget
    from congener.studies.run import run_config

    budget = Budget(rule="converge", updates=10, patience_updates=6, updates_per_structure=4,
                    max_updates=30, min_epochs=1)
    # cap: max(10, 4 x size), at most 30 updates; batch 2 -> ceil(size / 2) updates per epoch
    assert [budget.epochs(n, 2) for n in (1, 4, 6, 40)] == [10, 8, 8, 2]
    assert budget.patience(4, 2) == 3 and budget.val_every(4, 2) == 1
    assert Budget().patience(4, 2) == 0  # rule fixed: no early stopping from the budget
    cfg = tiny(files, budget={"rule": "converge", "updates": 2, "patience_updates": 2,
                              "updates_per_structure": 20, "max_updates": 40,
                              "min_epochs": 1, "validations": 40},
               sizes=[2], seeds=[0], modes=["scratch"], temperature=None, workers=1,
               train={"batch_size": 2, "lr": 0.3, "lr_final": 0.3})
    tcfg = run_config(cfg, 2, 0, None, 1)
    assert tcfg.epochs == 40 and tcfg.patience == 2 and tcfg.val_every == 1
    report = run_study(cfg, tmp_path / "s")
    res = json.loads((tmp_path / "s" / "runs" / "scratch-n2-s0" / "metrics.json").read_text())
    # lr 0.3 diverges or plateaus at once: patience ends the run well before the 40-update cap
    assert res["stopped"] == "patience" and res["updates"] < 40
    assert "stopped" in (tmp_path / "s" / "results.csv").read_text().splitlines()[0]
    assert report.is_file()
