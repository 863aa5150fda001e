"""Where a study's runs execute: the local process pool (default), Slurm through submitit, Ray.

Every run is independent and resumes from its folder (`runs/<name>/`), so an engine only has
to call `congener.studies.run.run_one` once per pending run and hand back its metrics or its
error; `learning_curve.execute` keeps the bookkeeping (failed.json, callbacks, results) for
all engines alike. The study folder must be visible to the engine's machines (a shared file
system) and congener installed there.

- slurm (`submitit`): the pending runs go out as one job array; `jobs/submitted.json` in the
  study folder records each run's job, so that running the study again while jobs still run
  re-attaches to them instead of submitting duplicates, and a run whose job ended without
  metrics (killed, cancelled, failed) is submitted again and resumes from its checkpoints.
  On a timeout or preemption submitit requeues the job itself (see `_RunJob.checkpoint`).
  `cluster: local` runs the jobs as local processes (Linux), `debug` in this process (tests).
- ray: one task per run with `num_cpus`/`num_gpus` each, on the cluster at `address` or on a
  local instance started for the batch (None); tasks end with the command that started them.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from congener.bounds import check_float, check_int
from congener.errors import ConfigError, CongenerError, first_line
from congener.files import write_json

if TYPE_CHECKING:
    from congener.studies.config import RunSpec

Done = Callable[["RunSpec", dict[str, Any] | None, BaseException | None], None]

SUBMITIT_CLUSTERS = ("slurm", "local", "debug")
# Slurm states of a job that may still deliver its result (UNKNOWN is not one: sacct forgets)
_ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED",
           "RESIZING", "PREEMPTED", "READY", "REQUEUE_HOLD", "REQUEUE_FED"}


class Engine(StrEnum):
    """Where runs execute: worker processes of this command, Slurm jobs, Ray tasks."""

    local = "local"
    slurm = "slurm"
    ray = "ray"


@dataclass(frozen=True)
class ExecutorSpec:
    """The study's `executor` section. Slurm: `partition`, `time_min` (per job), resources
    per run (`cpus_per_task`, also its torch threads; `gpus_per_node`, `mem_gb`), at most
    `array_parallelism` runs at once, extra `sbatch` options ({account: x, qos: y}), `setup`
    commands before each job (module load ...), job files and logs in `folder` (default
    `<study>/jobs`), submitit's `cluster` (slurm; local or debug to try it out) and `poll_s`
    between checks. Ray: `address` (None: start a local instance), `num_cpus`/`num_gpus`
    per run."""

    kind: Engine = field(default_factory=lambda: Engine.local)  # (no class default: parsed)
    partition: str | None = None
    time_min: int = 240
    cpus_per_task: int = 2
    gpus_per_node: int = 0
    mem_gb: float | None = None
    array_parallelism: int | None = None
    sbatch: dict[str, Any] | None = None
    setup: tuple[str, ...] = ()
    folder: str | None = None
    cluster: str | None = None
    poll_s: float = 10.0
    address: str | None = None
    num_cpus: float = 1.0
    num_gpus: float = 0.0

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "kind", Engine(self.kind))
        except ValueError:
            raise ConfigError(f"executor.kind must be one of {', '.join(Engine)} "
                              f"(got {self.kind!r})") from None
        for name in ("partition", "folder", "address"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, str) and value.strip()):
                raise ConfigError(f"executor.{name} must be a non-empty string or null "
                                  f"(got {value!r})")
        for name, low in (("time_min", 1), ("cpus_per_task", 1), ("gpus_per_node", 0),
                          ("array_parallelism", 1)):
            if name != "array_parallelism" or self.array_parallelism is not None:
                check_int(f"executor.{name}", getattr(self, name), low)
        for name in ("mem_gb", "poll_s", "num_cpus", "num_gpus"):
            if name != "mem_gb" or self.mem_gb is not None:
                check_float(f"executor.{name}", getattr(self, name), 0.0,
                            low_open=name != "num_gpus")
        if self.sbatch is not None and not (isinstance(self.sbatch, dict) and all(
                isinstance(k, str) and k.strip() for k in self.sbatch)):
            raise ConfigError(f"executor.sbatch must map sbatch option names to values, e.g. "
                              f"{{account: myproject}} (got {self.sbatch!r})")
        if isinstance(self.setup, str) or not all(isinstance(s, str) for s in self.setup):
            raise ConfigError(f"executor.setup must be a list of shell commands "
                              f"(got {self.setup!r})")
        object.__setattr__(self, "setup", tuple(self.setup))
        if self.cluster is not None and self.cluster not in SUBMITIT_CLUSTERS:
            raise ConfigError(f"executor.cluster must be one of {', '.join(SUBMITIT_CLUSTERS)} "
                              f"or null (got {self.cluster!r})")


class RunFailed(CongenerError):
    """A run that raised where its engine ran it; the message is what failed.json records."""


def _call(study_dir: str, cfg_dict: dict[str, Any], spec_dict: dict[str, Any], threads: int
          ) -> tuple[str, Any]:
    """One run on an engine's worker: ("done", metrics) or ("failed", the error's line), so
    that no exception has to survive the trip back."""
    from congener.studies import run

    try:
        return "done", run.run_one(study_dir, cfg_dict, spec_dict, threads)
    except Exception as exc:  # the line failed.json records (as learning_curve writes it)
        kind = "" if isinstance(exc, CongenerError) else f"{type(exc).__name__}: "
        return "failed", f"{kind}{exc}"


def _report(spec: RunSpec, outcome: tuple[str, Any], done: Done) -> None:
    status, value = outcome
    done(spec, *((value, None) if status == "done" else (None, RunFailed(value))))


def run_on_engine(ex: ExecutorSpec, study_dir: Path, cfg_dict: dict[str, Any],
                  specs: Sequence[RunSpec], done: Done) -> None:
    """Run `specs` on `ex.kind` (slurm or ray), calling `done(spec, metrics, error)` for each
    as it finishes."""
    engine = {Engine.slurm: run_submitit, Engine.ray: run_ray}[ex.kind]
    engine(ex, study_dir, cfg_dict, specs, done)


class _RunJob:
    """What a submitit job calls: one run. On a timeout or preemption submitit calls
    `checkpoint` and requeues the same call, which resumes from the run's checkpoints."""

    def __call__(self, *args: Any) -> tuple[str, Any]:
        return _call(*args)

    def checkpoint(self, *args: Any) -> Any:
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, *args)


def _need(module: str, kind: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"executor {kind} needs the {module} package: pip install "
                          f"'congener[engines]' (or executor.kind local)") from None


def run_submitit(ex: ExecutorSpec, study_dir: Path, cfg_dict: dict[str, Any],
                 specs: Sequence[RunSpec], done: Done) -> None:
    """Run `specs` as submitit jobs (one array), re-attaching to the jobs of earlier
    invocations that still run instead of submitting them again; waits for all of them."""
    import shutil

    submitit = _need("submitit", "slurm")
    cluster = ex.cluster or "slurm"
    if cluster == "slurm" and shutil.which("sbatch") is None:
        raise ConfigError("executor slurm: no sbatch command here (run the study on a Slurm "
                          "login node, or set executor.cluster local to try it out)")
    study = study_dir.absolute()
    records_path = study / "jobs" / "submitted.json"
    records = _read_records(records_path)
    jobs: dict[Any, RunSpec] = {}
    if cluster != "debug":  # (debug jobs run in this process: none to re-attach to)
        for spec in specs:
            job = _rebuild(records.get(spec.name))
            if job is not None and _active(job):
                jobs[job] = spec
    attached = {spec.name for spec in jobs.values()}
    fresh = [spec for spec in specs if spec.name not in attached]
    if fresh:
        folder = Path(ex.folder).absolute() if ex.folder else study / "jobs"
        submitted = _submit(submitit, ex, cluster, folder, study, cfg_dict, fresh)
        jobs.update(zip(submitted, fresh, strict=True))
        if cluster != "debug":
            records.update({s.name: {"job": j.job_id, "cluster": cluster, "folder": str(folder)}
                            for j, s in zip(submitted, fresh, strict=True)})
            records_path.parent.mkdir(parents=True, exist_ok=True)
            write_json(records_path, records)
    for job in submitit.helpers.as_completed(list(jobs), poll_frequency=ex.poll_s):
        _report(jobs[job], _outcome(job, submitit), done)


def _submit(submitit: Any, ex: ExecutorSpec, cluster: str, folder: Path, study: Path,
            cfg_dict: dict[str, Any], specs: Sequence[RunSpec]) -> list[Any]:
    """One job array of `specs` with the section's resources; its jobs in the same order."""
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    executor.update_parameters(
        name=f"congener-{cfg_dict.get('name', 'study')}", timeout_min=ex.time_min,
        cpus_per_task=ex.cpus_per_task, gpus_per_node=ex.gpus_per_node or None,
        mem_gb=ex.mem_gb, slurm_partition=ex.partition,
        slurm_array_parallelism=ex.array_parallelism,
        slurm_additional_parameters=dict(ex.sbatch or {}) or None,
        slurm_setup=list(ex.setup) or None)
    n = len(specs)
    try:
        return executor.map_array(_RunJob(), [str(study)] * n, [cfg_dict] * n,
                                  [asdict(s) for s in specs], [ex.cpus_per_task] * n)
    except (submitit.core.utils.UncompletedJobError,
            submitit.core.utils.FailedSubmissionError) as exc:  # sbatch said no
        raise CongenerError(f"{cluster} refused the jobs: {first_line(exc)}") from exc


def _outcome(job: Any, submitit: Any) -> tuple[str, Any]:
    """What a finished job delivered; a job that broke or died comes back as a failure."""
    try:
        return job.result()
    except submitit.core.utils.FailedJobError as exc:  # the job's own code broke
        trace = str(exc).split("-" * 22)  # submitit puts the traceback between such lines
        last = [line for line in trace[len(trace) > 2].splitlines() if line.strip()]
        return "failed", f"job {job.job_id} failed: {(last or ['?'])[-1].strip()}; " \
                         f"log: {job.paths.stderr}"
    except submitit.core.utils.UncompletedJobError:  # killed, cancelled, out of memory
        return "failed", (f"job {job.job_id} ended without a result ({job.state}); run the "
                          "study again to resume the run from its checkpoints; log: "
                          f"{job.paths.stderr}")


def _read_records(path: Path) -> dict[str, dict[str, str]]:
    """Run name -> {job, cluster, folder} of the jobs submitted so far (unreadable: none)."""
    import json

    with contextlib.suppress(OSError, ValueError):
        records = json.loads(path.read_text())
        return records if isinstance(records, dict) else {}
    return {}


def _rebuild(record: Any) -> Any:
    """The submitit job of an earlier invocation, from its folder and id (None: none)."""
    import submitit

    if not isinstance(record, dict) or record.get("cluster") not in ("slurm", "local"):
        return None
    kind = submitit.SlurmJob if record["cluster"] == "slurm" else _attached_local_job()
    return kind(str(record.get("folder")), str(record.get("job")))


def _active(job: Any) -> bool:
    """Whether a rebuilt job may still deliver its run's result."""
    if job.paths.result_pickle.exists():  # it ended; without metrics.json, the run failed
        return False
    if isinstance(job, _attached_local_job()):
        return not job.done()
    return str(job.state).split(" ")[0].upper() in _ACTIVE


@functools.cache
def _attached_local_job() -> type:
    import submitit

    class AttachedLocalJob(submitit.LocalJob):
        """A local job started by an earlier invocation: with no process handle, it runs as
        long as its controller process (the job id; a reused pid has another cmdline) does."""

        def done(self, force_check: bool = False) -> bool:
            if self.paths.result_pickle.exists():
                return True
            try:
                return b"submitit" not in Path(f"/proc/{self.job_id}/cmdline").read_bytes()
            except OSError:
                return True

    return AttachedLocalJob


def run_ray(ex: ExecutorSpec, study_dir: Path, cfg_dict: dict[str, Any],
            specs: Sequence[RunSpec], done: Done) -> None:
    """Run `specs` as Ray tasks (`num_cpus`, `num_gpus` each) on the cluster at `ex.address`
    or on a local instance; the tasks are cancelled if this process stops waiting."""
    ray = _need("ray", "ray")
    started = not ray.is_initialized()
    if started:
        local = {"include_dashboard": False} if ex.address is None else {}
        ray.init(address=ex.address, log_to_driver=False, **local)
    try:
        task = ray.remote(num_cpus=ex.num_cpus, num_gpus=ex.num_gpus)(_call)
        threads = max(1, math.floor(ex.num_cpus))
        study = str(study_dir.absolute())
        refs = {task.remote(study, cfg_dict, asdict(s), threads): s for s in specs}
        waiting = list(refs)
        try:
            while waiting:
                ready, waiting = ray.wait(waiting, num_returns=1)
                for ref in ready:
                    try:
                        outcome = ray.get(ref)
                    except ray.exceptions.RayError as exc:  # the worker died, not the run
                        outcome = ("failed", f"ray task failed ({type(exc).__name__}): "
                                             f"{first_line(exc)}; run the study again to "
                                             "resume the run from its checkpoints")
                    _report(refs[ref], outcome, done)
        except BaseException:
            for ref in waiting:
                ray.cancel(ref, force=True)
            raise
    finally:
        if started:
            ray.shutdown()
