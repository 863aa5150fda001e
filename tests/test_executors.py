"""Study runs on other engines: submitit jobs (its local cluster stands in for Slurm) and a
local Ray instance give the local pool's results; reruns re-attach to running jobs, submit
nothing for finished runs and resume a dead job's run from its checkpoints."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from congener.errors import ConfigError, CongenerError
from congener.studies.config import study_config
from congener.studies.learning_curve import run_study
from tests.test_study import files, tiny_values  # noqa: F401  (files: the data fixture)

SMALL = {"sizes": [1], "seeds": [0], "modes": ["scratch", "transfer"], "temperature": None}
RUNS = ["scratch-n1-s0", "transfer-n1-s0"]


@pytest.fixture(scope="module", autouse=True)
def no_speed_stage():
    """The report's speed measurement (seconds per model) plays no part here."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("congener.studies.learning_curve.measure_speeds", lambda *a, **k: {})
        yield


@pytest.fixture(scope="module")
def reference(files, tmp_path_factory) -> Path:  # noqa: F811
    """The tiny study run by the local process pool (in this process)."""
    study = tmp_path_factory.mktemp("pool") / "study"
    run_study(study_config(tiny_values(files, workers=1, **SMALL)), study)
    return study


def seeded(reference: Path, study: Path) -> Path:
    """A study folder with the reference's data and source model, and no runs yet."""
    for part in ("data", "source"):
        shutil.copytree(reference / part, study / part)
    return study


def errors_of(study: Path) -> dict[str, dict[str, float]]:
    """Run name -> its test errors, from each finished run's metrics.json."""
    return {p.parent.name: json.loads(p.read_text())["test"]
            for p in sorted((study / "runs").glob("*/metrics.json"))}


def assert_same_results(reference: Path, study: Path) -> None:
    want, got = errors_of(reference), errors_of(study)
    assert sorted(got) == sorted(want) == RUNS
    for name in RUNS:
        for key in ("energy_mae", "force_mae", "energy_rmse", "force_rmse"):
            assert got[name][key] == pytest.approx(want[name][key], rel=1e-6), (name, key)


def test_submitit_jobs_match_the_pool_reattach_and_resume(files, reference, tmp_path,  # noqa: F811
                                                          monkeypatch):
    import submitit

    study = seeded(reference, tmp_path / "study")
    cfg = study_config(tiny_values(files, **SMALL, executor={
        "kind": "slurm", "cluster": "local", "cpus_per_task": 2, "time_min": 10, "poll_s": 0.2}))
    submitted: list[list[str]] = []
    map_array = submitit.AutoExecutor.map_array

    def counting(self, fn, *iterables):
        submitted.append([spec["name"] for spec in iterables[2]])
        return map_array(self, fn, *iterables)

    def interrupted(*args, **kwargs):  # the command is stopped while its jobs run
        raise KeyboardInterrupt

    monkeypatch.setattr(submitit.AutoExecutor, "map_array", counting)
    wait = submitit.helpers.as_completed
    monkeypatch.setattr(submitit.helpers, "as_completed", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_study(cfg, study)
    assert submitted == [RUNS]  # one array for the batch
    records = json.loads((study / "jobs" / "submitted.json").read_text())
    assert sorted(records) == RUNS
    assert not errors_of(study)  # the jobs still run
    monkeypatch.setattr(submitit.helpers, "as_completed", wait)
    run_study(cfg, study)  # re-attaches to them and waits
    assert submitted == [RUNS]
    assert_same_results(reference, study)
    assert json.loads((study / "jobs" / "submitted.json").read_text()) == records
    run_study(cfg, study)  # all finished: nothing to submit
    assert submitted == [RUNS]
    # a job that died before its run finished (metrics.json missing, checkpoints kept): the
    # rerun submits that run alone, and it resumes instead of training again
    run_dir = study / "runs" / "transfer-n1-s0"
    stamp = (run_dir / "last.pt").stat().st_mtime_ns
    (run_dir / "metrics.json").unlink()
    run_study(cfg, study)
    assert submitted == [RUNS, ["transfer-n1-s0"]]
    assert (run_dir / "last.pt").stat().st_mtime_ns == stamp  # no epoch trained again
    assert_same_results(reference, study)
    assert json.loads((study / "jobs" / "submitted.json").read_text())["transfer-n1-s0"] \
        != records["transfer-n1-s0"]


def test_failures_in_jobs_are_recorded_as_by_the_pool(files, reference, tmp_path,  # noqa: F811
                                                      monkeypatch):
    import congener.studies.run as run_module
    from congener.errors import SimulationUnstable

    def failing(study_dir, cfg_dict, spec_dict, threads=0):
        if spec_dict["mode"] == "scratch":
            raise SimulationUnstable("training loss became nan at epoch 0")
        raise ValueError("bad value")

    monkeypatch.setattr(run_module, "run_one", failing)
    # submitit's debug cluster runs the jobs in this process, where run_one is replaced
    cfg = study_config(tiny_values(files, **SMALL, executor={"kind": "slurm",
                                                              "cluster": "debug"}))
    with pytest.raises(CongenerError, match=r"2 run\(s\) failed"):
        run_study(cfg, seeded(reference, tmp_path / "s"))
    errors = {name: json.loads((tmp_path / "s" / "runs" / name / "failed.json").read_text())
              for name in RUNS}
    assert errors == {"scratch-n1-s0": {"run": "scratch-n1-s0",
                                        "error": "training loss became nan at epoch 0"},
                      "transfer-n1-s0": {"run": "transfer-n1-s0",
                                         "error": "ValueError: bad value"}}
    assert not (tmp_path / "s" / "jobs" / "submitted.json").exists()  # nothing to re-attach


def test_ray_tasks_match_the_pool(files, reference, tmp_path):  # noqa: F811
    pytest.importorskip("ray")
    study = seeded(reference, tmp_path / "study")
    done = []
    cfg = study_config(tiny_values(files, **SMALL, executor={"kind": "ray", "num_cpus": 1}))
    run_study(cfg, study, on_done=lambda spec, res: done.append(spec.name))
    assert sorted(done) == RUNS
    assert_same_results(reference, study)


@pytest.mark.parametrize(("executor", "needle"), [
    ({"kind": "pbs"}, r"executor\.kind must be one of local, slurm, ray \(got 'pbs'\)"),
    ({"time_min": 0}, r"executor\.time_min must be an integer >= 1"),
    ({"cluster": "aws"}, r"executor\.cluster must be one of slurm, local, debug"),
    ({"num_cpus": 0}, r"executor\.num_cpus must be > 0"),
    ({"sbatch": ["--qos=x"]}, r"executor\.sbatch must map sbatch option names"),
    ({"queue": "gpu"}, r"unknown key executor\.queue"),
    ("slurm", r"executor must be a mapping"),
])
def test_bad_executor_settings_are_one_line(executor, needle):
    with pytest.raises(ConfigError, match=needle) as info:
        study_config({"executor": executor})
    assert "\n" not in str(info.value)


def test_executor_is_not_a_fixed_setting_and_the_cli_overrides_it(files, tmp_path,  # noqa: F811
                                                                  monkeypatch):
    from congener.cli import main
    from congener.studies import learning_curve
    from congener.studies.executors import ExecutorSpec, run_submitit

    assert "executor" not in learning_curve.FIXED_SETTINGS
    kinds = []

    def stop(cfg, *args, **kwargs):
        kinds.append(cfg.executor.kind)
        raise CongenerError("stopped")

    monkeypatch.setattr(learning_curve, "run_study", stop)
    path = tmp_path / "study.yaml"
    path.write_text(json.dumps(tiny_values(files, **SMALL, executor={"kind": "slurm"})))
    assert main(["study", str(path), "-o", str(tmp_path / "s"), "--executor", "ray"]) == 2
    assert kinds == ["ray"]
    if shutil.which("sbatch") is None:  # no Slurm here: one line, before anything is submitted
        with pytest.raises(ConfigError, match="no sbatch command here"):
            run_submitit(ExecutorSpec(kind="slurm"), tmp_path, {}, [], lambda *a: None)


def test_rebuilt_slurm_jobs_are_waited_for_only_while_they_may_deliver(tmp_path, monkeypatch):
    import submitit

    from congener.studies.executors import _active, _rebuild

    job = _rebuild({"cluster": "slurm", "job": "123_4", "folder": str(tmp_path)})
    assert isinstance(job, submitit.SlurmJob) and job.job_id == "123_4"
    for state, alive in (("PENDING", True), ("RUNNING", True), ("REQUEUED", True),
                         ("UNKNOWN", False), ("CANCELLED by 42", False), ("TIMEOUT", False),
                         ("OUT_OF_MEMORY", False)):  # UNKNOWN: sacct no longer knows it
        monkeypatch.setattr(submitit.SlurmJob, "state", property(lambda self, s=state: s))
        assert _active(job) is alive, state
    job.paths.result_pickle.parent.mkdir(parents=True, exist_ok=True)
    job.paths.result_pickle.write_bytes(b"")  # it ended (its run failed): submit it again
    monkeypatch.setattr(submitit.SlurmJob, "state", property(lambda self: "RUNNING"))
    assert not _active(job)
    assert _rebuild({"cluster": "debug", "job": "DEBUG_1", "folder": "x"}) is None
    assert _rebuild("garbage") is None
