"""Train, evaluate and sample from Python: the whole life of a run in one script.

    python examples/train_evaluate_sample.py                  # mlp-asvae on digits, ~1 min on 2 CPU cores
    python examples/train_evaluate_sample.py --smoke          # a few steps, to check it runs

It builds a trainer from a preset with overrides, trains it into a run directory (metrics.csv,
image grids, checkpoints), evaluates it on held-out images, loads the run back as a new trainer,
and writes samples, latent interpolations and reconstructions as PNG files beside the run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import asvae_kit
from asvae_kit.images import interleave_rows, save_images


def main() -> None:
    parser = argparse.ArgumentParser(description="Train, evaluate and sample an ASVAE from Python.")
    parser.add_argument("--out", default="runs/python-example")
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--smoke", action="store_true", help="tiny networks and a few steps")
    args = parser.parse_args()

    overrides = {"steps": args.steps, "ema": 0.99, "optim.schedule": "cosine", "optim.warmup_steps": 50}
    if args.smoke:
        overrides.update({"steps": 4, "batch_size": 16, "eval_size": 64, "latent_dim": 4, "optim.warmup_steps": 1,
                          "encoder.hidden": [16], "decoder.hidden": [16], "discriminator.hidden": [16]})
    trainer = asvae_kit.build("mlp-asvae", **overrides)
    print(trainer)
    trainer.fit(run_dir=args.out)  # a bar on a terminal, a line per log_every steps elsewhere

    evaluation = trainer.evaluate(["recon", "nll:k=50:n=128", "skl"])
    print(f"evaluated on {evaluation.source}:")
    for name, value in evaluation.items():
        print(f"  {name:20s} {value:.4g}")

    same = asvae_kit.load(args.out)  # config, weights (the EMA average) and training state
    out = Path(args.out)
    save_images(same.sample(64, seed=0), out / "example-samples.png")
    save_images(same.interpolate(rows=6, steps=10, seed=0), out / "example-interpolations.png", nrow=10)
    held_out = same.split_data("test").dataset
    originals = held_out.images[:16]
    save_images(interleave_rows(originals, same.reconstruct(originals).cpu()), out / "example-reconstructions.png", nrow=8)
    print(f"wrote {out / 'example-samples.png'}, example-interpolations.png and example-reconstructions.png")


if __name__ == "__main__":
    main()
