"""Run by tests/test_distributed.py under torchrun (2 processes, gloo): train a few steps and
check that the replicas end identical while drawing different noise; rank 0 writes the verdict."""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

import asvae_kit

out = Path(sys.argv[1])
trainer = asvae_kit.build(
    "mlp-asvae", steps=4, batch_size=8, log_every=2, latent_dim=4,
    **{"encoder.hidden": [16], "decoder.hidden": [16], "discriminator.hidden": [16, 8]},
)
assert trainer.dist.enabled and trainer.dist.world_size == 2
first = next(trainer._batch_stream(None))  # this rank's share of the first global batch
trainer._stream = None
trainer.fit(run_dir=out / "run", progress=False)

weights = torch.cat([t.flatten() for t in trainer.state_tensors().values()])
gathered = [torch.empty_like(weights) for _ in range(2)]
dist.all_gather(gathered, weights)
noise = torch.randn(4)
noises = [torch.empty_like(noise) for _ in range(2)]
dist.all_gather(noises, noise)
firsts = [torch.empty_like(first) for _ in range(2)]
dist.all_gather(firsts, first)
if trainer.dist.is_main:
    result = {
        "identical_weights": bool(torch.equal(gathered[0], gathered[1])),
        "different_noise": not torch.equal(noises[0], noises[1]),
        "different_data": not torch.equal(firsts[0], firsts[1]),
        "batch_per_rank": int(first.shape[0]),
        "step": trainer.step,
    }
    (out / "result.json").write_text(json.dumps(result))
dist.barrier()  # neither rank tears gloo down while the other still uses it (a rare SIGABRT otherwise)
dist.destroy_process_group()
