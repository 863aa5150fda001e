"""`congener data ...`: files written, summaries printed, bad input -> one line, exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.io import write

from congener.cli import main
from congener.data.structures import label, read_structures
from tests.test_data_mlearn import _entries

TINY_SW = ["--temperatures", "300,900", "--npt-steps", "100", "--nvt-steps", "150",
           "--sample-every", "50", "--workers", "1"]


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_sw_info_and_split(tmp_path: Path, capsys):
    out = tmp_path / "ge_sw.extxyz"
    code, stdout, _ = _run(capsys, "data", "sw", "--element", "Ge", "-o", str(out), *TINY_SW)
    assert code == 0 and "wrote 6 structures (2 temperatures)" in stdout
    assert (tmp_path / "ge_sw.work" / "T900K.extxyz").is_file()
    assert len(read_structures(out)) == 6
    code, stdout, _ = _run(capsys, "data", "info", str(out))
    assert code == 0
    assert "structures: 6, atoms: 384 (64-64 per structure), elements: Ge" in stdout
    assert "SW-MD" in stdout and "900: 3" in stdout
    code, stdout, _ = _run(capsys, "data", "split", str(out), "--val", "1", "--test", "1",
                           "--stratify", "temperature", "--seed", "2", "-o",
                           str(tmp_path / "part"))
    assert code == 0
    sizes = {p: len(read_structures(tmp_path / f"part_{p}.extxyz")) for p in ("train", "val",
                                                                             "test")}
    assert sizes == {"train": 2, "val": 2, "test": 2}


def test_mlearn_folder_writes_train_and_test(tmp_path: Path, capsys):
    folder = tmp_path / "Ge"
    folder.mkdir()
    (folder / "training.json").write_text(json.dumps(_entries()))
    (folder / "test.json").write_text(json.dumps(_entries()[:1]))
    code, stdout, _ = _run(capsys, "data", "mlearn", str(folder), "-o",
                           str(tmp_path / "ge_dft.extxyz"), "--no-surfaces")
    assert code == 0, stdout
    assert len(read_structures(tmp_path / "ge_dft_train.extxyz")) == 2
    assert len(read_structures(tmp_path / "ge_dft_test.extxyz")) == 1
    code, _, _ = _run(capsys, "data", "mlearn", str(folder / "training.json"), "-o",
                      str(tmp_path / "one.extxyz"))
    assert code == 0 and len(read_structures(tmp_path / "one.extxyz")) == 3


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["data", "sw", "--element", "Xx", "-o", "x.extxyz"], "unknown element 'Xx'"),
        (["data", "sw", "--element", "Sn", "-o", "x.extxyz"], "no Stillinger-Weber parameters"),
        (["data", "sw", "--element", "Ge", "--params", "{si}", "-o", "x.extxyz"],
         "has no Ge Ge Ge entry"),
        (["data", "sw", "--element", "Ge", "--temperatures", "300,-1", "-o", "x.extxyz"],
         "temperatures_K must be"),
        (["data", "sw", "--element", "Ge", "--temperatures", "hot", "-o", "x.extxyz"],
         "--temperatures must be"),
        (["data", "sw", "--element", "Ge", "--nvt-steps", "0", "-o", "x.extxyz"],
         "nvt_steps must be"),
        (["data", "info", "{missing}"], "no such file"),
        (["data", "info", "{garbage}"], "cannot read"),
        (["data", "mlearn", "{garbage}", "-o", "x.extxyz"], "as JSON"),
        (["data", "split", "{missing}", "--val", "1", "-o", "p"], "no such file"),
        (["data", "info", "{nanforce}"], "nanforce.extxyz: structure 1 has a non-finite force "
                                         "on atom 1"),
        (["data", "info", "{nanstress}"], "structure 1 has a non-finite stress"),
        (["data", "info", "{unlabelled}"], "structure 1: Si2 carries no reference energy"),
        (["data", "info", "{flatcell}"], "structure 1 is periodic"),
    ],
)
def test_bad_input_gives_one_line_and_exit_2(tmp_path: Path, capsys, monkeypatch, argv,
                                             message):
    from congener.data.stillinger_weber import shipped_params_path

    monkeypatch.chdir(tmp_path)
    (tmp_path / "garbage").write_text("not a structure file\n")
    paths = {"si": str(shipped_params_path("Si")), "missing": str(tmp_path / "nothing.xyz"),
             "garbage": str(tmp_path / "garbage")}
    # a good structure, then a bad one: the message names the file and the second structure
    for name in ("nanforce", "nanstress", "unlabelled", "flatcell"):
        good, bad = (Atoms("Si2", positions=[[0, 0, 0], [1.2, 1.3, 1.1]], cell=3.0 * np.eye(3),
                           pbc=True) for _ in range(2))
        forces, stress = np.ones((2, 3)), np.zeros(6)
        label(good, energy=-9.0, forces=forces, stress=stress)
        if name == "nanforce":
            forces = np.where(np.eye(2, 3, k=-1) > 0, np.nan, forces)
        if name == "nanstress":
            stress = np.full(6, np.nan)
        if name == "flatcell":
            bad.cell[2] = 0.0
        if name != "unlabelled":
            label(bad, energy=-9.0, forces=forces, stress=stress)
        write(tmp_path / f"{name}.extxyz", [good, bad], format="extxyz")
        paths[name] = str(tmp_path / f"{name}.extxyz")
    code, _, err = _run(capsys, *[a.format(**paths) for a in argv])
    assert code == 2
    assert err.startswith("error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_console_script_reports_errors_without_traceback(tmp_path: Path):
    script = Path(sys.executable).with_name("congener")
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "congener"]
    result = subprocess.run([*command, "data", "info", str(tmp_path / "none.extxyz")],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: no such file: {tmp_path / 'none.extxyz'}"]
