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
    .venv/bin/python benchmarks/dimenet_floor.py --ops   # what the rest costs, op by op

`--ops` times single ops at the model's shapes in isolation (swish and its backward, exp, a
product and a matmul on one [1792, 32] edge tensor, the triplet gradient bmm; operands in
cache) and then profiles ten E+F of congener's model on the same structure (torch.profiler,
self time per op and input shape): the same ops inside the model, operands no longer in cache.
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np
import torch
from dimenet_speed import make_potential, package, structures, timed  # this script's folder
from torch.nn import functional as F

from congener.graph import build_graph
from congener.runtime import tune_allocator

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


def op_costs(reps: int) -> None:
    """Single ops timed in isolation, then the profile of ten real E+F (top ops by self time)."""
    from torch.profiler import ProfilerActivity, profile

    x, y = torch.randn(EDGES, HIDDEN), torch.randn(EDGES, HIDDEN)
    xn = x.numpy()
    grad_agg, h = torch.randn(ATOMS, DEGREE, INT_EMB), torch.randn(ATOMS, L * DEGREE, INT_EMB)
    ops = {"swish": lambda: F.silu(x), "swish backward": lambda: torch.ops.aten.silu_backward(y, x),
           "exp": lambda: torch.exp(x), "numpy exp": lambda: np.exp(xn),
           "multiply": lambda: x * y, "[1792, 32] @ [32, 32]": lambda: x @ y[:HIDDEN],
           "triplet grad @ h^T": lambda: torch.bmm(grad_agg, h.transpose(1, 2))}
    print(f"isolated, [{EDGES}, {HIDDEN}] float32 (the triplet gradient: [{ATOMS}, {DEGREE}, "
          f"{INT_EMB}] @ [{ATOMS}, {INT_EMB}, {L * DEGREE}]), CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}:")
    for name, op in ops.items():
        timed(op, 20)
        print(f"  {name:24s} {1e6 * statistics.mean(timed(op, 20 * reps)):7.1f} µs")
    tune_allocator()
    pot = make_potential(package(), 5.0)
    graph = build_graph(structures("crystal", 1)[0], 5.0).to(dtype=torch.float32)
    for _ in range(5):
        pot(graph)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(10):
            pot(graph)
    print("ten E+F of the model ('CPU time avg' is per call; calls per E+F = calls / 10):")
    print(prof.key_averages(group_by_input_shape=True).table(
        sort_by="self_cpu_time_total", row_limit=20, max_name_column_width=24,
        max_shapes_column_width=60))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--ops", action="store_true",
                    help="time single ops in isolation and profile real E+F instead")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.ops:
        op_costs(args.reps)
        return
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
    timed(lambda: dense_pass(t), 5)
    times = timed(lambda: dense_pass(t), args.reps)
    print(f"{args.threads} threads: dense floor of one E+F, median "
          f"{1e3 * statistics.median(times):.2f} ms (min {1e3 * min(times):.2f})")


if __name__ == "__main__":
    main()
