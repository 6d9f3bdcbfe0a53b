"""Run by tests/test_distributed.py under torchrun (2 processes, gloo): a fault on one rank only.

``nan``: the encoder/decoder loss turns NaN on rank 1 from step 5 (checkpoints every 2 steps).
``raise``: rank 1's divergence raises an error of its own at step 5.
``stop``: rank 1 alone receives SIGTERM during step 3.
Each rank writes what it stopped with to ``OUT/rank-R.txt`` (``type: message``) and re-raises.
"""

import os
import signal
import sys
from pathlib import Path

import torch

import asvae_kit

out, fault = Path(sys.argv[1]), sys.argv[2]
trainer = asvae_kit.build(
    "mlp-asvae", steps=8, batch_size=8, log_every=1, latent_dim=4, checkpoint_every=2,
    **{"encoder.hidden": [16], "decoder.hidden": [16], "discriminator.hidden": [16, 8]},
)
rank = trainer.dist.rank
loss_of = trainer.algorithm.divergence.generator_loss


def faulty_generator_loss(discriminator, batch):
    loss, terms = loss_of(discriminator, batch)
    step = trainer.step + 1
    if rank == 1 and fault == "nan" and step >= 5:
        loss = loss * float("nan")
    if rank == 1 and fault == "raise" and step == 5:
        raise ValueError("rank 1's own failure at step 5")
    if rank == 1 and fault == "stop" and step == 3:
        os.kill(os.getpid(), signal.SIGTERM)
    return loss, terms


trainer.algorithm.divergence.generator_loss = faulty_generator_loss
try:
    trainer.fit(run_dir=out / "run", progress=False)
except BaseException as exc:
    (out / f"rank-{rank}.txt").write_text(f"{type(exc).__name__}: {exc}\nstep {trainer.step}\n")
    raise
(out / f"rank-{rank}.txt").write_text(f"finished\nstep {trainer.step}\n")
