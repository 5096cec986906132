"""The compiled training step against its eager reference, on the CPU: the same loss terms, weights and Adam
moments over steps with a learning-rate warm-up and two styles (one-hot), no recompilation, exact resume; the
device prefetcher. Capture, guards and resume run with torch.compile's "aot_eager" backend (Dynamo and
AOTAutograd, no code generated: seconds); the inductor-compiled step (minutes of C++ compiling on a small CPU)
is the slow test, and on CUDA a GPU test checks that the step never makes the host wait."""
from __future__ import annotations

from typing import NamedTuple

import pytest
import torch
from test_train_core import Stop, config, crash_at, one_thread, photos, stripes, tiny_loss  # noqa: F401  (fixtures)
from tolerances import assert_derived_close

from instyle.train.compiled_step import CompiledStep
from instyle.train.data import make_loader
from instyle.train.prefetch import DevicePrefetcher
from instyle.train.trainer import Trainer

STEPS, WARMUP = 3, 8  # the learning rate changes at every step checked here


def two_style_trainer(folder, photo_folder, backend: str | None = None, **kw) -> Trainer:
    """A width-8 generator for two styles at 64 px, batch 2, warming up; compiled with `backend` (None: eager)."""
    loss = tiny_loss()
    loss.set_styles([stripes(), stripes(48).flip(-1)])
    cfg = config(folder, photo_folder, style=["a.png", "b.png"], warmup=WARMUP, **kw)
    trainer = Trainer(cfg, loss)
    if backend is not None:
        trainer.runner = CompiledStep(trainer, backend=backend)
    return trainer


def content_batches(n: int = STEPS) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    return [torch.rand(2, 3, 64, 64, generator=g) * 255 for _ in range(n)]


def run(trainer: Trainer, batches) -> list[dict[str, torch.Tensor]]:
    terms = []
    for b in batches:
        terms.append(trainer.train_step(b.contiguous(memory_format=torch.channels_last)
                                         if trainer.channels_last else b))
        trainer.step += 1
    return terms


def gradients(trainer: Trainer, content: torch.Tensor) -> dict[str, torch.Tensor]:
    """This step's gradients by the trainer's runner (forward, loss, backward; no update)."""
    x = content.contiguous(memory_format=torch.channels_last) if trainer.channels_last else content
    index = trainer._style_index(trainer.step, 0)
    trainer.runner.forward(trainer._inputs(x, trainer.step), x, index)["total"].backward()
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters()}
    trainer.optimizer.zero_grad(set_to_none=True)
    return grads


class Trace(NamedTuple):
    trainer: Trainer
    grads: dict[str, torch.Tensor]  # the first step's
    terms: list[dict[str, torch.Tensor]]  # each step's loss terms


def trace(trainer: Trainer) -> Trace:
    return Trace(trainer, gradients(trainer, content_batches()[0]), run(trainer, content_batches()))


def graphs() -> int:
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def assert_same_steps(got: Trace, want: Trace, lowp: Trace):
    """`got` computed what `want` (the eager reference) did, to within twice what `lowp` (the eager step with the
    generator and VGG in channels_last: other conv kernels, another summation order) differs by, + fp32 atol:
    the first step's gradients (relative to the largest) and every step's loss terms.

    Weights after several steps are not compared this way: Adam moves a weight by about lr whatever its
    gradient's size, so where a gradient is rounding noise (a conv bias before instance norm: zero but for
    rounding) two correct implementations walk apart by lr per step. The update is checked on equal
    gradients instead (assert_same_updates)."""
    scale = max(g.abs().max() for g in want.grads.values())
    for name, g in want.grads.items():
        assert_derived_close(f"grad {name}", got.grads[name] / scale, g / scale, lowp.grads[name] / scale,
                             torch.float32)
    for step, (g, w, lo) in enumerate(zip(got.terms, want.terms, lowp.terms)):
        assert set(g) == set(w) == {"content", "style", "tv", "total"}
        for k in w:
            assert_derived_close(f"step {step} {k}", g[k], w[k], lo[k], torch.float32)


def assert_same_updates(compiled: Trainer, eager: Trainer):
    """Given the same gradients each step (the eager step's), the compiled Adam update, its learning rate a
    device tensor warming up, moves the weights and moments as eager Adam does (fp32 atol)."""
    for step, content in enumerate(content_batches()):
        compiled.step = eager.step = step
        grads = gradients(eager, content)
        for p, q, g in zip(compiled.model.parameters(), eager.model.parameters(), grads.values()):
            p.grad, q.grad = g.clone(), g.clone()
        for trainer in (compiled, eager):
            trainer.runner.set_lr(trainer.lr_at(step))
        eager.optimizer.step()
        compiled.runner.update()
        for (name, p), q in zip(compiled.model.named_parameters(), eager.model.parameters()):
            assert_derived_close(f"step {step} {name}", p, q, None, torch.float32)
            for moment in ("exp_avg", "exp_avg_sq"):
                assert_derived_close(f"step {step} {name} {moment}", compiled.optimizer.state[p][moment],
                                     eager.optimizer.state[q][moment], None, torch.float32)
    lr = compiled.optimizer.param_groups[0]["lr"]
    assert torch.is_tensor(lr) and float(lr) == pytest.approx(eager.optimizer.param_groups[0]["lr"])


@pytest.fixture(scope="module")
def references(tmp_path_factory, photos):  # noqa: F811
    """The eager step's traces: NCHW (the reference) and channels_last (its rounding spread)."""
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("eager")
    return trace(two_style_trainer(folder / "e", photos)), \
        trace(two_style_trainer(folder / "cl", photos, channels_last=True))


@pytest.fixture(scope="module")
def captured(tmp_path_factory, photos):  # noqa: F811
    """The trace of a step compiled with "aot_eager", and the graphs its first step made."""
    torch.set_num_threads(1)
    before = graphs()
    traced = trace(two_style_trainer(tmp_path_factory.mktemp("compiled"), photos, backend="aot_eager"))
    return traced, graphs() - before


def test_compiled_step_computes_what_the_eager_step_does(captured, references):
    assert_same_steps(captured[0], *references)


def test_compiled_update_moves_weights_like_eager_adam(tmp_path, photos):  # noqa: F811
    compiled = two_style_trainer(tmp_path / "c", photos, "aot_eager")
    assert_same_updates(compiled, two_style_trainer(tmp_path / "e", photos))


def test_compiled_step_is_two_graphs_that_never_recompile(captured):
    """Forward+loss (fullgraph) and Adam's update are captured once each (fewer when an earlier test's
    compiled forward fits this trainer too); later steps, the learning rate still warming up, reuse them."""
    traced, first = captured
    assert 1 <= first <= 2
    before = graphs()
    with torch.compiler.set_stance("fail_on_recompile"):
        run(traced.trainer, content_batches(2))
    assert graphs() == before and traced.trainer.optimizer.param_groups[0]["lr"] < traced.trainer.cfg.lr


def test_compiled_resume_reproduces_the_uninterrupted_run_bitwise(tmp_path, photos, monkeypatch):  # noqa: F811
    a = two_style_trainer(tmp_path / "a", photos, "aot_eager", iterations=6, checkpoint_every=2)
    a.fit()
    b = two_style_trainer(tmp_path / "b", photos, "aot_eager", iterations=6, checkpoint_every=2)
    crash_at(b, 5, monkeypatch)  # the last good checkpoint is step 4
    with pytest.raises(Stop):
        b.fit()
    c = two_style_trainer(tmp_path / "b", photos, "aot_eager", iterations=6, checkpoint_every=2, resume=True)
    assert c.step == 4 and torch.is_tensor(c.optimizer.param_groups[0]["lr"])
    c.fit()
    want, got = a.model.state_dict(), c.model.state_dict()
    assert all(torch.equal(want[k], got[k]) for k in want)
    # the state written by the compiled step resumes in the eager one too: lr a float again, Adam's step on the host
    d = two_style_trainer(tmp_path / "b", photos, iterations=7, checkpoint_every=2, resume=True)
    assert isinstance(d.optimizer.param_groups[0]["lr"], float)
    assert all(s["step"].device.type == "cpu" and float(s["step"]) == 6 for s in d.optimizer.state.values())
    d.fit()
    assert d.step == 7 and all(torch.isfinite(p).all() for p in d.model.parameters())


def test_compiled_step_refuses_fp16(tmp_path, photos):  # noqa: F811
    with pytest.raises(ValueError, match="GradScaler"):
        Trainer(config(tmp_path, photos, compile=True, amp="fp16"), tiny_loss())


@pytest.mark.parametrize("channels_last", [False, True])
def test_prefetcher_hands_out_the_loaders_batches_in_order(photos, channels_last):  # noqa: F811
    from instyle.train.data import list_images

    files = list_images(photos)

    def loader():
        return iter(make_loader(files, size=32, batch_size=2, seed=1, start=3))

    direct = loader()
    want = [next(direct) for _ in range(5)]
    ahead = DevicePrefetcher(loader(), torch.device("cpu"), channels_last)
    for w in want:
        got = next(ahead)
        assert got.dtype == torch.float32 and torch.equal(got, w.float())
        assert got.is_contiguous(memory_format=torch.channels_last) == channels_last


@pytest.mark.slow
def test_inductor_compiled_step_computes_and_updates_like_the_eager_step(tmp_path, photos, references):  # noqa: F811
    """The step as --compile runs it (inductor's generated C++ on the CPU), against the same eager reference."""
    traced = trace(two_style_trainer(tmp_path / "t", photos, compile=True))
    assert_same_steps(traced, *references)
    with torch.compiler.set_stance("fail_on_recompile"):
        run(traced.trainer, content_batches(2))
    compiled = two_style_trainer(tmp_path / "c", photos, compile=True)
    assert_same_updates(compiled, two_style_trainer(tmp_path / "e", photos))


@pytest.mark.gpu
def test_compiled_step_never_makes_the_host_wait(tmp_path, photos):  # noqa: F811
    """bf16 + channels_last on CUDA, batches through the prefetcher: after the first (compiling) steps, no step
    synchronizes the host with the device (torch.cuda's sync debug mode turns any sync into an error)."""
    trainer = two_style_trainer(tmp_path, photos, compile=True, device="cuda", amp="bf16", workers=1)
    assert trainer.channels_last
    batches = DevicePrefetcher(iter(trainer._loader()), trainer.device, trainer.channels_last)
    sums = torch.zeros((), device="cuda")

    def steps(n: int):
        nonlocal sums
        for _ in range(n):
            sums += trainer.train_step(next(batches))["total"]
            trainer.step += 1

    steps(3)  # compiles, and Adam's state is made
    torch.cuda.set_sync_debug_mode("error")
    try:
        steps(5)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(sums)
