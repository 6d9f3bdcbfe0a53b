"""The all-reduce's share of a data-parallel step: how much of a step two processes spend
averaging gradients (with the loss and stop request that ride along, asvae_kit/distributed.py).

Run under torchrun (two CPU processes, gloo)::

    OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node 2 bench/allreduce_share.py [--preset mlp-asvae]
        [--steps 60] [--warmup 10] [--batch 64] [--size 28] [--out FILE]

Each rank times its steps and, inside them, every ``average_gradients`` call (one per optimizer
update); rank 0 prints JSON: milliseconds per step, per step in the all-reduce, the share, and
the parameters reduced per step.  ``bench/test_allreduce_share.py`` runs it under pytest-benchmark.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.distributed as dist

import asvae_kit
import asvae_kit.algorithm as algorithm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="mlp-asvae")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--batch", type=int, default=64, help="images per process")
    parser.add_argument("--size", type=int, default=28, help="image side (1 channel)")
    parser.add_argument("--out", help="write the JSON here too (rank 0)")
    args = parser.parse_args()

    trainer = asvae_kit.build(args.preset, data=None, data_shape=[1, args.size, args.size], batch_size=args.batch, device="cpu")
    if not trainer.dist.enabled:
        raise SystemExit("run me under torchrun with --nproc_per_node 2 (see this file's docstring)")
    spent = {"allreduce": 0.0, "elements": 0}
    averaged = algorithm.average_gradients

    def timed(parameters, ctx, extras=None):
        parameters = list(parameters)
        start = time.perf_counter()
        result = averaged(parameters, ctx, extras)
        spent["allreduce"] += time.perf_counter() - start
        spent["elements"] += sum(p.grad.numel() for p in parameters if p.grad is not None)
        return result

    algorithm.average_gradients = timed
    x = torch.rand(args.batch, 1, args.size, args.size, generator=torch.Generator().manual_seed(trainer.dist.rank))
    for _ in range(args.warmup):
        trainer.train_step(x)
    step_ms, reduce_ms = [], []
    for _ in range(args.steps):
        spent["allreduce"], spent["elements"] = 0.0, 0
        start = time.perf_counter()
        trainer.train_step(x)
        step_ms.append((time.perf_counter() - start) * 1e3)
        reduce_ms.append(spent["allreduce"] * 1e3)
    shares = [r / s for r, s in zip(reduce_ms, step_ms)]
    result = {
        "preset": args.preset, "processes": trainer.dist.world_size, "batch_per_process": args.batch, "image": [1, args.size, args.size],
        "threads": torch.get_num_threads(), "steps": args.steps,
        "step_ms_median": round(statistics.median(step_ms), 3),
        "allreduce_ms_median": round(statistics.median(reduce_ms), 3),
        "allreduce_share_median": round(statistics.median(shares), 4),
        "elements_reduced_per_step": spent["elements"],
    }
    if trainer.dist.is_main:
        print(json.dumps(result))
        if args.out:
            with open(args.out, "w") as f:
                json.dump(result, f, indent=2)
    dist.barrier()


if __name__ == "__main__":
    main()
