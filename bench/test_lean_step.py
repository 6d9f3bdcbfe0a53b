"""The library's step where the arithmetic is negligible: what ``Trainer.train_step`` costs on the
host beyond the math, against a plain hand-written ASVAE step (issue 19's yardstick).

Tiny networks (``mlp-asvae`` with hidden [32, 32] everywhere, latent 4, 8x8 images, batch 16) on
the CPU, so a step is almost all Python and dispatch.  The hand-written step is the same math on
copies of the same networks: the two-head critic, ``d_loss`` and the encoder/decoder loss with
the preset's ``lambda_z``, one decoder call for z_q and z_p, Adam for both sides (with the
library's options), ``n_critic`` 1.  Both read their loss terms back to the host once per step, as
logging does.  ``test_handwritten_step_is_the_library_math`` checks that the two steps compute the
same losses from the same weights and noise.

``test_lean_step_over_handwritten`` times them side by side in one process, in interleaved rounds,
and asserts that the median of the rounds' wall-clock ratios is at most
``$ASVAE_LEAN_STEP_MAX_RATIO`` (1.25 by default).  Each round also records this thread's CPU time
(``cpu_ratio_median``), which a CPU shared with other processes disturbs less.  Run with
``OMP_NUM_THREADS=1 pytest bench/test_lean_step.py`` (``--benchmark-only`` keeps only the timed
tests); ``python bench/test_lean_step.py [--rounds 21] [--steps 100] [--out FILE]`` prints the same
comparison as JSON.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time

import pytest
import torch
import torch.nn.functional as F

import asvae_kit

#: The tiny model: arithmetic negligible, host overhead everything.
TINY = {
    "data": None, "data_shape": [1, 8, 8], "batch_size": 16, "latent_dim": 4, "device": "cpu",
    "encoder.hidden": [32, 32], "decoder.hidden": [32, 32], "discriminator.hidden": [32, 32],
}
MAX_RATIO = float(os.environ.get("ASVAE_LEAN_STEP_MAX_RATIO", "1.25"))


def tiny_trainer(**overrides) -> asvae_kit.Trainer:
    return asvae_kit.build("mlp-asvae", **{**TINY, **overrides})


def batch(seed: int = 0) -> torch.Tensor:
    return torch.rand(TINY["batch_size"], *TINY["data_shape"], generator=torch.Generator().manual_seed(seed))


def library_step(trainer: asvae_kit.Trainer, x: torch.Tensor) -> list[float]:
    """``train_step``, its terms read back once (as the loss log's row reads them)."""
    terms = trainer.train_step(x)
    return torch.stack(list(terms.values())).tolist()


class HandWritten:
    """One ASVAE step (docs/design.md §1) in plain PyTorch on copies of ``trainer``'s networks, with
    its optimizers' options: the yardstick."""

    def __init__(self, trainer: asvae_kit.Trainer) -> None:
        self.enc, self.dec, self.disc = (copy.deepcopy(m) for m in (trainer.encoder, trainer.decoder, trainer.discriminator))
        self.latent = trainer.latent_dim
        divergence = trainer.divergence
        assert type(divergence).__name__ == "ASVAE" and divergence.critic == "two-head" and not divergence.analytic_kl
        assert trainer.config["optim"]["n_critic"] == 1 and not trainer.config["sample_x"]
        self.lambda_x, self.lambda_z = divergence.lambda_x, divergence.lambda_z

        def adam(params, like: torch.optim.Optimizer) -> torch.optim.Adam:
            group = like.param_groups[0]
            return torch.optim.Adam(params, lr=float(group["lr"]), betas=group["betas"], weight_decay=group["weight_decay"],
                                    fused=group.get("fused"), foreach=group.get("foreach"))

        self.opt_g = adam([*self.enc.parameters(), *self.dec.parameters()], trainer.gen_optimizer)
        self.opt_d = adam(list(self.disc.parameters()), trainer.disc_optimizer)
        for m in (self.enc, self.dec, self.disc):
            m.train()

    def step(self, x: torch.Tensor) -> list[float]:
        n = x.shape[0]
        z_p, z_m = torch.randn(n, self.latent), torch.randn(n, self.latent)
        z_q = self.enc(x).rsample()
        logits_x = self.dec(torch.cat([z_q, z_p])).logits  # Bernoulli pixels: one decoder call for z_q and z_p
        logits_q, logits_p = logits_x.split(n)
        x_p = torch.sigmoid(logits_p)
        # discriminator: heads g (0, q against m) and f (1, p against m)
        out = self.disc(torch.cat([x, x_p.detach(), x]), torch.cat([z_q.detach(), z_p, z_m]))
        lq, lp, lm = out.split(n)
        d_loss = F.softplus(-lq[:, 0]).mean() + F.softplus(lm[:, 0]).mean() + F.softplus(-lp[:, 1]).mean() + F.softplus(lm[:, 1]).mean()
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        self.opt_d.step()
        # encoder/decoder, the discriminator frozen
        self.disc.requires_grad_(False)
        log_px = -F.binary_cross_entropy_with_logits(logits_q, x, reduction="none").flatten(1).sum(1).mean()
        log_qz = self.enc(x_p).log_prob(z_p).mean()
        out = self.disc(torch.cat([x, x_p]), torch.cat([z_q, z_p]))
        lq, lp = out.split(n)
        l_x = log_px - lq[:, 0].mean()
        l_z = log_qz - lp[:, 1].mean()
        g_loss = -(self.lambda_x * l_x + self.lambda_z * l_z)
        skl = (lq[:, 0].mean() - lq[:, 1].mean()) + (lp[:, 1].mean() - lp[:, 0].mean())
        self.opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        self.opt_g.step()
        self.disc.requires_grad_(True)
        # the library's terms, in its order (read back once)
        return torch.stack([d_loss, g_loss, l_x, l_z, log_px, log_qz, skl]).detach().tolist()


def _per_step_seconds(fn, x: torch.Tensor, steps: int) -> tuple[float, float]:
    """Wall-clock and this thread's CPU seconds per step (the latter counts no time spent waiting
    for a core that other processes hold)."""
    wall, cpu = time.perf_counter(), time.thread_time()
    for _ in range(steps):
        fn(x)
    return (time.perf_counter() - wall) / steps, (time.thread_time() - cpu) / steps


def compare(rounds: int = 21, steps: int = 100, warmup: int = 20) -> dict:
    """Library and hand-written steps in interleaved rounds (the order alternating), on the tiny
    model: milliseconds per step of each round (wall clock, and CPU time in ``*_cpu_ms``) and the
    medians of the rounds' ratios."""
    trainer = tiny_trainer()
    hand = HandWritten(trainer)
    x = batch()
    sides = {"library": lambda b: library_step(trainer, b), "handwritten": hand.step}
    for fn in sides.values():
        for _ in range(warmup):
            fn(x)
    ms: dict[str, list[float]] = {name: [] for name in sides}
    cpu_ms: dict[str, list[float]] = {name: [] for name in sides}
    for r in range(rounds):  # interleaved, so drift (a shared CPU) hits both alike
        for name in (("library", "handwritten") if r % 2 == 0 else ("handwritten", "library")):
            wall, cpu = _per_step_seconds(sides[name], x, steps)
            ms[name].append(1e3 * wall)
            cpu_ms[name].append(1e3 * cpu)
    ratios = [a / b for a, b in zip(ms["library"], ms["handwritten"])]
    cpu_ratios = [a / b for a, b in zip(cpu_ms["library"], cpu_ms["handwritten"])]
    return {
        "threads": torch.get_num_threads(), "torch": torch.__version__, "rounds": rounds, "steps_per_round": steps,
        "library_ms": ms["library"], "handwritten_ms": ms["handwritten"], "ratios": ratios,
        "library_cpu_ms": cpu_ms["library"], "handwritten_cpu_ms": cpu_ms["handwritten"], "cpu_ratios": cpu_ratios,
        "summary": {
            "library_ms_median": statistics.median(ms["library"]),
            "handwritten_ms_median": statistics.median(ms["handwritten"]),
            "ratio_median": statistics.median(ratios),
            "extra_ms_median": statistics.median(a - b for a, b in zip(ms["library"], ms["handwritten"])),
            "cpu_ratio_median": statistics.median(cpu_ratios),
            "extra_cpu_ms_median": statistics.median(a - b for a, b in zip(cpu_ms["library"], cpu_ms["handwritten"])),
        },
    }


def test_handwritten_step_is_the_library_math():
    trainer = tiny_trainer()
    hand = HandWritten(trainer)
    for seed in range(3):  # the same weights and noise in, the same losses and weights out
        x = batch(seed)
        torch.manual_seed(100 + seed)
        ours = library_step(trainer, x)
        torch.manual_seed(100 + seed)
        theirs = hand.step(x)
        assert ours == pytest.approx(theirs, rel=1e-4, abs=1e-5)
    for mine, copied in ((trainer.encoder, hand.enc), (trainer.decoder, hand.dec), (trainer.discriminator, hand.disc)):
        for (name, a), b in zip(mine.named_parameters(), copied.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("side", ["library", "handwritten"])
def test_lean_step(benchmark, side):
    trainer = tiny_trainer()
    fn = (lambda b: library_step(trainer, b)) if side == "library" else HandWritten(trainer).step
    x = batch()
    for _ in range(20):
        fn(x)
    benchmark.group = "lean step: tiny mlp-asvae, b16 8x8, cpu"
    benchmark.extra_info.update({"side": side, "threads": torch.get_num_threads()})
    benchmark.pedantic(fn, args=(x,), rounds=30, iterations=20)


def test_lean_step_over_handwritten(benchmark):
    results = compare()
    benchmark.group = "lean step: tiny mlp-asvae, b16 8x8, cpu"
    benchmark.extra_info.update(results["summary"])
    trainer = tiny_trainer()
    x = batch()
    benchmark.pedantic(lambda: library_step(trainer, x), rounds=10, iterations=20)
    summary = results["summary"]
    assert summary["ratio_median"] <= MAX_RATIO, (
        f"train_step costs {summary['ratio_median']:.3f}x the hand-written step (median of {results['rounds']} rounds; "
        f"{summary['library_ms_median']:.3f} ms against {summary['handwritten_ms_median']:.3f} ms), over {MAX_RATIO}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--out", help="write the results as JSON here too")
    args = parser.parse_args()
    results = compare(args.rounds, args.steps)
    print(json.dumps(results))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
