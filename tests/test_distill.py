"""Distillation: samplers, teacher labels, weighted losses, the student beats seed-only
training, resume without relabelling, and the command's bad input."""

from __future__ import annotations

import json

import ase.build
import numpy as np
import pytest
import torch

from congener.analysis.errors import evaluate, metrics
from congener.calculator import CongenerCalculator
from congener.data.structures import read_structures, write_structures
from congener.errors import ConfigError, DataError
from congener.models.checkpoint import save_potential
from congener.models.dimenet import DimeNetConfig
from congener.simulation import sampling
from congener.training import distill as distill_module
from congener.training.config import TrainConfig
from congener.training.data import LabelledSet
from congener.training.distill import DistillConfig, SamplingConfig, distill, label
from congener.training.losses import loss
from tests.conftest import rattled_diamond, small_potential
from tests.test_simulation_md import PairSprings, fcc

STUDENT = DimeNetConfig(cutoff=4.0, hidden=16, out_emb=16, int_emb=8, basis_emb=2,
                        num_blocks=1, num_spherical=3, num_radial=4)


def seeds_si(n: int = 2) -> list:
    return [rattled_diamond("Si", amount=0.03, seed=k, shear=0.05 * k) for k in range(n)]


def test_md_snapshots_have_the_target_temperatures():
    springs = PairSprings()
    starts = [fcc(), fcc()]
    for target in (300.0, 900.0):
        sample = sampling.md_frames(springs, starts, target, steps=600,
                                    equilibration_steps=200, sample_every=10, timestep_fs=2.0,
                                    friction_per_ps=10.0, seed=1, trajectories_per_seed=2)
        assert sample.n_failed == 0 and sample.n_trajectories == 4
        assert len(sample.frames) == 4 * 41  # steps 200, 210, ..., 600; 4 trajectories
        kinetic = np.array([a.info["kinetic_temperature"] for a in sample.frames])
        # 32 atoms: one frame's temperature scatters by ~T sqrt(2/(3N)) = 14 %; 164 frames
        assert abs(kinetic.mean() / target - 1) < 0.08
        assert {a.info["temperature"] for a in sample.frames} == {target}
        # the frames are MD configurations, not copies of the start
        moved = np.abs(sample.frames[-1].positions - starts[1].positions)
        assert moved.max() > 0.02


def test_rattled_copies_have_the_requested_displacement_statistics():
    seed = fcc(reps=3)  # 108 atoms
    rng = np.random.default_rng(0)
    copies = sampling.rattled([seed], [0.02, 0.1], copies=5, rng=rng)
    assert len(copies) == 10
    for sigma in (0.02, 0.1):
        d = np.concatenate([(a.positions - seed.positions).ravel() for a in copies
                            if a.info["sigma_A"] == sigma])
        assert abs(d.std() / sigma - 1) < 0.05  # 1620 samples: 1.8 % standard error
        assert abs(d.mean()) < 4 * sigma / np.sqrt(d.size)
    assert "energy" not in copies[0].info and copies[0].calc is None


def test_strained_copies_have_the_requested_volume_and_shear():
    seed = fcc()
    rng = np.random.default_rng(3)
    copies = sampling.strained([seed, ase.Atoms("Cu2", positions=[[0, 0, 0], [2, 0, 0]])],
                               max_volume_strain=0.1, max_shear=0.05, copies=200, rng=rng)
    assert len(copies) == 200  # the molecule (no cell) is skipped
    v0 = seed.get_volume()
    ratios = np.array([a.get_volume() / v0 for a in copies])
    np.testing.assert_allclose(ratios, [1 + a.info["volume_strain"] for a in copies], rtol=1e-12)
    assert ratios.min() >= 0.9 - 1e-12 and ratios.max() <= 1.1 + 1e-12
    assert ratios.min() < 0.92 and ratios.max() > 1.08  # the range is used
    for atoms in copies[:20]:
        f = np.linalg.solve(seed.cell.array, atoms.cell.array).T  # deformation gradient
        sym = 0.5 * (f + f.T) / np.cbrt(np.linalg.det(f))
        assert np.abs(sym - np.diag(np.diag(sym))).max() <= 0.05 + 1e-9
        # atoms moved with the cell: same fractional coordinates
        np.testing.assert_allclose(atoms.get_scaled_positions(), seed.get_scaled_positions(),
                                   atol=1e-12)


def test_deduplication_removes_exact_copies_and_keeps_distinct_ones():
    base = rattled_diamond("Si", amount=0.05, seed=0)
    other = rattled_diamond("Si", amount=0.2, seed=1)
    shifted = base.copy()
    shifted.positions += [0.3, -0.2, 0.1]  # a translated copy is the same configuration
    shifted.wrap()
    structures = [base, other, base.copy(), shifted, ase.build.bulk("Ge", "diamond", a=5.65,
                                                                    cubic=True)]
    assert sampling.deduplicate(structures, 0.0) == [0, 1, 3, 4]  # exact copies only
    assert sampling.deduplicate(structures, 1e-9) == [0, 1, 4]  # and rounding-level ones
    assert sampling.descriptor_distance(sampling.descriptor(base),
                                        sampling.descriptor(other)) > 0.05
    # a loose threshold also merges the two rattled Si cells
    assert sampling.deduplicate(structures, 2.0) == [0, 4]


def test_teacher_labels_round_trip_through_extxyz(tmp_path):
    teacher = small_potential(("Si",), cutoff=4.0)
    structures = [*seeds_si(3), ase.build.bulk("Si", "diamond", a=5.43) * (2, 1, 1)]
    labelled, dropped = label(teacher, structures, batch_size=2,
                              identity={"teacher": "tiny", "teacher_version": "v1"})
    assert dropped == [] and len(labelled) == 4
    path = write_structures(tmp_path / "labels.extxyz", labelled)
    back = read_structures(path)
    calc = CongenerCalculator(teacher, device="cpu")
    for atoms, original in zip(back, structures, strict=True):
        assert atoms.info["teacher"] == "tiny" and atoms.info["teacher_version"] == "v1"
        reference = original.copy()
        reference.calc = calc  # one structure at a time through the ASE calculator
        assert atoms.get_potential_energy() == pytest.approx(reference.get_potential_energy(),
                                                             abs=1e-8)
        np.testing.assert_allclose(atoms.get_forces(), reference.get_forces(), atol=1e-8)
        np.testing.assert_allclose(atoms.get_stress(), reference.get_stress(), atol=1e-9)


def test_non_finite_teacher_output_is_left_out():
    teacher = small_potential(("Si",), cutoff=4.0)
    crushed = seeds_si(1)[0]
    crushed.positions[1] = crushed.positions[0]  # two atoms on top of each other
    labelled, dropped = label(teacher, [seeds_si(1)[0], crushed])
    assert dropped == [1] and len(labelled) == 1


def test_structure_weights_equal_repeating_the_structure():
    potential = small_potential(("Si",), cutoff=4.0)
    a, b = label(potential, seeds_si(2))[0]
    other = small_potential(("Si",), cutoff=4.0, seed=5)  # a model with errors to weigh
    cfg = TrainConfig(energy_weight=10.0, stress_weight=0.1)
    for huber in (False, True):
        c = cfg if not huber else TrainConfig(energy_weight=10.0, stress_weight=0.1,
                                              loss="huber", huber_delta=0.05)
        weighted = LabelledSet([a, b], 4.0, weights=[1.0, 2.0])
        repeated = LabelledSet([a, b, b], 4.0)
        g1, t1 = weighted.batch([0, 1])
        g2, t2 = repeated.batch([0, 1, 2])
        l1 = loss(other(g1, stress=True), t1, c).total
        l2 = loss(other(g2, stress=True), t2, c).total
        torch.testing.assert_close(l1, l2, rtol=1e-10, atol=0)
    # a weight of 0 removes the structure from the loss
    zero = LabelledSet([a, b], 4.0, weights=[1.0, 0.0])
    alone = LabelledSet([a], 4.0)
    l_zero = loss(other(zero.batch([0, 1])[0], stress=True), zero.batch([0, 1])[1], cfg).total
    l_alone = loss(other(alone.batch([0])[0], stress=True), alone.batch([0])[1], cfg).total
    torch.testing.assert_close(l_zero, l_alone, rtol=1e-10, atol=0)
    with pytest.raises(DataError, match="weights"):
        LabelledSet([a, b], 4.0, weights=[1.0])


def _config(**sampling_args) -> DistillConfig:
    values = dict(temperatures_K=(300.0,), md_steps=60, equilibration_steps=20,
                  sample_every=10, timestep_fs=1.0, rattle_sigmas_A=(0.03, 0.08),
                  rattle_copies=6, strain_copies=6, max_volume_strain=0.06)
    values.update(sampling_args)
    return DistillConfig(
        sampling=SamplingConfig(**values), model=STUDENT,
        train=TrainConfig(epochs=40, batch_size=8, lr=3e-3, lr_final=3e-4, energy_weight=1.0,
                          seed=0, dtype="float64"),
        label_chunk=16)


def test_student_matches_the_teacher_better_than_seed_only_training(tmp_path):
    teacher = small_potential(("Si",), cutoff=4.0)
    seeds = seeds_si(2)
    result = distill(teacher, seeds, tmp_path / "d", _config(), teacher_name="tiny")
    counts = result.counts
    assert counts["md_frames"] + counts["md_failed_trajectories"] > 0
    assert counts["labelled"] == counts["snapshots"] == len(read_structures(result.labels))
    # held-out teacher configurations from an independent draw (other rng and temperature)
    rng = np.random.default_rng(99)
    held = label(teacher, sampling.rattled(seeds, [0.05], 5, rng)
                 + sampling.strained(seeds, max_volume_strain=0.05, max_shear=0.03,
                                     copies=5, rng=rng))[0]
    from congener.models.checkpoint import load_potential

    student = load_potential(result.student, dtype=torch.float64)
    # the same student trained on the seed structures alone (teacher labels), same settings
    from congener.models.checkpoint import build_potential
    from congener.training.trainer import fit

    cfg = _config()
    torch.manual_seed(cfg.train.seed)
    seed_only = build_potential(["Si"], STUDENT)
    seed_labels = label(teacher, seeds)[0]
    fit(seed_only, LabelledSet(seed_labels[:1], 4.0), LabelledSet(seed_labels[1:], 4.0),
        cfg.train)
    distilled_mae = metrics(evaluate(student, held))["force_mae"]
    seed_only_mae = metrics(evaluate(seed_only, held))["force_mae"]
    assert distilled_mae < 0.7 * seed_only_mae


def test_interrupted_distillation_resumes_without_relabelling(tmp_path, monkeypatch):
    teacher = small_potential(("Si",), cutoff=4.0)
    cfg = _config(trajectories_per_seed=0)
    cfg = DistillConfig(sampling=cfg.sampling, model=STUDENT,
                        train=TrainConfig(epochs=1, dtype="float64"), label_chunk=8)
    labelled_counts: list[int] = []
    real_label = distill_module.label

    def interrupted(potential, structures, **kwargs):
        if len(labelled_counts) == 2:
            raise KeyboardInterrupt
        labelled_counts.append(len(structures))
        return real_label(potential, structures, **kwargs)

    monkeypatch.setattr(distill_module, "label", interrupted)
    with pytest.raises(KeyboardInterrupt):
        distill(teacher, seeds_si(2), tmp_path / "d", cfg, teacher_name="tiny")
    assert labelled_counts == [8, 8]
    total = len(read_structures(tmp_path / "d" / "snapshots.extxyz", labelled=False))
    labelled_counts.clear()
    monkeypatch.setattr(distill_module, "label",
                        lambda p, s, **k: (labelled_counts.append(len(s)),
                                           real_label(p, s, **k))[1])
    result = distill(teacher, seeds_si(2), tmp_path / "d", cfg, teacher_name="tiny")
    assert sum(labelled_counts) == total - 16  # the two finished chunks were kept
    assert result.counts["labelled"] == total
    # other training settings for the same student, or other sampling, are refused
    other = DistillConfig(sampling=cfg.sampling, model=STUDENT,
                          train=TrainConfig(epochs=2, dtype="float64"), label_chunk=8)
    with pytest.raises(ConfigError, match="another train"):
        distill(teacher, seeds_si(2), tmp_path / "d", other, teacher_name="tiny")
    resampled = DistillConfig(sampling=SamplingConfig(trajectories_per_seed=0, rattle_copies=3),
                              model=STUDENT, train=cfg.train, label_chunk=8)
    with pytest.raises(ConfigError, match="another sampling"):
        distill(teacher, seeds_si(2), tmp_path / "d", resampled, teacher_name="tiny",
                student_name="other")


def test_sampling_config_refuses_what_cannot_sample():
    with pytest.raises(ConfigError, match="no snapshot"):
        SamplingConfig(trajectories_per_seed=0, rattle_copies=0, strain_copies=0)
    with pytest.raises(ConfigError, match="equilibration_steps"):
        SamplingConfig(md_steps=100, equilibration_steps=100)
    with pytest.raises(ConfigError, match="melting point"):
        sampling.temperature_ladder(["Og"])
    assert sampling.temperature_ladder(["Ge"], n=3) == pytest.approx([300.0, 1361.4, 2422.8])


@pytest.mark.reliability("late", "one line, exit 2, before any sampling")
def test_distill_command_bad_input(tmp_path, invoke):
    seeds = tmp_path / "seeds.extxyz"
    write_structures(seeds, label(small_potential(("Si",)), seeds_si(2))[0])
    r = invoke("distill", tmp_path / "missing.pt", "--structures", seeds, "-o", tmp_path / "o")
    assert r.exit_code == 2 and "missing.pt" in r.err and len(r.err.strip().splitlines()) == 1
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    r = invoke("distill", empty, "--structures", seeds, "-o", tmp_path / "o")
    assert r.exit_code == 2 and "empty" in r.err and len(r.err.strip().splitlines()) == 1
    ge_model = tmp_path / "ge.pt"
    save_potential(ge_model, small_potential(("Ge",)))
    r = invoke("distill", ge_model, "--structures", seeds, "-o", tmp_path / "o")
    assert r.exit_code == 2 and "Si" in r.err and "does not know" in r.err
    config = tmp_path / "none.yaml"
    config.write_text("sampling: {trajectories_per_seed: 0, rattle_copies: 0, "
                      "strain_copies: 0}\n")
    si_model = tmp_path / "si.pt"
    save_potential(si_model, small_potential(("Si",)))
    r = invoke("distill", si_model, "--structures", seeds, "-o", tmp_path / "o",
               "--config", config)
    assert r.exit_code == 2 and "no snapshot" in r.err
    assert not (tmp_path / "o" / "samples").exists()


def test_distill_command_end_to_end(tmp_path, invoke):
    teacher = small_potential(("Si",), cutoff=4.0)
    model = tmp_path / "teacher.pt"
    save_potential(model, teacher)
    seeds = tmp_path / "seeds.extxyz"
    write_structures(seeds, label(teacher, seeds_si(2))[0])
    dft_test = tmp_path / "test.extxyz"
    write_structures(dft_test, label(teacher, [rattled_diamond("Si", amount=0.05, seed=7)])[0])
    config = tmp_path / "distill.yaml"
    config.write_text(
        "sampling: {temperatures_K: [300, 600], md_steps: 40, equilibration_steps: 10,\n"
        "           sample_every: 10, timestep_fs: 1.0, rattle_copies: 2, strain_copies: 2}\n"
        "model: {cutoff: 4.0, hidden: 16, out_emb: 16, int_emb: 8, basis_emb: 2,\n"
        "        num_blocks: 1, num_spherical: 3, num_radial: 4}\n"
        "train: {epochs: 3, batch_size: 8}\n"
        "report: {speed_repeats: 2, md_speed_steps: 3, md_batch: 2, structure_md_steps: 20,\n"
        "         structure_trajectories: 2, phonons: true}\n")
    out = tmp_path / "run"
    r = invoke("distill", model, "--structures", seeds, "-o", out, "--config", config,
               "--dft", seeds, "--dft-weight", "2", "--dft-test", dft_test)
    assert r.exit_code == 0, r.output
    report = json.loads((out / "students" / "student" / "report.json").read_text())
    assert report["counts"]["dft_train"] == 2
    assert report["student_vs_teacher"]["n"] == report["counts"]["split"]["test"]
    assert set(report["dft"]) == {"teacher", "student"}
    assert report["dft"]["teacher"]["force_mae"] < 1e-6  # the DFT labels are the teacher's
    speed = report["speed"]
    assert speed["speedup_energy_forces"] == pytest.approx(
        speed["energy_forces_ms"]["teacher"] / speed["energy_forces_ms"]["student"])
    # a random tiny teacher has no stable crystal: the phonon stage says so, the rest goes on
    phonons = report["phonons"]
    if "distance" in phonons:
        assert 0 <= phonons["distance"] <= 2
    else:
        assert "failed" in phonons["skipped"]
    # both run from the same starts: the teacher's hottest snapshots, one per seed structure
    liquid = report["liquid"]
    assert 1 <= liquid["teacher"]["trajectories"] == liquid["student"]["trajectories"] <= 2
    text = (out / "students" / "student" / "report.md").read_text()
    for heading in ("## Data", "## Accuracy", "## Speed", "## Phonons", "## Liquid MD"):
        assert heading in text
    labels = read_structures(out / "teacher_labels.extxyz")
    assert {a.info["teacher"] for a in labels} == {str(model)}
    assert all(a.info["teacher_version"].startswith("sha256:") for a in labels)
    # a rerun finds everything finished; a second, smaller student shares the teacher labels
    r = invoke("distill", model, "--structures", seeds, "-o", out, "--config", config,
               "--dft", seeds, "--dft-weight", "2", "--dft-test", dft_test, "--no-report")
    assert r.exit_code == 0 and "student:" in r.out
    small = tmp_path / "small.yaml"
    small.write_text("model: {cutoff: 3.5, hidden: 8, out_emb: 8, int_emb: 4, basis_emb: 2,\n"
                     "        num_blocks: 1, num_spherical: 3, num_radial: 3}\n"
                     "train: {epochs: 2}\n")
    stamp = (out / "teacher_labels.extxyz").stat().st_mtime_ns
    r = invoke("distill", model, "--structures", seeds, "-o", out, "--config", config,
               "--student", small, "--dft-test", dft_test)
    assert r.exit_code == 0, r.output
    assert (out / "teacher_labels.extxyz").stat().st_mtime_ns == stamp  # not relabelled
    table = (out / "report.md").read_text()
    assert "| student |" in table and "| small |" in table
    reports = {name: json.loads((out / "students" / name / "report.json").read_text())
               for name in ("student", "small")}
    assert reports["small"]["student_parameters"] < reports["student"]["student_parameters"]
    # the same student name with other settings is refused, naming what changed
    r = invoke("distill", model, "--structures", seeds, "-o", out, "--config", config,
               "--name", "small", "--no-report")
    assert r.exit_code == 2 and "another model" in r.err


def test_study_distill_stage_picks_the_teacher_on_validation(tmp_path):
    """A study's distill stage: the teacher is the arm's run with the lowest validation loss
    at the size, its training structures seed the sampling, the report gains the table."""
    from congener.studies.config import study_config
    from congener.studies.distill_stage import teacher_run
    from congener.studies.learning_curve import plan_runs, run_study
    from tests.test_training import sw_labelled

    ge = sw_labelled(10, seed=50, element="Ge", a=5.65)
    write_structures(tmp_path / "ge.extxyz", ge)
    values = {
        "name": "d", "sizes": [2], "seeds": [0, 1], "modes": ["scratch"],
        "target": {"data": str(tmp_path / "ge.extxyz"), "test_size": 3, "val_size": 2},
        "model": {"cutoff": 4.0, "hidden": 8, "out_emb": 8, "int_emb": 4, "num_blocks": 1,
                  "num_spherical": 3, "num_radial": 3},
        "train": {"batch_size": 2},
        "budget": {"updates": 2, "min_epochs": 1, "max_epochs": 2, "validations": 2},
        "temperature": None, "phonons": None, "md": None, "workers": 1,
        "distill": {"arms": ["scratch"], "size": 2,
                    "sampling": {"trajectories_per_seed": 0, "rattle_copies": 2,
                                 "strain_copies": 2},
                    "students": {"tiny": {
                        "model": {"cutoff": 3.5, "hidden": 8, "out_emb": 8, "int_emb": 4,
                                  "num_blocks": 1, "num_spherical": 3, "num_radial": 3},
                        "train": {"epochs": 2}}},
                    "report": {"speed_repeats": 1, "md_speed_steps": 2, "md_batch": 2,
                               "structure_md_steps": 0, "phonons": False}},
    }
    report = run_study(study_config(values), tmp_path / "s")
    pool = read_structures(tmp_path / "s" / "data" / "target_pool.extxyz")
    results = [(spec, json.loads((tmp_path / "s" / "runs" / spec.name / "metrics.json")
                                 .read_text()))
               for spec in plan_runs(study_config(values), pool)]
    chosen = teacher_run("scratch", 2, results)
    losses = {spec.name: res["val"]["val_loss"] for spec, res in results}
    assert losses[chosen.name] == min(losses.values())
    folder = tmp_path / "s" / "distill" / "scratch"
    labels = read_structures(folder / "teacher_labels.extxyz")
    assert {a.info["teacher"] for a in labels} == {
        str(tmp_path / "s" / "runs" / chosen.name / "model.pt")}
    sampled = read_structures(folder / "snapshots.extxyz", labelled=False)
    assert len(sampled) == 2 * (2 * 3 + 2)  # 2 seeds x (3 sigmas x 2 copies + 2 strained)
    text = report.read_text()
    assert "## Distillation" in text and "| tiny |" in text
    # a stage naming an arm the study lacks is refused before anything runs
    bad = {**values, "distill": {"arms": ["nope"], "size": 2}}
    with pytest.raises(ConfigError, match="no arm 'nope'"):
        run_study(study_config(bad), tmp_path / "s2")
    assert not (tmp_path / "s2" / "data").exists()


def test_shipped_distillation_configs_load():
    """examples/distill: the --config and --student files are valid distillation settings."""
    from pathlib import Path

    from congener.analysis.distillation import ReportConfig
    from congener.training.config import from_dict, read_mapping

    root = Path(__file__).parents[1] / "examples" / "distill"
    raw = read_mapping(root / "ge.yaml")
    from_dict(ReportConfig, raw.pop("report"), "report")
    base = DistillConfig.from_dict(raw)
    assert base.sampling.temperatures(["Ge"])[-1] == pytest.approx(2 * 1211.4)
    small = DistillConfig.from_dict({**raw, **read_mapping(root / "student_small.yaml")})
    assert small.model.hidden < base.model.hidden and small.sampling == base.sampling
