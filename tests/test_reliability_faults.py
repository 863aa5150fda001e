"""Faults and bad input that used to give silent wrong results, a mess or a traceback (issue 20):
locks, workers that die with their parent, the elements and labels a run can learn from,
operating-system errors, unreadable checkpoints and study plans checked before anything runs."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from congener.data.structures import label, write_structures
from congener.files import folder_lock
from congener.models.checkpoint import load_potential, save_potential
from tests.conftest import Result, small_potential
from tests.test_study import files, tiny_values  # noqa: F401  (module fixture)
from tests.test_training import sw_labelled

SMALL = """model: {cutoff: 4.0, hidden: 8, out_emb: 8, int_emb: 4, num_blocks: 1,
        num_spherical: 3, num_radial: 3}
train: {epochs: 1, batch_size: 2, lr: 0.003}
"""
SRC = str(Path(__file__).resolve().parents[1] / "src")


def reliability(kind: str, sees: str):
    return pytest.mark.reliability(kind, sees)




@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    write_structures(root / "si.extxyz", sw_labelled(4, seed=30))
    write_structures(root / "ge.extxyz", sw_labelled(3, seed=40, element="Ge", a=5.65))
    (root / "small.yaml").write_text(SMALL)
    return root


def one_error_line(res: Result, *needles: str) -> None:
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in res.output, res.output
    for needle in needles:
        assert needle in lines[0], res.output


def _holder(folder: Path) -> subprocess.Popen:
    """Another process that holds the folder's lock until killed."""
    code = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {SRC!r})
        from congener.files import folder_lock
        with folder_lock({str(folder)!r}, "x"):
            print("locked", flush=True)
            time.sleep(120)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


# --- silent wrong results ---------------------------------------------------------------------

@reliability("silent", "a second study on a busy folder: one line naming the process running it")
def test_second_study_on_a_busy_folder_is_refused_and_a_killed_holder_leaves_no_lock(
        files, tmp_path, invoke):  # noqa: F811
    study = tmp_path / "s"
    cfg = tmp_path / "study.yaml"
    cfg.write_text(json.dumps(tiny_values(files, sizes=[1], seeds=[0], modes=["scratch"],
                                          temperature=None, workers=1)))
    holder = _holder(study)
    try:
        res = invoke("study", cfg, "-o", study)
        one_error_line(res, f"study {study} is being run by process {holder.pid}")
        res = invoke("study", cfg, "-o", study, "--report-only")
        assert res.exit_code == 2  # (no data yet, or busy: never a report beside a live run)
        assert not (study / "config.json").exists()  # nothing written by the refused process
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with folder_lock(study, "study"):  # the kernel released the killed holder's lock
        pass


@reliability("silent", "a second training into a busy run folder: one line naming the process")
def test_second_training_into_a_busy_run_folder_is_refused(data, tmp_path, invoke):
    run = tmp_path / "run"
    holder = _holder(run)
    try:
        res = invoke("train", "--train", data / "si.extxyz", "--val", data / "si.extxyz",
                     "--config", data / "small.yaml", "-o", run)
        one_error_line(res, f"run folder {run} is being run by process {holder.pid}")
        assert not (run / "last.pt").exists()
    finally:
        holder.kill()
        holder.wait()


@reliability("silent", "validation elements the training set lacks: refused by name")
def test_validation_element_absent_from_training_is_refused(data, tmp_path, invoke):
    res = invoke("train", "--train", data / "si.extxyz", "--val", data / "ge.extxyz",
                 "--config", data / "small.yaml", "-o", tmp_path / "r")
    one_error_line(res, "validation set holds Ge", "no training structure")
    assert not (tmp_path / "r" / "model.pt").exists()
    # and a model trained on Si refuses Ge everywhere it is used
    save_potential(tmp_path / "si.pt", small_potential(("Si",)))
    one_error_line(invoke("evaluate", tmp_path / "si.pt", data / "ge.extxyz"), "Ge")


@reliability("silent", "an element in one training structure only: a warning line")
def test_element_in_one_training_structure_is_warned(tmp_path, invoke, data):
    from congener.data.structures import read_structures

    si = read_structures(data / "si.extxyz")
    mixed = si[0].copy()
    mixed.calc = si[0].calc
    mixed.numbers[0] = 32  # one Ge atom in one structure
    write_structures(tmp_path / "mixed.extxyz", [mixed, *si[1:]])
    res = invoke("train", "--train", tmp_path / "mixed.extxyz", "--val", data / "si.extxyz",
                 "--config", data / "small.yaml", "-o", tmp_path / "r")
    assert res.exit_code == 0, res.output
    assert "warning: Ge appears in only 1 of 4 training structures" in res.output


def _no_stress(structures, key: str | None = None):
    out = []
    for atoms in structures:
        bare = atoms.copy()
        label(bare, energy=atoms.get_potential_energy(), forces=atoms.get_forces())
        if key:
            bare.info[key] = atoms.get_stress().tolist()
        out.append(bare)
    return out


@reliability("silent", "a stress weight on data without stress: refused, naming REF_stress")
def test_stress_term_without_stress_labels_is_refused(data, tmp_path, invoke):
    from congener.data.structures import read_structures

    si = read_structures(data / "si.extxyz")
    write_structures(tmp_path / "bare.extxyz", _no_stress(si))
    write_structures(tmp_path / "ref.extxyz", _no_stress(si, "REF_stress"))
    write_structures(tmp_path / "half.extxyz", _no_stress(si[:2]) + si[2:])
    base = ["train", "--val", data / "si.extxyz", "--config", data / "small.yaml",
            "--stress-weight", 1]
    res = invoke(*base, "--train", tmp_path / "bare.extxyz", "-o", tmp_path / "a")
    one_error_line(res, "none of the 4 training structures carries a stress")
    res = invoke(*base, "--train", tmp_path / "ref.extxyz", "-o", tmp_path / "b")
    one_error_line(res, "REF_stress")
    res = invoke(*base, "--train", tmp_path / "half.extxyz", "-o", tmp_path / "c")
    assert res.exit_code == 0 and "warning: the stress term is fed by 2 of 4" in res.output
    history = (tmp_path / "c" / "history.csv").read_text().splitlines()[0]
    assert "train_stress_mse" in history


@reliability("silent", "training on overlapping atoms names the structure and its 0 Å pair")
def test_nan_training_loss_names_the_structure(data, tmp_path):
    from congener.data.structures import read_structures
    from congener.errors import SimulationUnstable
    from congener.training import LabelledSet, TrainConfig, fit

    si = read_structures(data / "si.extxyz")
    broken = si[2].copy()
    broken.calc = si[2].calc
    broken.positions[1] = broken.positions[0]  # two atoms on one site
    train = [si[0], si[1], broken, si[3]]
    cfg = TrainConfig(epochs=1, batch_size=4, seed=0)
    with pytest.raises(SimulationUnstable, match=r"training set structure 2 \(Si8, shortest "
                                                 r"interatomic distance 0 Å\)"):
        fit(small_potential(cutoff=4.0), LabelledSet(train, 4.0, name="training set"),
            LabelledSet(si[:2], 4.0), cfg)


# --- faults that leave a mess -----------------------------------------------------------------

_POOL_SCRIPT = """
import os, sys, time
sys.path.insert(0, {src!r})
from congener.parallel import worker_pool

def work(path):
    open(path, "w").write(str(os.getpid()))
    time.sleep(120)

if __name__ == "__main__":
    with worker_pool(2) as pool:
        futures = [pool.submit(work, {out!r} + str(k)) for k in range(2)]
        print("submitted", flush=True)
        time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")  # a zombie is dead
    return not (status.is_file() and "\nState:\tZ" in status.read_text())


@reliability("mess", "workers of a killed parent exit within seconds (no orphans, no race)")
def test_pool_workers_die_with_a_killed_parent(tmp_path):
    script = tmp_path / "pool.py"
    script.write_text(_POOL_SCRIPT.format(src=SRC, out=str(tmp_path / "worker")))
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert parent.stdout.readline().strip() == "submitted"
    pids_files = [tmp_path / f"worker{k}" for k in range(2)]
    deadline = time.time() + 60
    while not all(p.is_file() and p.read_text() for p in pids_files):
        assert time.time() < deadline, "workers did not start"
        time.sleep(0.1)
    pids = [int(p.read_text()) for p in pids_files]
    assert all(_alive(pid) for pid in pids)
    parent.send_signal(signal.SIGKILL)  # like `kill -9`: no cleanup code runs in the parent
    parent.wait()
    deadline = time.time() + 10
    while any(_alive(pid) for pid in pids) and time.time() < deadline:
        time.sleep(0.1)
    left = [pid for pid in pids if _alive(pid)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, "orphaned workers kept running"


@reliability("mess", "a study whose test set rounds to nothing: refused before any data is made")
def test_study_with_empty_test_split_is_refused_before_generation(tmp_path, invoke):
    cfg = tmp_path / "study.yaml"
    cfg.write_text("target: {data: 'sw:Ge', test_size: 4}\nsizes: [1]\nseeds: [0]\n"
                   "modes: [scratch]\n")
    start = time.perf_counter()
    res = invoke("study", cfg, "-o", tmp_path / "s")
    one_error_line(res, "test_size 4", "8 temperatures", "use test_size >= ")
    assert time.perf_counter() - start < 5
    assert not (tmp_path / "s" / "data").exists()


@pytest.mark.parametrize(("changes", "needle"), [
    ({"sizes": [20]}, "too few for size 20"),
    ({"hpo": {"size": 9, "lr": [0.001]}}, "too few for hpo.size 9"),
    ({"temperature": {"temperature_K": 2000, "sizes": [6]}}, "temperature size 6"),
    ({"mapping": {"C": "Ge"}}, "mapping names C"),
    ({"mapping": {"Si": "Sn"}}, "the target data holds Ge"),
    ({"source": {"data": "FILE_SI", "val_size": 8}}, "too few for source.val_size 8"),
])
@reliability("late", "a plan its data cannot carry: one line before any data or training")
def test_study_plan_checked_before_anything_runs(files, tmp_path, invoke, changes,  # noqa: F811
                                                 needle):
    values = tiny_values(files, workers=1)
    for key, value in changes.items():
        if isinstance(value, dict) and value.get("data") == "FILE_SI":
            value = {**value, "data": str(files / "si.extxyz")}
        values[key] = value
    cfg = tmp_path / "study.yaml"
    cfg.write_text(json.dumps(values))
    one_error_line(invoke("study", cfg, "-o", tmp_path / "s"), needle)
    assert not (tmp_path / "s" / "source").exists()
    assert not (tmp_path / "s" / "data").exists()


# --- tracebacks where one line is promised ----------------------------------------------------

@reliability("traceback", "-o naming an existing file, --json a folder: one line")
def test_outputs_that_cannot_be_written(data, tmp_path, invoke):
    (tmp_path / "taken").write_text("x")
    res = invoke("train", "--train", data / "si.extxyz", "--config", data / "small.yaml",
                 "-o", tmp_path / "taken")
    one_error_line(res, "is an existing file, not a folder")
    res = invoke("train", "--train", data / "si.extxyz", "--config", data / "small.yaml",
                 "-o", tmp_path / "taken" / "run")
    one_error_line(res, "taken")
    save_potential(tmp_path / "m.pt", small_potential(("Si",)))
    (tmp_path / "dir").mkdir()
    res = invoke("evaluate", tmp_path / "m.pt", data / "si.extxyz", "--json", tmp_path / "dir")
    one_error_line(res, "dir")


@reliability("mess", "data mlearn -o a folder: one line, no temporary left behind")
def test_structures_to_a_folder_leave_no_temporary(data, tmp_path, invoke):
    (tmp_path / "out").mkdir()
    res = invoke("data", "split", data / "si.extxyz", "--test", 1, "-o", tmp_path / "out" / "x")
    assert res.exit_code == 0
    (tmp_path / "x_train.extxyz").mkdir()
    res = invoke("data", "split", data / "si.extxyz", "--test", 1, "-o", tmp_path / "x")
    one_error_line(res, "x_train.extxyz is a folder")
    assert not [p for p in tmp_path.rglob("*.tmp")]


@reliability("mess", "a full disk: one line, the old file kept, no temporary left behind")
def test_full_disk_keeps_the_old_file_and_leaves_no_temporary(data, tmp_path, invoke,
                                                              monkeypatch):
    import ase.io

    target = tmp_path / "x_test.extxyz"
    target.write_text("old")
    real_write = ase.io.write

    def full(path, *args, **kwargs):
        real_write(path, *args, **kwargs)  # a partial file exists when the disk fills up
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(ase.io, "write", full)
    res = invoke("data", "split", data / "si.extxyz", "--test", 1, "-o", tmp_path / "x")
    one_error_line(res, "No space left on device", "the disk is full")
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert target.read_text() == "old"


@reliability("traceback", "an empty checkpoint, a folder, last.pt as a model: one line each")
def test_unusable_checkpoints_give_one_line(data, tmp_path, invoke):
    (tmp_path / "empty.pt").write_bytes(b"")
    one_error_line(invoke("evaluate", tmp_path / "empty.pt", data / "si.extxyz"),
                   "empty (0 bytes)")
    res = invoke("train", "--train", data / "si.extxyz", "--val", data / "si.extxyz",
                 "--config", data / "small.yaml", "-o", tmp_path / "run")
    assert res.exit_code == 0, res.output
    one_error_line(invoke("evaluate", tmp_path / "run" / "last.pt", data / "si.extxyz"),
                   "training-state file", "model.pt")
    one_error_line(invoke("evaluate", tmp_path / "run", data / "si.extxyz"),
                   "is a folder, not a checkpoint", "model.pt")


@reliability("mess", "a 0-byte best_state.pt: the resume takes the same weights from best.pt")
def test_resume_with_an_empty_best_state_uses_best_pt(data, tmp_path, invoke):
    args = ["train", "--train", data / "si.extxyz", "--val", data / "si.extxyz",
            "--config", data / "small.yaml", "-o", tmp_path / "run"]
    assert invoke(*args, "--epochs", 2).exit_code == 0
    best = torch.load(tmp_path / "run" / "best.pt", weights_only=True)["state_dict"]
    (tmp_path / "run" / "best_state.pt").write_bytes(b"")
    # the configuration must match to resume: the same epochs; a finished run reloads its best
    res = invoke(*args, "--epochs", 2)
    assert res.exit_code == 0, res.output
    final = load_potential(tmp_path / "run" / "model.pt")
    for name, value in best.items():
        if name != "energy_refs":
            torch.testing.assert_close(final.state_dict()[name], value.float(), msg=name)


@reliability("traceback", "every parameter frozen: one line instead of an empty optimizer")
def test_freezing_everything_is_refused(data, tmp_path, invoke):
    save_potential(tmp_path / "si.pt", small_potential(("Si",), cutoff=4.0))
    res = invoke("transfer", tmp_path / "si.pt", "--map", "Si=Ge", "--freeze", "*",
                 "--train", data / "ge.extxyz", "--val", data / "ge.extxyz", "-o", tmp_path / "r")
    one_error_line(res, "every parameter is frozen")


@reliability("late", "--map Si=Ge --map Si=C: refused instead of the last one winning")
def test_map_given_twice_is_refused(data, tmp_path, invoke):
    save_potential(tmp_path / "si.pt", small_potential(("Si",), cutoff=4.0))
    base = ["transfer", tmp_path / "si.pt", "--train", data / "ge.extxyz", "-o", tmp_path / "r"]
    one_error_line(invoke(*base, "--map", "Si=Ge", "--map", "Si=C"), "maps Si twice")


@pytest.mark.parametrize(("source", "needle"), [
    ("chgnet:9.9.9", "unknown chgnet model '9.9.9' (known: chgnet:0.3.0"),
    ("mace:medium", "'mace' is not a foundation family"),
    ("nowhere.pt", "no such checkpoint"),
])
@reliability("traceback", "an unknown foundation name or checkpoint: one line naming the known")
def test_unknown_sources_give_one_line(data, tmp_path, invoke, source, needle):
    one_error_line(invoke("evaluate", source, data / "si.extxyz"), needle)
    one_error_line(invoke("transfer", source, "--list-blocks"), needle)


@reliability("late", "a new element without --map, a block the model lacks: one line each")
def test_transfer_without_map_and_unknown_block(data, tmp_path, invoke):
    save_potential(tmp_path / "si.pt", small_potential(("Si",), cutoff=4.0))
    base = ["transfer", tmp_path / "si.pt", "--train", data / "ge.extxyz", "--val",
            data / "ge.extxyz", "-o", tmp_path / "r"]
    one_error_line(invoke(*base), "knows Si, not Ge", "--map Si=Ge")
    one_error_line(invoke(*base, "--map", "Si=Ge", "--freeze", "atom_conv:0"),
                   "'atom_conv:0' matches no block", "interaction:0")
    res = invoke("transfer", tmp_path / "si.pt", "--list-blocks")
    assert res.exit_code == 0 and "interaction:1" in res.output and "total" in res.output
    one_error_line(invoke("transfer", tmp_path / "si.pt", "--map", "Si=Ge"), "--train")


def _sleep_and_report(path: str) -> None:
    Path(path).write_text(str(os.getpid()))
    time.sleep(120)


@reliability("mess", "an exception in the parent stops the pool's running workers at once")
def test_pool_workers_are_terminated_when_the_parent_raises(tmp_path):
    from congener.parallel import worker_pool

    marker = tmp_path / "pid"
    start = time.perf_counter()
    with pytest.raises(RuntimeError, match="stop"), worker_pool(1) as pool:
        pool.submit(_sleep_and_report, str(marker))
        deadline = time.time() + 60
        while not (marker.is_file() and marker.read_text()):
            assert time.time() < deadline, "worker did not start"
            time.sleep(0.05)
        raise RuntimeError("stop")
    assert time.perf_counter() - start < 30  # not the task's 120 s
    pid = int(marker.read_text())
    deadline = time.time() + 10
    while _alive(pid) and time.time() < deadline:
        time.sleep(0.1)
    assert not _alive(pid)


@pytest.mark.parametrize(("arm", "needle"), [
    ({"name": "t", "start": "FILE", "refs": "train"}, "energy_weight > 0"),
    ({"name": "t", "start": "FILE", "train": {"lr": 0.0001, "lr_final": 0.001}}, "lr_final"),
    ({"name": "t", "start": "FILE", "freeze": ["first:99"]}, "count of blocks"),
])
@reliability("late", "an arm whose settings cannot train: one line before any run")
def test_bad_arm_settings_fail_before_any_run(files, tmp_path, invoke, arm,  # noqa: F811
                                              needle):
    save_potential(tmp_path / "m.pt", small_potential(("Ge",), cutoff=4.0).float())
    values = tiny_values(files, sizes=[1], seeds=[0], temperature=None, workers=1)
    values.pop("modes")
    values["arms"] = [{**arm, "start": str(tmp_path / "m.pt")}]
    cfg = tmp_path / "study.yaml"
    cfg.write_text(json.dumps(values))
    one_error_line(invoke("study", cfg, "-o", tmp_path / "s"), "arm t", needle)
    assert not (tmp_path / "s" / "runs").exists()


def test_an_arm_learning_rate_keeps_the_study_decay():
    from congener.studies.arms import Arm
    from congener.studies.run import arm_config
    from congener.training import TrainConfig

    cfg = arm_config(TrainConfig(lr=1e-3, lr_final=1e-5),
                     Arm(name="a", start="chgnet:0.3.0", train={"lr": 3e-4}))
    assert cfg.lr == 3e-4 and cfg.lr_final == pytest.approx(3e-6)
