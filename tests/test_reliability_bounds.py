"""Issue 20, bad input: every numeric setting is bounded to its physical range where it enters
(config dataclasses, CLI options), NaN and inf are refused, study files are checked before
anything runs, and MD says which stability criterion decided "stable"."""

from __future__ import annotations

import json
import math

import ase.build
import ase.io
import pytest
import torch

from congener.analysis.phonons import diamond_cell
from congener.analysis.stability import stability_summary
from congener.errors import ConfigError
from congener.models.checkpoint import save_potential
from congener.models.dimenet import DimeNetConfig
from congener.simulation.md import Failure, run_md
from congener.studies.config import load_study_config
from congener.training.config import TrainConfig
from tests.conftest import Result, small_potential
from tests.test_simulation_md import PairSprings, fcc

NAN, INF = float("nan"), float("inf")




def one_error_line(res: Result, message: str) -> None:
    """Exit 2 with one line `error: ...` that contains `message` (and no traceback)."""
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code == 2, res.output
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    assert message in lines[0], res.output


# --- 1. numeric options bounded to their physical range -----------------------------------

@pytest.mark.reliability("late", "model.cutoff and sizes out of range are refused in one line "
                         "naming the range (cutoff in (0, 12] Å) instead of a 53 M-edge graph")
@pytest.mark.parametrize(("values", "message"), [
    ({"cutoff": 100.0}, r"model\.cutoff must be in \(0, 12\]"),
    ({"cutoff": NAN}, r"model\.cutoff must be in \(0, 12\]"),
    ({"cutoff": INF}, r"model\.cutoff must be in \(0, 12\]"),
    ({"hidden": True}, r"model\.hidden must be an integer in \[1, 4096\]"),
    ({"num_blocks": 1000}, r"model\.num_blocks must be an integer in \[1, 32\]"),
])
def test_model_config_bounds(values, message):
    with pytest.raises(ConfigError, match=message):
        DimeNetConfig(**values)


@pytest.mark.reliability("late", "congener train --cutoff 100 ends in one error line naming "
                         "(0, 12] Å before any data is read")
def test_train_cli_refuses_huge_cutoff(invoke, tmp_path):
    res = invoke("train", "--train", tmp_path / "missing.extxyz", "--cutoff", 100,
                 "-o", tmp_path / "run")
    one_error_line(res, "model.cutoff must be in (0, 12]")
    assert not (tmp_path / "run").exists()


@pytest.mark.reliability("silent", "train settings that are NaN, inf, out of range or not "
                         "integers (and lr_final above lr) are refused naming the setting")
@pytest.mark.parametrize(("values", "message"), [
    ({"seed": -1}, r"train\.seed must be an integer in \[0, 4294967295\]"),
    ({"seed": True}, r"train\.seed must be an integer"),
    ({"lr": INF}, r"train\.lr must be > 0"),
    ({"lr": 5.0}, r"train\.lr must be <= 1"),
    ({"lr": 1e-3, "lr_final": 1e-2}, r"train\.lr_final \(0\.01\) must not exceed train\.lr"),
    ({"energy_weight": NAN}, r"train\.energy_weight must be >= 0 \(a finite number"),
    ({"grad_clip": INF}, r"train\.grad_clip must be >= 0"),
    ({"huber_delta": INF}, r"train\.huber_delta must be > 0"),
    ({"epochs": 2.5}, r"train\.epochs must be an integer >= 1"),
    ({"batch_size": True}, r"train\.batch_size must be an integer >= 1"),
])
def test_train_config_bounds(values, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**values)


@pytest.mark.reliability("late", "a lattice constant outside [2.5, 10] Å or NaN is refused "
                         "instead of a relaxation that runs for minutes")
@pytest.mark.parametrize("a", [-1.0, 0.5, 100.0, NAN, INF])
def test_diamond_cell_lattice_bounds(a):
    with pytest.raises(ConfigError, match=r"lattice constant a \(Å\) must be in \[2\.5, 10\]"):
        diamond_cell("Si", a)


@pytest.mark.reliability("late", "analyze phonons with --lattice or --mesh out of range: one "
                         "error line with the range, before any model is loaded")
@pytest.mark.parametrize(("option", "message"), [
    (["--lattice", "-1"], "--lattice (Å) must be in [2.5, 10]"),
    (["--lattice", "nan"], "--lattice (Å) must be in [2.5, 10]"),
    (["--mesh", "1000"], "--mesh must be an integer in [1, 100]"),
])
def test_phonons_cli_bounds(invoke, tmp_path, option, message):
    res = invoke("analyze", "phonons", tmp_path / "missing.pt", "--element", "Si", *option,
                 "-o", tmp_path / "ph")
    one_error_line(res, message)
    assert not (tmp_path / "ph").exists()


MD_BASE = {"--temperature": "300", "--steps": "20"}


@pytest.mark.reliability("late", "analyze md settings out of range (1e6 K, NaN, zero steps, "
                         "--discard past the run...) give one error line before anything loads")
@pytest.mark.parametrize(("options", "message"), [
    ({"--temperature": "1e6"}, "--temperature (K) must be in (0, 20000]"),
    ({"--temperature": "nan"}, "--temperature (K) must be in (0, 20000]"),
    ({"--timestep": "50"}, "--timestep (fs) must be in (0, 10]"),
    ({"--timestep": "inf"}, "--timestep (fs) must be in (0, 10]"),
    ({"--steps": "0"}, "--steps must be an integer >= 1"),
    ({"--friction": "nan"}, "--friction (1/ps) must be in [0, 1000]"),
    ({"--min-distance": "0"}, "--min-distance (Å) must be in (0, 5]"),
    ({"--min-distance": "nan"}, "--min-distance (Å) must be in (0, 5]"),
    ({"--seed": "-1"}, "--seed must be an integer in [0, 4294967295]"),
    ({"--discard": "20"}, "--discard must be an integer in [0, 19]"),
    ({"--discard": "-1"}, "--discard must be an integer in [0, 19]"),
    ({"--discard": "17", "--sample-every": "8"}, "no frame is sampled after --discard 17"),
    ({"--r-cut": "nan"}, "--r-cut (Å) must be in (0, 10]"),
    ({"--threads": "0"}, "--threads must be an integer >= 1"),
    ({"--min-distance": "1", "--no-stability-check": None}, "give one of them"),
])
def test_md_cli_bounds(invoke, tmp_path, options, message):
    args = [x for k, v in (MD_BASE | options).items() for x in ([k] if v is None else [k, v])]
    res = invoke("analyze", "md", tmp_path / "missing.pt", "--structure",
                 tmp_path / "missing.extxyz", *args, "-o", tmp_path / "md")
    one_error_line(res, message)
    assert not (tmp_path / "md").exists()


@pytest.mark.reliability("late", "run_md refuses NaN/inf and out-of-range settings (a 1e6 K "
                         "target, zero steps, a zero close-contact distance) in one line")
@pytest.mark.parametrize(("bad", "message"), [
    ({"temperature_K": 1e6}, r"md: temperature_K must be in \(0, 20000\]"),
    ({"temperature_K": NAN}, r"md: temperature_K must be in \(0, 20000\]"),
    ({"steps": 0}, r"md: steps must be an integer >= 1"),
    ({"friction_per_ps": INF}, r"md: friction_per_ps must be in \[0, 1000\]"),
    ({"min_distance_A": 0.0}, r"md: min_distance_A must be in \(0, 5\]"),
    ({"max_temperature_factor": INF}, r"md: max_temperature_factor must be in \(1, 100\]"),
])
def test_run_md_bounds(bad, message):
    kwargs = {"temperature_K": 300.0, "timestep_fs": 1.0, "steps": 1} | bad
    with pytest.raises(ConfigError, match=message):
        run_md(PairSprings(), [fcc()], **kwargs)


@pytest.mark.reliability("late", "data sw with --seed -1 or --workers 0: one error line before "
                         "LAMMPS starts")
@pytest.mark.parametrize(("option", "message"), [
    (["--seed", "-1"], "--seed must be an integer in [0, 4294967295]"),
    (["--workers", "0"], "--workers must be an integer >= 1"),
])
def test_sw_cli_bounds(invoke, tmp_path, option, message):
    res = invoke("data", "sw", "--element", "Si", "--params", tmp_path / "missing.sw", *option,
                 "-o", tmp_path / "si.extxyz")
    one_error_line(res, message)


# --- 2. study files checked before anything runs ------------------------------------------

@pytest.mark.reliability("late", "load_study_config refuses a bad study file in one line "
                         "naming the key and its range, before anything runs")
@pytest.mark.parametrize(("text", "message"), [
    ('sizes: "abc"', r"sizes must be positive integers \(got 'abc'\)"),
    ("sizes: [1.5, 10]", r"sizes must be positive integers"),
    ("sizes: [true]", r"sizes must be positive integers"),
    ("sizes: [10, 10]", r"sizes lists a value twice"),
    ("seeds: [-1]", r"seeds must be integers in \[0, 4294967295\]"),
    ("seeds: [a]", r"seeds must be integers"),
    ("modes: []", r"modes must list at least one of scratch"),
    ("modes: null", r"modes must be a list"),
    ("budget: {updates: -5}", r"budget\.updates must be an integer >= 1"),
    ("budget: {min_epochs: 10, max_epochs: 5}", r"budget\.max_epochs must be an integer >= 10"),
    ("target: {test_size: 0}", r"target\.test_size must be an integer >= 1"),
    ("source: {val_size: 0}", r"source\.val_size must be an integer >= 1"),
    ("temperature: {temperature_K: .nan}", r"temperature\.temperature_K must be in \(0, 20000\]"),
    ('temperature: {sizes: "abc"}', r"temperature\.sizes must be a non-empty list of integers"),
    ("hpo: {size: 0}", r"hpo\.size must be an integer >= 1"),
    ("hpo: {lr: [.nan]}", r"hpo\.lr must be in \(0, 1\]"),
    ("phonons: {runs: bogus}", r"phonons\.runs must be one of curve, temperature, hpo"),
    ("phonons: {size: 0}", r"phonons\.size must be an integer >= 1"),
    ("md: {steps: 0}", r"md\.steps must be an integer >= 1"),
    ("md: {temperature_K: 1.0e+6}", r"md\.temperature_K must be in \(0, 20000\]"),
    ("md: {timestep_fs: .inf}", r"md\.timestep_fs must be in \(0, 10\]"),
    ("md: {trajectories: 0}", r"md\.trajectories must be an integer >= 1"),
    ("md: {density_g_cm3: 0}", r"md\.density_g_cm3 must be in \(0, 30\]"),
    ("md: {melt_steps: -1}", r"md\.melt_steps must be an integer >= 0"),
    ("md: {name: ../x}", r"md\.name must be a folder name"),
    ("md: {steps: 10, sample_every: 20}", r"md\.sample_every \(20\) must not exceed md\.steps"),
    ("mapping: {Si: Xx}", r"mapping: 'Xx' is not a chemical symbol"),
    ("mapping: {Si: Ge, C: Ge}", r"mapping: C, Si all map to Ge"),
    ("mapping: {}", r"mapping must map source elements to target elements"),
    ("freeze: [1, 2]", r"freeze must be a list of parameter parts"),
    ("soft_freeze: 2.0", r"soft_freeze must be in \[0, 1\]"),
    ("workers: true", r"workers must be an integer >= 1"),
    ('name: ""', r"name must be a non-empty string"),
    ("model: {cutoff: 100}", r"model\.cutoff must be in \(0, 12\]"),
    ("train: {seed: -1}", r"train\.seed must be an integer in \[0, 4294967295\]"),
    ("train: {lr: 0.001, lr_final: 0.01}", r"train\.lr_final \(0\.01\) must not exceed"),
    ("train: {lr: .inf}", r"train\.lr must be > 0"),
])
def test_study_config_bounds(tmp_path, text, message):
    path = tmp_path / "study.yaml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError, match=message):
        load_study_config(path)


@pytest.mark.reliability("mess", "congener study --seeds=-1 is refused in one line and leaves "
                         "the study folder's config.json unwritten")
@pytest.mark.parametrize(("option", "message"), [
    ("--seeds=-1", "seeds must be integers in [0, 4294967295]"),
    ("--sizes=10,10", "sizes lists a value twice"),
    ("--seeds=0,0", "seeds lists a value twice"),
])
def test_study_cli_overrides_are_checked(invoke, tmp_path, option, message):
    config = tmp_path / "study.yaml"
    config.write_text(f"target: {{data: {tmp_path / 'missing.extxyz'}}}\nmodes: [scratch]\n"
                      "temperature: null\nphonons: null\nmd: null\n")
    res = invoke("study", config, option, "-o", tmp_path / "study")
    one_error_line(res, message)
    assert not (tmp_path / "study" / "config.json").exists()


# --- 3. MD stability: on by default, off only explicitly, criterion reported --------------

def close_pair():
    atoms = fcc()
    atoms.positions[1] = atoms.positions[0] + [1.0, 0.0, 0.0]
    return atoms


@pytest.mark.reliability("silent", "run_md checks stability by default and records the "
                         "criterion (min distance, max temperature factor, non-finite)")
def test_run_md_checks_by_default_and_records_the_criterion():
    result = run_md(PairSprings(), [close_pair(), fcc()], temperature_K=300.0, timestep_fs=1.0,
                    steps=2, sample_every=1, threads=1)
    assert result.trajectories[0].failure is Failure.CLOSE_CONTACT
    assert result.trajectories[1].stable
    criterion = stability_summary(result)["criterion"]
    assert criterion == {"stability_check": "on", "non_finite": True, "min_distance_A": 2.0,
                         "max_temperature_factor": 5.0, "max_temperature_K": 1500.0}


@pytest.mark.reliability("silent", "with stability_check=False the result says 'off' (only "
                         "NaN/Inf stop a trajectory) instead of passing as a checked 'stable'")
def test_run_md_stability_check_off_is_explicit_and_recorded():
    result = run_md(PairSprings(), [close_pair()], temperature_K=300.0, timestep_fs=1.0,
                    steps=2, sample_every=1, stability_check=False, threads=1)
    assert result.trajectories[0].stable
    criterion = stability_summary(result)["criterion"]
    assert criterion["stability_check"] == "off" and criterion["non_finite"] is True
    assert criterion["min_distance_A"] is None and criterion["max_temperature_factor"] is None
    nan = run_md(PairSprings(nan_species=29), [fcc()], temperature_K=300.0, timestep_fs=1.0,
                 steps=2, stability_check=False, threads=1)
    assert nan.trajectories[0].failure is Failure.NON_FINITE


@pytest.fixture
def md_inputs(tmp_path):
    model = save_potential(tmp_path / "m.pt", small_potential(cutoff=4.0, dtype=torch.float32))
    structure = tmp_path / "si.extxyz"
    ase.io.write(structure, ase.build.bulk("Si", "diamond", a=5.43, cubic=True))
    return model, structure


@pytest.mark.reliability("silent", "analyze md prints and writes to stability.json which "
                         "criterion decided 'stable', or that the check was off")
@pytest.mark.parametrize(("flags", "printed", "expected"), [
    ([], "stability criterion: no pair closer than 2 Å, kinetic temperature <= 5 x target "
         "= 1500 K, no NaN/Inf",
     {"stability_check": "on", "min_distance_A": 2.0, "max_temperature_factor": 5.0}),
    (["--no-stability-check"], "stability check off: only NaN/Inf stops a trajectory",
     {"stability_check": "off", "min_distance_A": None, "max_temperature_factor": None}),
])
def test_md_cli_reports_the_criterion(invoke, tmp_path, md_inputs, flags, printed, expected):
    model, structure = md_inputs
    out = tmp_path / "md"
    res = invoke("analyze", "md", model, "--structure", structure, "--temperature", 300,
                 "--steps", 4, "--sample-every", 2, "--threads", 1, "--device", "cpu",
                 *flags, "-o", out)
    assert res.exit_code == 0, res.output
    assert printed in res.output
    criterion = json.loads((out / "stability.json").read_text())["criterion"]
    assert criterion["non_finite"] is True
    assert {k: criterion[k] for k in expected} == expected
    assert math.isfinite(json.loads((out / "stability.json").read_text())["temperature_K"])
