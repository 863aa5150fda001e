"""Dense-arithmetic floor of one DimeNet++ energy + forces (default model, 64-atom diamond Si,
cutoff 5 Å: 1792 edges, 64 atoms of degree 28, 7 x 6 basis), float32.

Calls only the dense work the architecture needs, with the shapes congener's DimeNet++ uses,
forward and input-gradient backward, directly (no autograd, no basis functions, no gathers or
scatters, no elementwise products): the per-edge linear layers with their swish (nine
[32 -> 32], one [32 -> 16] and one [16 -> 32] per interaction block, the embedding's
[96 -> 32]), one swish derivative and one input-gradient matmul per layer, and the triplet
contraction of each block (one batched matmul forward, two backward). What an E+F costs
beyond this is the rest of the model: bases, gathers, elementwise products and autograd's
bookkeeping.

    .venv/bin/python benchmarks/dimenet_floor.py [--threads 2] [--reps 30]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.nn import functional as F

EDGES, ATOMS, DEGREE, L, INT_EMB, HIDDEN, BLOCKS = 1792, 64, 28, 7, 16, 32, 4


def dense_pass(t: dict[str, torch.Tensor]) -> None:
    """One E+F's dense work (results discarded)."""
    F.silu(t["m"])  # embedding: swish of the rbf projection, then [96 -> 32] and swish
    F.silu(F.linear(t["emb_in"], t["emb_w"], t["b"]))
    for _ in range(BLOCKS):
        for _ in range(9):  # lin_ji, lin_kj, before_skip (2), lin, after_skip (4): [32 -> 32]
            F.silu(F.linear(t["m"], t["w"], t["b"]))
        down = F.silu(F.linear(t["m"], t["w_down"]))  # [32 -> 16]
        torch.bmm(t["cbf"], t["h"])  # triplet contraction
        F.silu(F.linear(down, t["w_up"]))  # [16 -> 32]
    # backward to the positions: each layer's swish derivative and input-gradient matmul
    for _ in range(2):
        torch.ops.aten.silu_backward(t["grad"], t["m"])
    t["grad"] @ t["emb_w"]
    for _ in range(BLOCKS):
        for _ in range(9):
            torch.ops.aten.silu_backward(t["grad"], t["m"])
            t["grad"] @ t["w"]
        torch.ops.aten.silu_backward(t["grad"], t["m"])
        t["grad"] @ t["w_up"]
        torch.bmm(t["grad_agg"], t["h"].transpose(1, 2))  # to the angular basis
        torch.bmm(t["cbf"].transpose(1, 2), t["grad_agg"])  # to the messages
        torch.ops.aten.silu_backward(t["grad_down"], t["down"])
        t["grad_down"] @ t["w_down"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g)
    t = {"m": rand(EDGES, HIDDEN), "w": rand(HIDDEN, HIDDEN), "b": rand(HIDDEN),
         "w_down": rand(INT_EMB, HIDDEN), "w_up": rand(HIDDEN, INT_EMB),
         "down": rand(EDGES, INT_EMB), "grad_down": rand(EDGES, INT_EMB),
         "emb_in": rand(EDGES, 3 * HIDDEN),
         "emb_w": rand(HIDDEN, 3 * HIDDEN), "grad": rand(EDGES, HIDDEN),
         "cbf": rand(ATOMS, DEGREE, L * DEGREE), "h": rand(ATOMS, L * DEGREE, INT_EMB),
         "grad_agg": rand(ATOMS, DEGREE, INT_EMB)}
    for _ in range(5):
        dense_pass(t)
    times = []
    for _ in range(args.reps):
        start = time.perf_counter()
        dense_pass(t)
        times.append(time.perf_counter() - start)
    times.sort()
    median = 1e3 * times[len(times) // 2]
    print(f"{args.threads} threads: dense floor of one E+F, median {median:.2f} ms "
          f"(min {1e3 * times[0]:.2f})")


if __name__ == "__main__":
    main()
