"""The library's ASVAE training step against a plain hand-written PyTorch loop of the same math,
timed side by side in one process (issue 12's yardstick).

Both use the same networks, those of ``--preset`` (default ``mlp-asvae``: MLPs 784-512-512,
latent 16, joint discriminator 512-512; ``dcgan-asvae``: strided convolutions, width 32), the
preset's recipe (learning rates, ``n_critic``, the divergence's weights lambda_x and lambda_z),
Adam, on 28x28 images at ``--batch`` (default 64).  The hand-written step stacks the
discriminator's three segments into one call and decodes z_q and z_p in one decoder call; the
library's step is ``Trainer.train_step``.  Variants, interleaved in each repeat:

* ``library`` / ``handwritten``: eager (the loop with torch's default Adam, what a user writes
  first; the library's eager step uses fused Adam);
* ``handwritten-fused``: the eager loop with fused Adam, as the library's, so the summary also
  says how much of the library's lead is the optimizer;
* ``library-graphs`` / ``handwritten-graphs`` (CUDA only): the library with ``cuda_graphs=true``,
  and the loop captured whole in a CUDA graph by hand (fused capturable Adam), each step a copy
  into the static batch and one replay.  The library's replay also brings the step's losses to
  the host for the divergence guard (one sync per step); the hand-written replay does not.

Prints one JSON line with every repeat and a summary of steps/s and of ratios over the
hand-written eager loop::

    python bench/step_compare.py [--device cuda] [--preset dcgan-asvae] [--steps 200] [--batch 64] [--out results.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import torch
import torch.nn.functional as F

import asvae_kit


def handwritten_step(enc, dec, disc, opt_g, opt_d, x, latent_dim, n_critic=1, lambda_x=1.0, lambda_z=1.0):
    """One ASVAE step (docs/design.md §1, the two-head critic, Bernoulli likelihood) in plain PyTorch:
    the yardstick.  Written as a careful user would: the step's samples are drawn and decoded once
    (z_q and z_p in one decoder call), the discriminator's updates see them detached, and the
    encoder/decoder update back-propagates through the same forward passes, as the library does.
    Returns the last discriminator loss and the encoder/decoder loss, detached."""
    n = x.shape[0]
    z_p, z_m = torch.randn(n, latent_dim, device=x.device), torch.randn(n, latent_dim, device=x.device)
    z_q = enc(x).rsample()
    logits_q, logits_p = dec(torch.cat([z_q, z_p])).logits.split(n)
    x_p = torch.sigmoid(logits_p)  # the decoder's mean
    # discriminator: heads g (index 0) and f (index 1), n_critic updates on the same samples
    x_d, z_d = torch.cat([x, x_p.detach(), x]), torch.cat([z_q.detach(), z_p, z_m])
    for _ in range(n_critic):
        lq, lp, lm = disc(x_d, z_d).split(n)
        d_loss = F.softplus(-lq[:, 0]).mean() + F.softplus(lm[:, 0]).mean() + F.softplus(-lp[:, 1]).mean() + F.softplus(lm[:, 1]).mean()
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
    # encoder/decoder, the discriminator frozen
    disc.requires_grad_(False)
    log_px = F.binary_cross_entropy_with_logits(logits_q, x, reduction="none").flatten(1).sum(1).neg().mean()
    log_qz = enc(x_p).log_prob(z_p).mean()
    lq, lp = disc(torch.cat([x, x_p]), torch.cat([z_q, z_p])).split(n)
    g_loss = -(lambda_x * (log_px - lq[:, 0].mean()) + lambda_z * (log_qz - lp[:, 1].mean()))
    opt_g.zero_grad(set_to_none=True)
    g_loss.backward()
    opt_g.step()
    disc.requires_grad_(True)
    return d_loss.detach(), g_loss.detach()


def timed(fn, steps: int, sync) -> float:
    for _ in range(10):
        fn()
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    sync()
    return steps / (time.perf_counter() - start)


def captured(step, warmup: int = 3):
    """``step`` recorded in a CUDA graph after ``warmup`` eager runs on a side stream (PyTorch's
    whole-network recipe); returns the graph's replay."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph.replay


#: Settings the hand-written step does not implement, with the value it assumes.
PLAIN = {"optim.weight_decay": 0.0, "optim.schedule": "constant", "optim.warmup_steps": 0, "optim.clip_grad_norm": None,
         "optim.disc_clip_grad_norm": None, "sample_x": False, "decoder.likelihood": "bernoulli", "divergence.critic": "two-head",
         "divergence.analytic_kl": False}


def handwritten_parts(trainer, *, fused: bool = False, graphs: bool = False) -> tuple[tuple, dict]:
    """The hand-written loop's state, from the trainer's: copies of its networks, their own Adam
    optimizers (fused with ``fused``; fused and capturable for a CUDA graph), and the recipe's
    keyword arguments for ``handwritten_step``.  A config the step does not implement is refused."""
    config, divergence = trainer.config, trainer.config["divergence"]
    departures = {key: got for key, value in PLAIN.items() if (got := _get(config, key, value)) != value}
    if divergence["name"] != "asvae" or departures or config.get("ema"):
        raise SystemExit(f"the hand-written step is the two-head ASVAE with a Bernoulli decoder, x_p the decoder's mean, plain Adam "
                         f"and no weight average; this config's divergence is {divergence!r}, ema {config.get('ema')!r}, and it sets "
                         f"{departures or 'nothing else'}")
    enc, dec, disc = (copy.deepcopy(m) for m in (trainer.encoder, trainer.decoder, trainer.discriminator))
    optim = config["optim"]
    extra = {"fused": True, "capturable": True} if graphs else {"fused": True} if fused else {}
    opt_g = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=optim["lr"], betas=tuple(optim["betas"]), **extra)
    opt_d = torch.optim.Adam(disc.parameters(), lr=optim["disc_lr"] or optim["lr"], betas=tuple(optim["betas"]), **extra)
    recipe = dict(latent_dim=trainer.latent_dim, n_critic=optim["n_critic"],
                  lambda_x=divergence.get("lambda_x", 1.0), lambda_z=divergence.get("lambda_z", 1.0))
    return (enc, dec, disc, opt_g, opt_d), recipe


def _get(config: dict, dotted: str, default):
    """``config["a"]["b"]`` for ``"a.b"``, or ``default`` where a level is missing."""
    value = config
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return default
        value = value[part]
    return value


def handwritten(trainer, x, *, graphs: bool, fused: bool = False):
    """The hand-written loop on copies of the trainer's networks: a step function."""
    parts, recipe = handwritten_parts(trainer, fused=fused, graphs=graphs)
    if not graphs:
        return lambda: handwritten_step(*parts, x, **recipe)
    static_x = x.clone()
    replay = captured(lambda: handwritten_step(*parts, static_x, **recipe))

    def step():
        static_x.copy_(x)
        replay()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--preset", default="mlp-asvae", help="an ASVAE preset with a Bernoulli decoder: mlp-asvae, dcgan-asvae, resnet-asvae")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precision", default="32", choices=("32", "bf16", "16-mixed"), help="the library step's precision (the loop stays float32)")
    parser.add_argument("--compile", action="store_true", help="compile the library step's networks (the loop stays eager)")
    parser.add_argument("--no-graphs", dest="graphs", action="store_false", help="skip the CUDA-graph variants (they need CUDA)")
    parser.add_argument("--out", help="write the results as JSON here too")
    args = parser.parse_args()
    device = torch.device(args.device)
    graphs = args.graphs and device.type == "cuda"
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    options = dict(data=None, data_shape=[1, 28, 28], batch_size=args.batch, device=str(device), seed=0, precision=args.precision, compile=args.compile)
    x = torch.rand(args.batch, 1, 28, 28, device=device)
    trainer = asvae_kit.build(args.preset, **options)
    steps = {"library": lambda: trainer.train_step(x), "handwritten": handwritten(trainer, x, graphs=False),
             "handwritten-fused": handwritten(trainer, x, graphs=False, fused=True)}
    if graphs:
        graphed = asvae_kit.build(args.preset, cuda_graphs=True, **options)
        steps["library-graphs"] = lambda: graphed.train_step(x)
        steps["handwritten-graphs"] = handwritten(trainer, x, graphs=True)
    results = {"device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
               "torch": torch.__version__, "preset": args.preset, "batch": args.batch, "steps": args.steps, "precision": args.precision,
               "compile": args.compile, **{name: [] for name in steps}}
    for _ in range(args.repeats):  # interleaved, so drift hits all alike
        for name, step in steps.items():
            results[name].append(timed(step, args.steps, sync))
    best = {name: max(results[name]) for name in steps}
    results["summary"] = {f"{name}_steps_per_s": round(v, 1) for name, v in best.items()}
    results["summary"].update({f"{name}_over_handwritten": round(v / best["handwritten"], 3) for name, v in best.items() if name != "handwritten"})
    results["summary"]["library_over_handwritten_fused"] = round(best["library"] / best["handwritten-fused"], 3)  # the same optimizer
    if graphs:
        results["summary"]["library_graphs_replays"] = getattr(graphed.algorithm, "replays", 0)  # a StepGraph wraps the step
    print(json.dumps(results))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
