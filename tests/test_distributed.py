"""Data-parallel training (torch.distributed, gloo on CPU): two processes give the weights of
one process on the same batches, to float rounding; rank 0 alone writes the run folder."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from congener.data.structures import read_structures, write_structures
from congener.training.config import TrainConfig
from congener.training.data import LabelledSet
from congener.training.trainer import fit
from tests.conftest import small_potential
from tests.test_training import sw_labelled

CASES = {
    # 6 structures, batch 4: parts of 2+2, then 1+1
    "even": dict(n=6, cfg=TrainConfig(epochs=3, batch_size=4, lr=3e-3, lr_final=1e-3,
                                      energy_weight=10.0, stress_weight=0.1, dtype="float64",
                                      seed=3, threads=1)),
    # 5 structures, batch 4, references trained with the weights and structure weights: the
    # last batch has one structure, so rank 1 joins the reduction with an empty part
    "uneven": dict(n=5, weights=[1.0, 2.0, 0.5, 1.0, 3.0],
                   cfg=TrainConfig(epochs=3, batch_size=4, lr=3e-3, lr_final=1e-3,
                                   energy_weight=10.0, refs="train", ema_decay=0.5,
                                   dtype="float64", seed=4, threads=1)),
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(case: str, folder: Path, run_dir: Path | None) -> dict[str, torch.Tensor]:
    spec = CASES[case]
    structures = read_structures(folder / "train.extxyz")
    train = LabelledSet(structures, 4.0, weights=spec.get("weights"))
    val = LabelledSet(read_structures(folder / "val.extxyz"), 4.0)
    potential = small_potential(("Si",), cutoff=4.0, seed=11)
    fit(potential, train, val, spec["cfg"], run_dir=run_dir)
    return {k: v.detach().clone() for k, v in potential.state_dict().items()}


def _worker(rank: int, world: int, port: int, folder: str) -> None:
    """Every case in one process group (spawning costs more than the training)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        for case in CASES:
            state = _train(case, Path(folder) / case, Path(folder) / case / "run")
            torch.save(state, Path(folder) / case / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """Each case's data, trained once by two gloo ranks (folders <case>/rank0.pt, rank1.pt)."""
    folder = tmp_path_factory.mktemp("ddp")
    structures = sw_labelled(8, seed=20)
    for case, spec in CASES.items():
        (folder / case).mkdir()
        write_structures(folder / case / "train.extxyz", structures[:spec["n"]])
        write_structures(folder / case / "val.extxyz", structures[spec["n"]:spec["n"] + 3])
    mp.start_processes(_worker, args=(2, _free_port(), str(folder)), nprocs=2, join=True,
                       start_method="spawn")
    return folder


@pytest.mark.parametrize("case", sorted(CASES))
def test_two_ranks_give_the_single_process_weights(case, two_ranks):
    folder = two_ranks / case
    single = _train(case, folder, None)
    ranks = [torch.load(folder / f"rank{r}.pt") for r in (0, 1)]
    start = small_potential(("Si",), cutoff=4.0, seed=11).state_dict()
    moved = 0.0
    for name, value in single.items():
        for state in ranks:  # both ranks hold the same weights, equal to one process's
            torch.testing.assert_close(state[name], value, rtol=1e-9, atol=1e-11)
        moved = max(moved, float((value - start[name]).abs().max()))
    assert moved > 1e-3  # the weights did move: the comparison is not of untouched values
    # rank 0 wrote the run folder (checkpoints keep float32 weights: compare to that rounding)
    from congener.models.checkpoint import load_potential

    saved = load_potential(folder / "run" / "model.pt", dtype=torch.float64).state_dict()
    for name, value in single.items():
        torch.testing.assert_close(saved[name], value, rtol=1e-6, atol=1e-7)
    assert (folder / "run" / "history.csv").is_file()
    assert not list((folder / "run").glob(".*.tmp"))
