"""Compare the four divergences (VAE, AVB, ALI, ASVAE) on one data set, same networks, same budget.

    python examples/compare_divergences.py                         # digits, 1500 steps each (~4 min on 2 CPU cores)
    python examples/compare_divergences.py --data fashion-mnist --data-dir ../shared/data --steps 3000
    python examples/compare_divergences.py --smoke                 # a few steps, to check it runs

Each preset ``mlp-{vae,avb,ali,asvae}`` trains into ``OUT/<preset>`` and is evaluated on held-out
images (reconstruction error, importance-sampled NLL, Fréchet distance of samples, the
symmetric-KL estimate); the table is printed and saved as ``OUT/comparison.json``.  For the
study with several seeds and both MNIST data sets, see ``asvae-kit compare docs/study.toml`` and ``docs/study.md``.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import asvae_kit

PRESETS = ["mlp-vae", "mlp-avb", "mlp-ali", "mlp-asvae"]
COLUMNS = ["recon_mse", "nll", "fd", "skl"]


def main() -> None:
    parser = argparse.ArgumentParser(description="Train mlp-{vae,avb,ali,asvae} on one data set and compare them.")
    parser.add_argument("--data", default="digits", help="data set name (default digits, offline)")
    parser.add_argument("--data-dir", help="folder with the data set's files (mnist, fashion-mnist)")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/compare", help="where the four runs go")
    parser.add_argument("--smoke", action="store_true", help="tiny networks, a few steps, few evaluation images: checks the script runs")
    args = parser.parse_args()

    data: dict = {"name": args.data}
    if args.data_dir:
        data["data_dir"] = args.data_dir
    overrides: dict = {"data": data, "steps": args.steps, "seed": args.seed, "metrics": ["recon", "nll:k=100", "fd", "skl"]}
    if args.smoke:
        overrides.update({"steps": 3, "batch_size": 16, "eval_size": 64, "latent_dim": 4, "metrics": ["recon", "nll:k=4:n=16", "skl"],
                          "encoder.hidden": [16], "decoder.hidden": [16], "discriminator.hidden": [16]})
    results = {}
    for preset in PRESETS:
        run = Path(args.out) / preset
        trainer = asvae_kit.build(preset, **overrides)
        print(f"{preset}: training {trainer.config['steps']} steps on {args.data} -> {run}", flush=True)
        trainer.fit(run_dir=run, progress=False)
        evaluation = trainer.evaluate()
        results[preset] = {**dict(evaluation), "notes": evaluation.notes}

    print(f"\n{'preset':<11}" + "".join(f"{c:>12}" for c in COLUMNS))
    for preset, values in results.items():
        cells = [values.get(c, math.nan) for c in COLUMNS]
        print(f"{preset:<11}" + "".join(f"{v:>12.4g}" for v in cells))
    print("(recon_mse, nll, fd: lower is better; skl: the divergence's symmetric-KL estimate, n/a without two heads)")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "comparison.json").write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
