"""``cuda_graphs`` (``asvae_kit.step_graph``): the step recorded once and replayed.

CPU cannot record CUDA graphs, so most tests drive ``StepGraph`` with ``RecordedSteps``, a
stand-in whose "replay" runs the recorded Python body again (with the graph's device hooks, so the
guard's checks are deferred, as a real replay runs no Python).  That checks everything but the
recording itself: the warm-up count, the static input buffer, the losses checked after the
replay, the terms brought back, the fallbacks and their messages.  The tests marked ``cuda`` run
the real thing where a GPU exists.
"""

from __future__ import annotations

import contextlib
import math
import sys
import warnings

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import asvae_kit
from asvae_kit.distributed import DistContext
from asvae_kit.optimizers import load_optimizer_state, set_learning_rates
from asvae_kit.algorithm import AlgorithmStep
from asvae_kit.step_graph import DeviceHooks, GraphCaptureWarning, StepGraph, capture_blocker
from asvae_kit.step_hooks import EagerHooks

SMALL = {"encoder.hidden": [16], "decoder.hidden": [16], "discriminator.hidden": [16], "latent_dim": 4, "batch_size": 8,
         "data": "digits", "log_every": 1, "sample_every": 0, "checkpoint_every": 0}
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


class RecordedSteps:
    """Stand-in for ``CudaGraphs``: capture runs the body once (this step's work, which a real
    capture leaves to the first replay, so that replay is skipped); each later replay runs the
    body again (its loss checks deferred by the device hooks it runs with) into the static output.
    ``syncs``: what the rehearsal's sync check reports; ``fail``: what capture raises."""

    def __init__(self, fail: Exception | None = None, syncs: tuple[str, ...] = ()) -> None:
        self.fail, self.syncs = fail, syncs
        self.warmups = self.captures = 0

    def warmup(self):
        self.warmups += 1
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def sync_check(self):
        found = []
        yield found
        found.extend(self.syncs)

    def capture(self, body):
        self.captures += 1
        if self.fail is not None:
            raise self.fail
        out = body()
        first = [True]

        def replay() -> None:
            if first.pop() if first else False:
                return
            out.copy_(body())

        return replay, out


def graphed(warmup: int = 2, fail: Exception | None = None, syncs: tuple[str, ...] = (), **overrides):
    trainer = asvae_kit.build("mlp-asvae", device="cpu", **{**SMALL, **overrides})
    backend = RecordedSteps(fail, syncs)
    trainer.algorithm = StepGraph(trainer.algorithm, warmup=warmup, backend=backend)  # what the builder does on a GPU
    return trainer, backend


def batch(n: int = 8) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8)


def test_the_graph_wraps_the_step_and_runs_it_with_hooks_of_its_own():
    trainer, _ = graphed(warmup=1)
    graph = trainer.algorithm
    step = graph.algorithm
    assert type(step) is AlgorithmStep and not any(hasattr(step, name) for name in ("graph", "deferred_checks", "recording"))
    assert graph.encoder is step.encoder and graph.gen_optimizer is step.gen_optimizer and graph.guard is step.guard
    seen, updates = [], step.updates
    step.updates = lambda x, hooks=None: seen.append(hooks) or updates(x, hooks)
    for _ in range(4):
        trainer.train_step(batch())
    # the warm-up runs eagerly (casting as the recorded steps will); the rehearsal, the capture and the replay record
    assert isinstance(seen[0], EagerHooks) and not seen[0].autocast_cache
    assert len(seen) == 4 and all(isinstance(hooks, DeviceHooks) for hooks in seen[1:]) and graph.replays == 2
    assert graph.state_dict().keys() == step.state_dict().keys()


def test_the_step_reaches_out_only_through_its_hooks():
    trainer = asvae_kit.build("mlp-asvae", device="cpu", ema=0.9, **SMALL)
    calls = []

    class Spy:
        autocast_cache = True

        def check_loss(self, term, loss, terms):
            calls.append(("check", term, sorted(terms)))

        def optimizer_step(self, optimizer):
            calls.append(("step", "gen" if optimizer is trainer.gen_optimizer else "disc"))
            optimizer.step()

        def ema_weight(self):
            calls.append(("ema",))
            return torch.tensor(0.5)

    terms = trainer.algorithm.updates(batch(), Spy())
    assert calls == [("check", "d_loss", ["d_loss"]), ("step", "disc"), ("check", "g_loss", sorted(set(terms) - {"d_loss"})), ("step", "gen"), ("ema",)]
    assert trainer.ema.updates == 0  # a weight from the hooks is counted by their owner, as a graph's replays are
    assert isinstance(trainer.algorithm.hooks, EagerHooks) and trainer.algorithm.hooks.autocast_cache


def test_a_step_trains_in_train_mode_whatever_left_a_module_in_eval_mode():
    trainer = asvae_kit.build("mlp-asvae", device="cpu", **{**SMALL, "discriminator.dropout": 0.5})
    modes = lambda: [m.training for _, network in trainer.networks() for m in network.modules()]  # noqa: E731
    trainer.train_step(batch())
    assert all(modes())
    trainer.sample(4)  # evaluation mode inside, modes restored after
    assert all(modes())
    trainer.eval_mode()
    trainer.discriminator.trunk.eval()
    assert not any(modes()[:2])
    trainer.train_step(batch())
    assert all(modes())


def test_replayed_steps_train_exactly_as_eager_steps_do():
    eager = asvae_kit.build("mlp-asvae", device="cpu", steps=7, **SMALL).fit(progress=False)
    trainer, backend = graphed(steps=7)
    trainer.fit(progress=False)
    graph = trainer.algorithm
    assert (backend.warmups, backend.captures, graph.replays) == (3, 1, 4)  # 2 warm-ups, the rehearsal, 4 replays
    assert [row["g_loss"] for row in trainer.history] == [row["g_loss"] for row in eager.history]
    assert [row["d_loss"] for row in trainer.history] == [row["d_loss"] for row in eager.history]
    for (name, a), b in zip(eager.state_tensors().items(), trainer.state_tensors().values()):
        assert torch.equal(a, b), name  # each replay trained on that step's batch, not the captured one


def test_the_weight_average_follows_replayed_steps():
    eager = asvae_kit.build("mlp-asvae", device="cpu", steps=6, ema=0.9, **SMALL).fit(progress=False)
    trainer, _ = graphed(warmup=1, steps=6, ema=0.9)
    trainer.fit(progress=False)
    assert trainer.algorithm.replays == 4  # 1 warm-up, the rehearsal, 4 replays: the warm-up's steps came from the host
    for (name, a), b in zip(eager.ema.tensors().items(), trainer.ema.tensors().values()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)
    assert trainer.ema.updates == eager.ema.updates == 6  # the host counted the replayed updates
    assert float(trainer.algorithm.device_hooks.ema_step[0]) == pytest.approx(1 - 6 / 15)  # what the last replay read: update 5's step


@pytest.mark.parametrize("when", ["rehearsal", "replay"])
def test_a_divergent_step_is_caught_and_applies_nothing(when):
    trainer, _ = graphed(warmup=0, ema=0.9)
    if when == "replay":
        trainer.train_step(batch())
        trainer.train_step(batch())
        assert trainer.algorithm.captured
    before = {k: v.clone() for k, v in {**trainer.state_tensors(), **trainer.ema.tensors()}.items()}
    adam_steps = [s["step"].clone() for s in trainer.disc_optimizer.state.values()]
    number = trainer.step + 1
    with pytest.raises(asvae_kit.TrainingDivergedError, match=rf"discriminator loss \(d_loss\) became nan at step {number}"):
        trainer.train_step(torch.full_like(batch(), float("nan")))
    after = {**trainer.state_tensors(), **trainer.ema.tensors()}
    assert all(torch.equal(before[k], after[k]) for k in before), "a divergent step changed the weights"
    assert all(torch.equal(a, s["step"]) for a, s in zip(adam_steps, trainer.disc_optimizer.state.values()))


def test_the_growth_limit_reaches_the_device():
    trainer, _ = graphed(warmup=3)
    for _ in range(5):
        trainer.train_step(batch())
    guard, graph = trainer.algorithm.guard, trainer.algorithm
    assert math.isfinite(guard.limit("g_loss"))
    assert float(graph.device_hooks.limits["g_loss"][0]) == pytest.approx(guard.limit("g_loss"))
    guard._typical["g_loss"] = 1e-9  # any loss is now far above its typical level
    before = {k: v.clone() for k, v in trainer.state_tensors().items()}
    with pytest.raises(asvae_kit.TrainingDivergedError, match=r"\(g_loss\) reached .* over 1000 times its typical magnitude"):
        trainer.train_step(batch())
    after = trainer.state_tensors()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith(("encoder", "decoder")))


def test_a_batch_of_another_shape_trains_eagerly_with_one_warning():
    trainer, _ = graphed(warmup=0)
    trainer.train_step(batch())
    trainer.train_step(batch())
    with pytest.warns(GraphCaptureWarning, match=r"shape \(5, 1, 8, 8\) does not fit the graph captured for \(8, 1, 8, 8\)"):
        terms = trainer.train_step(batch(5))
    assert math.isfinite(float(terms["g_loss"]))
    with warnings.catch_warnings():
        warnings.simplefilter("error", GraphCaptureWarning)
        trainer.train_step(batch(3))
        trainer.train_step(batch())
    assert trainer.algorithm.replays == 2 and trainer.step == 5


def test_a_step_that_synchronises_is_named_and_runs_eagerly_from_then_on():
    trainer, backend = graphed(warmup=1, syncs=("plugins/mine.py:12", "plugins/mine.py:12"))
    before = [p.detach().clone() for p in trainer.encoder.parameters()]
    trainer.train_step(batch())
    with pytest.warns(GraphCaptureWarning, match=r"synchronises with the host at plugins/mine.py:12, which a CUDA graph cannot record"):
        trainer.train_step(batch())
    with warnings.catch_warnings():
        warnings.simplefilter("error", GraphCaptureWarning)
        trainer.train_step(batch())
    assert backend.captures == 0 and trainer.algorithm.disabled and trainer.step == 3
    assert not any(torch.equal(a, b) for a, b in zip(before, trainer.encoder.parameters()))


def test_only_a_rehearsed_batch_shape_is_recorded():
    trainer, backend = graphed(warmup=0)
    trainer.train_step(batch())  # rehearsed for 8 rows
    trainer.train_step(batch(5))  # another shape: rehearsed again, not recorded
    assert backend.captures == 0 and not trainer.algorithm.captured
    trainer.train_step(batch(5))
    assert backend.captures == 1 and trainer.algorithm._static_x.shape[0] == 5


def test_a_rehearsal_that_synchronises_and_diverges_still_gives_capture_up():
    trainer, backend = graphed(warmup=0, syncs=("plugins/mine.py:12",))
    with pytest.warns(GraphCaptureWarning, match="plugins/mine.py:12"), pytest.raises(asvae_kit.TrainingDivergedError):
        trainer.train_step(torch.full_like(batch(), float("nan")))
    trainer.train_step(batch())
    assert trainer.algorithm.disabled and backend.captures == 0


def test_a_failed_capture_is_an_error_that_says_what_to_do():
    error = RuntimeError("CUDA error: operation not permitted when stream is capturing")
    trainer, _ = graphed(warmup=0, fail=error)
    trainer.train_step(batch())
    with pytest.raises(asvae_kit.GraphCaptureError, match="operation not permitted.*restart the run with cuda_graphs=false"):
        trainer.train_step(batch())


def test_resuming_drops_the_graph_and_captures_again():
    trainer, backend = graphed(warmup=0)
    trainer.train_step(batch())
    trainer.train_step(batch())
    state = {**trainer.state_dict(), "step": trainer.step}
    trainer.load_state_dict(state)
    assert not trainer.algorithm.captured
    trainer.train_step(batch())
    trainer.train_step(batch())
    assert backend.captures == 2


def test_where_capture_cannot_work_the_config_says_why_and_trains_eagerly():
    with pytest.warns(GraphCaptureWarning, match="cuda_graphs=true, but device is 'cpu', and CUDA graphs need a CUDA device"):
        trainer = asvae_kit.build("mlp-asvae", device="cpu", cuda_graphs=True, steps=2, **SMALL)
    assert type(trainer.algorithm) is AlgorithmStep and not trainer.gen_optimizer.param_groups[0]["capturable"]
    trainer.fit(progress=False)
    gpu, one = torch.device("cuda"), DistContext()
    assert "GradScaler" in capture_blocker({"precision": "16-mixed"}, gpu, one)
    assert "2 processes" in capture_blocker({}, gpu, DistContext(world_size=2, rank=0))
    assert capture_blocker({"precision": "bf16"}, gpu, one) is None
    with pytest.raises(asvae_kit.ConfigError, match="config 'cuda_graphs' must be true or false"):
        asvae_kit.build("mlp-vae", cuda_graphs="yes")


def test_a_tensor_learning_rate_is_written_in_place_and_survives_a_float_checkpoint():
    param = torch.nn.Parameter(torch.zeros(3))
    lr = torch.tensor(0.5)
    graphed_opt = torch.optim.Adam([param], lr=lr)
    set_learning_rates({"lr": 0.25, "disc_lr": None}, graphed_opt, None, factor=0.5)
    assert graphed_opt.param_groups[0]["lr"] is lr and lr.item() == 0.125  # the tensor a graph reads
    plain = torch.optim.Adam([torch.nn.Parameter(torch.zeros(3))], lr=0.01)
    load_optimizer_state(graphed_opt, plain.state_dict())
    assert graphed_opt.param_groups[0]["lr"] is lr and lr.item() == pytest.approx(0.01)
    load_optimizer_state(plain, torch.optim.Adam([param], lr=torch.tensor(0.3)).state_dict())
    assert plain.param_groups[0]["lr"] == pytest.approx(0.3) and isinstance(plain.param_groups[0]["lr"], float)


@cuda
@pytest.mark.parametrize("precision", ["32", "bf16"])
def test_on_a_gpu_the_step_is_captured_and_trains_like_eager(precision):
    overrides = {**SMALL, "device": "cuda", "steps": 60, "precision": precision, "optim.schedule": "cosine"}
    eager = asvae_kit.build("mlp-asvae", **overrides).fit(progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", GraphCaptureWarning)
        trainer = asvae_kit.build("mlp-asvae", cuda_graphs=True, **overrides).fit(progress=False)
    graph = trainer.algorithm
    assert isinstance(graph, StepGraph) and graph.captured and graph.replays == 60 - graph.warmup_steps - 1  # and the rehearsal
    first = trainer.gen_optimizer.param_groups[0]["params"][0]
    assert int(trainer.gen_optimizer.state[first]["step"]) == 60  # no replay skipped its Adam step
    group = trainer.gen_optimizer.param_groups[0]
    assert group["capturable"] and group["fused"] and isinstance(group["lr"], torch.Tensor)
    assert float(group["lr"]) == pytest.approx(float(eager.gen_optimizer.param_groups[0]["lr"]), abs=1e-9)  # the schedule reached the graph
    late = slice(40, 60)
    for key in ("g_loss", "d_loss"):
        ours = sum(row[key] for row in trainer.history[late]) / 20
        theirs = sum(row[key] for row in eager.history[late]) / 20
        assert math.isfinite(ours) and ours == pytest.approx(theirs, rel=0.15), key


@cuda
def test_on_a_gpu_a_component_that_synchronises_is_named_and_trains_eagerly(monkeypatch):
    trainer = asvae_kit.build("mlp-asvae", cuda_graphs=True, **{**SMALL, "device": "cuda", "steps": 6})
    loss_fn = trainer.algorithm.divergence.generator_loss

    def syncing(discriminator, joint):
        loss, terms = loss_fn(discriminator, joint)
        if float(loss) > 1e30:  # reads a GPU value on the host: not recordable
            pass
        return loss, terms

    monkeypatch.setattr(trainer.algorithm.divergence, "generator_loss", syncing)
    with pytest.warns(GraphCaptureWarning, match=r"synchronises with the host at .*test_step_graph.py:\d+"):
        trainer.fit(progress=False)
    assert trainer.algorithm.disabled and not trainer.algorithm.captured and trainer.step == 6


def test_a_sync_is_located_at_the_first_frame_outside_torch():
    from asvae_kit.step_graph import _caller_outside_torch

    where = _caller_outside_torch()
    assert where.endswith(f"test_step_graph.py:{sys._getframe().f_lineno - 1}")


class FrozenNoise(RecordedSteps):
    """A stand-in for a graph that froze its random draws: each replay starts from the random state
    the capture started from, so it redraws the captured z_p, z_m and noise (what a graph that
    recorded them as constants would replay).  The control for ``draws_of_replays``."""

    def capture(self, body):
        state = torch.get_rng_state()
        replay, out = super().capture(body)

        def frozen() -> None:
            torch.set_rng_state(state)
            replay()

        return frozen, out


def draws_of_replays(trainer: asvae_kit.Trainer, x: torch.Tensor, replays: int = 2) -> tuple[list[dict[str, torch.Tensor]], list[torch.Tensor]]:
    """The step's random draws (z_p, z_m and z_q ~ q(z|x)) in each of ``replays`` replays of the
    captured step on the same batch ``x``, at learning rate 0 (so the networks, and with them the
    posterior z_q is drawn from, stay as they were: only the draws can change); and the random
    generator's state (``x``'s device's) after each replay, which a checkpoint saves.

    The draws are copied into buffers inside the step, so a real graph records the copies and
    each replay refills the buffers; the buffers are made by the first (eager) step, before capture."""
    for optimizer in (trainer.gen_optimizer, trainer.disc_optimizer):
        for group in optimizer.param_groups:  # the config refuses lr 0; the optimizer takes it
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(0.0)  # the tensor a captured fused Adam reads
            else:
                group["lr"] = 0.0
    graph = trainer.algorithm
    step, buffers, made = graph.algorithm, {}, []
    make_batch, updates = step.make_batch, step.updates

    def recording_make_batch(x):
        made.append(make_batch(x))
        return made[-1]

    def recording_updates(x, hooks=None):
        terms = updates(x, hooks)
        batch = made.pop()
        for name in ("z_p", "z_m", "z_q"):
            value = getattr(batch, name).detach()
            if name not in buffers:  # the first, eager step: nothing is allocated inside the graph
                buffers[name] = torch.empty_like(value)
            buffers[name].copy_(value)
        return terms

    step.make_batch, step.updates = recording_make_batch, recording_updates
    for _ in range(graph.warmup_steps + 2):  # warm-up, rehearsal, capture
        trainer.train_step(x)
    assert graph.captured, f"the step was not captured: {graph.disabled}"
    weights = {k: v.clone() for k, v in trainer.state_tensors().items()}
    generator_state = torch.cuda.get_rng_state if x.is_cuda else torch.get_rng_state
    seen, states = [], []
    for _ in range(replays):
        replayed = graph.replays
        trainer.train_step(x)
        assert graph.replays == replayed + 1, "the step was not replayed"
        seen.append({name: value.cpu().clone() for name, value in buffers.items()})
        states.append(generator_state().clone())
    after = trainer.state_tensors()
    assert all(torch.equal(weights[k], after[k]) for k in weights), "learning rate 0 changed the weights"
    return seen, states


def _differ(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, float]:
    """The share of entries of each draw that differ between two replays."""
    return {name: float((a[name] != b[name]).float().mean()) for name in a}


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=cuda)])
def test_each_replay_draws_fresh_noise(device):
    """Two replays of the captured step on one batch at learning rate 0 differ only by their
    random draws, and those must differ: z_p and z_m from the prior, and the reparameterisation
    noise behind z_q.  On CPU the stand-in backend checks the test itself (its control below)."""
    if device == "cuda":
        with warnings.catch_warnings():
            warnings.simplefilter("error", GraphCaptureWarning)
            trainer = asvae_kit.build("mlp-asvae", cuda_graphs=True, **{**SMALL, "device": "cuda"})
    else:
        trainer, _ = graphed()
    (first, second), states = draws_of_replays(trainer, batch().to(device))
    assert sorted(first) == ["z_m", "z_p", "z_q"]
    assert all(share > 0.99 for share in _differ(first, second).values()), _differ(first, second)
    assert not torch.equal(*states), "a replay left the generator's state as it was: a resume would repeat its draws"
    for name in ("z_p", "z_m"):  # drawn from N(0, I): the noise is noise, not zeros or a copy (32 draws: 4.5 sigma bounds)
        assert abs(float(second[name].mean())) < 0.8 and 0.5 < float(second[name].std()) < 1.5, name


def test_frozen_noise_is_what_the_replay_test_catches():
    trainer, _ = graphed(warmup=1)
    trainer.algorithm.backend = FrozenNoise()
    (first, second), states = draws_of_replays(trainer, batch())
    assert _differ(first, second) == {"z_p": 0.0, "z_m": 0.0, "z_q": 0.0} and torch.equal(*states)


class HostReads(TorchDispatchMode):
    """Notes every aten op that brings a tensor's value to the host (``.item()``, ``float(t)``,
    ``if t:``, ``nonzero``): on a GPU each one is a synchronisation that a CUDA graph cannot record.
    Under a dispatch mode the fused head is one opaque op, so ``PythonHostReads`` covers its inside."""

    OPS = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.is_nonzero.default, torch.ops.aten.nonzero.default,
           torch.ops.aten.equal.default}

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in self.OPS:
            self.found.append(str(func))
        return func(*args, **(kwargs or {}))


class PythonHostReads:
    """The same at the Python level: ``Tensor.item``, ``bool``/``float``/``int`` of a tensor,
    ``tolist``, ``nonzero``, ``equal``, a copy to the CPU, wrapped on the ``Tensor`` class for the
    block.  It sees inside the fused head (forward and backward, which a dispatch mode sees as one
    opaque op) and inside every Python backward; a mode could not, being off while the op it
    handles (``backward`` too) runs."""

    METHODS = ("item", "__bool__", "__float__", "__int__", "__index__", "tolist", "nonzero", "equal", "cpu", "numpy")
    FUNCTIONS = ("nonzero", "equal")

    def __enter__(self) -> "PythonHostReads":
        self.found: list[str] = []
        self._saved = [(torch.Tensor, name, torch.Tensor.__dict__.get(name)) for name in self.METHODS]
        self._saved += [(torch, name, getattr(torch, name)) for name in self.FUNCTIONS]
        for owner, name, _ in self._saved:
            setattr(owner, name, self._spy(getattr(owner, name), name))
        return self

    def __exit__(self, *exc) -> None:
        for owner, name, original in self._saved:
            if original is None:
                delattr(owner, name)  # inherited from the C base class
            else:
                setattr(owner, name, original)

    def _spy(self, method, name):
        def spy(*args, **kwargs):
            self.found.append(name)
            return method(*args, **kwargs)

        return spy


@pytest.mark.parametrize("preset, precision", [
    *((f"{arch}-{variant}", "32") for arch in ("mlp", "dcgan", "resnet") for variant in ("vae", "avb", "ali", "asvae")),
    ("dcgan-asvae", "bf16"), ("mlp-asvae", "bf16"),
])
def test_no_built_in_step_reads_a_device_value_on_the_host(preset, precision):
    """What the rehearsal's sync check looks for on a GPU, checked for every built-in preset on
    CPU: the body a graph records (the step with the device hooks, a weight average on) reads no
    tensor value on the host, so ``cuda_graphs`` can capture every preset.  The host's own hooks,
    whose guard reads each loss, are the control."""
    trainer = asvae_kit.build(preset, data=None, data_shape=[1, 28, 28], batch_size=4, device="cpu", ema=0.99, precision=precision)
    step, x = trainer.algorithm, torch.rand(4, 1, 28, 28)
    hooks = DeviceHooks(step.guard, step.ema, x.device)
    step.updates(x, hooks)  # the rehearsal: first-time work (the device tensors of the hooks) happens here
    for spy in (HostReads, PythonHostReads):
        hooks.begin()
        with spy() as recorded:
            step.updates(x, hooks)
        assert recorded.found == [], spy.__name__
        with spy() as control:
            step.updates(x, EagerHooks(step.guard))
        assert control.found, spy.__name__
