"""DimeNet++ force matching in chemtrain 0.2.0 (the authors' JAX library), for comparison.

Runs in its own virtual environment (never in congener's): `benchmarks/dimenet_speed.py
--chemtrain` creates `.bench/chemtrain-venv` and calls this script there with the structures it
benchmarks written to an extxyz file. Prints one JSON object; with `--serve` it prints one when
compiled and then answers requests on stdin ("ef N", "train N": time N calls, one JSON object
per request), so that the caller can alternate it with congener round by round.

What is timed (after JIT compilation, which is reported separately):
- train: one `ForceMatching` update on a batch (chemtrain's own jitted step: per-sample
  neighbour-list update, sparse graph, energy and forces by `value_and_grad` (positions and
  box, as chemtrain does), force-matching MSE loss, its gradient and the optax Adam step);
- ef: `jit(value_and_grad(energy_fn))` for one structure, the neighbour-list update inside
  (as in MD); ef_model: the same with the neighbour list updated beforehand (chemtrain still
  builds its sparse edge/triplet graph from it inside the energy function).

Model sizes are congener's defaults: embed 32, out_embed 64, angle_int_embed 16,
basis_int_embed 2, type embedding 32, 4 blocks, 7 x 6 spherical basis, 6 radial, envelope p=6
(congener's exponent 5), cutoff 5 Å. Edge and triplet capacities are set to the exact maxima of
the given structures (chemtrain's best case; its default over-allocates 25 %).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("structures", help="extxyz file (periodic structures with forces)")
    ap.add_argument("--cutoff", type=float, default=5.0)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--serve", action="store_true", help="answer timing requests on stdin")
    args = ap.parse_args()
    warnings.filterwarnings("ignore", message="Explicitly requested dtype")
    os.environ.setdefault(
        "XLA_FLAGS", f"--xla_cpu_multi_thread_eigen=true "
        f"intra_op_parallelism_threads={args.threads}")

    import ase.io
    import haiku as hk
    import jax

    if not hasattr(jax.random, "KeyArray"):  # jax-md 0.2.8 (latest on PyPI) names this alias
        jax.random.KeyArray = jax.Array  # removed in jax 0.4.24; chemtrain 0.2.0 allows 0.4.37
    import numpy as onp
    import optax
    from chemtrain import trainers
    from jax import numpy as jnp
    from jax_md import partition, space
    from jax_md_mod.model import layers, neural_networks, sparse_graph

    atoms = ase.io.read(args.structures, index=":")
    n_atoms = len(atoms[0])
    box = jnp.asarray(atoms[0].cell.array.T)  # jax_md: lattice vectors as columns
    frac = onp.stack([a.get_scaled_positions(wrap=True) for a in atoms])
    forces = onp.stack([a.get_forces() for a in atoms])
    energies = onp.array([a.get_potential_energy() for a in atoms])

    displacement, _ = space.periodic_general(box, fractional_coordinates=True)
    neighbor_fn = partition.neighbor_list(
        displacement, box, args.cutoff, disable_cell_list=True, fractional_coordinates=True,
        format=partition.Dense, capacity_multiplier=1.25)
    nbrs = neighbor_fn.allocate(jnp.asarray(frac[0]))
    max_edges = max_triplets = 0
    for r in frac:
        g, _ = sparse_graph.sparse_graph_from_neighborlist(
            displacement, jnp.asarray(r), nbrs.update(jnp.asarray(r)), args.cutoff)
        max_edges, max_triplets = max(max_edges, int(g.n_edges)), max(max_triplets,
                                                                       int(g.n_triplets))
    init_fn, gnn_energy_fn = neural_networks.dimenetpp_neighborlist(
        displacement, args.cutoff, n_species=100, max_edges=max_edges,
        max_triplets=max_triplets, embed_size=32, out_embed_size=64, type_embed_size=32,
        angle_int_embed_size=16, basis_int_embed_size=2, n_interaction_blocks=4,
        num_rbf=6, num_sbf=7, envelope_p=6,
        init_kwargs={"w_init": layers.OrthogonalVarianceScalingInit(scale=1.0),
                     "b_init": hk.initializers.Constant(0.0)})
    species = jnp.full((n_atoms,), 14 % 100, dtype=int)
    params = init_fn(jax.random.PRNGKey(0), jnp.asarray(frac[0]), nbrs, species=species)
    n_params = sum(int(onp.size(x)) for x in jax.tree_util.tree_leaves(params))

    def energy_fn_template(energy_params):
        def energy_fn(pos, neighbor, **kwargs):
            energy = gnn_energy_fn(energy_params, pos, neighbor, species=species, **kwargs)
            return jnp.sum(energy)  # [1] -> scalar
        return energy_fn

    # energy + forces of one structure
    efn = energy_fn_template(params)

    @jax.jit
    def energy_forces(r, nb):
        nb = nb.update(r)
        e, g = jax.value_and_grad(lambda x: efn(x, neighbor=nb, box=box))(r)
        return e, -g

    @jax.jit
    def energy_forces_given_nbrs(r, nb):  # neighbour list already updated for r
        e, g = jax.value_and_grad(lambda x: efn(x, neighbor=nb, box=box))(r)
        return e, -g

    r0 = jnp.asarray(frac[0])
    t = time.perf_counter()
    jax.block_until_ready(energy_forces(r0, nbrs))
    compile_ef = time.perf_counter() - t
    jax.block_until_ready(energy_forces_given_nbrs(r0, nbrs.update(r0)))
    counter = {"ef": 0}

    def time_ef(n: int) -> tuple[list[float], list[float]]:
        """n E+F with the neighbour-list update inside, and n with it done beforehand."""
        ef_times, ef_model_times = [], []
        for _ in range(n):
            r = jnp.asarray(frac[counter["ef"] % len(frac)])
            counter["ef"] += 1
            t = time.perf_counter()
            jax.block_until_ready(energy_forces(r, nbrs))
            ef_times.append(time.perf_counter() - t)
            nb = jax.block_until_ready(nbrs.update(r))
            t = time.perf_counter()
            jax.block_until_ready(energy_forces_given_nbrs(r, nb))
            ef_model_times.append(time.perf_counter() - t)
        return ef_times, ef_model_times

    if not args.serve:
        ef_times, ef_model_times = time_ef(args.reps * 4)
        print(f"E+F: {1000 * statistics.median(ef_times):.1f} ms", file=sys.stderr)

    # one force-matching training step on a batch; the trainer is built and compiled on first
    # use, so that a server times its E+F rounds before any training, as congener does
    state: dict = {}

    def time_train(n: int) -> list[float]:
        if not state:
            tmp = tempfile.mkdtemp(prefix="chemtrain-bench-")
            trainer = trainers.ForceMatching(
                params, optax.adam(1e-4), energy_fn_template, nbrs,
                batch_per_device=args.batch, batch_cache=1, gammas={"U": 0.0, "F": 1.0},
                log_file=os.path.join(tmp, "fm.log"),
                checkpoint_path=os.path.join(tmp, "checkpoints"))
            trainer.set_dataset({"R": frac, "F": forces, "U": energies,
                                 "box": onp.repeat(onp.asarray(box)[None], len(frac), axis=0)},
                                stage="training", shuffle=False)
            state.update(trainer=trainer, batches=iter(trainer._get_batch()))
            t = time.perf_counter()
            trainer._update(next(state["batches"]))
            jax.block_until_ready(trainer.state.params)
            state["compile_s"] = time.perf_counter() - t
        trainer, train_times = state["trainer"], []
        while len(train_times) < n:
            try:
                batch = next(state["batches"])
            except StopIteration:
                state["batches"] = iter(trainer._get_batch())
                continue
            t = time.perf_counter()
            trainer._update(batch)
            jax.block_until_ready(trainer.state.params)
            train_times.append(time.perf_counter() - t)
        return train_times

    info = {"library": "chemtrain 0.2.0", "jax": jax.__version__, "n_params": n_params,
            "n_atoms": n_atoms, "max_edges": max_edges, "max_triplets": max_triplets,
            "batch": args.batch, "compile_ef_s": compile_ef}
    if args.serve:
        print(json.dumps(info), flush=True)
        for line in sys.stdin:
            what, n = line.split()
            if what == "ef":
                ef_times, ef_model_times = time_ef(int(n))
                out = {"ef_ms": [1000 * x for x in ef_times],
                       "ef_model_ms": [1000 * x for x in ef_model_times]}
            else:
                out = {"train_ms": [1000 * x for x in time_train(int(n))],
                       "compile_train_s": state.get("compile_s")}
            print(json.dumps(out), flush=True)
        return
    train_times = time_train(args.reps)
    print(json.dumps({
        **info, "compile_train_s": state["compile_s"],
        "train_ms": 1000 * statistics.median(train_times),
        "train_ms_all": [1000 * x for x in train_times],
        "ef_ms": 1000 * statistics.median(ef_times),
        "ef_model_ms": 1000 * statistics.median(ef_model_times)}))


if __name__ == "__main__":
    main()
