"""The training step compiled: generator + perceptual loss in one torch.compile region, Adam's update in a
second, and nothing in either that makes the host wait for the device.

`Trainer.train_step` is the step; a runner does its three device parts: `forward`, `set_lr` (the warm-up) and
`backward_and_update`. `EagerStep` (the reference) runs them op by op, `CompiledStep` compiled;
tests/test_train_compiled.py holds the two equal to float tolerance with a warm-up and several styles: the
gradients and every step's loss terms, and, given the same gradients, the weights and Adam's moments.

    forward  `Trainer.forward_terms` (generator under autocast, VGG, loss arithmetic fp32), compiled with
             fullgraph=True (False under DDP, whose bucketing splits the graph); AOTAutograd compiles its
             backward in the same pass, so `total.backward()` runs compiled code too. Dynamo cannot trace the
             `.backward()` call itself into the graph without compiled autograd, which this step does not need.
    update   `optimizer.step()` compiled: one graph per step instead of a few kernels per parameter (not
             fullgraph: Optimizer.step breaks the graph on purpose around its no_grad region, see
             torch/optim/optimizer.py `_use_grad_for_differentiable`; the update itself is one graph).

What keeps the device queue full (no host sync) and the graphs from recompiling:
  - the learning rate is a 0-d tensor on the device, read by Adam inside the graph; the warm-up fills it.
    A Python float would be a constant of the compiled update: one recompilation per warm-up step.
  - capturable Adam on CUDA: its step count and bias corrections live on the device. Otherwise Adam keeps
    `step` on the host, and compiled, its CUDA update falls back to eager (torch/optim/optimizer.py).
  - no GradScaler: bf16 or fp32 only. fp16's scaler reads its inf flag back every step.
  - the per-sample style indices come from pinned memory with non_blocking=True (trainer._style_index):
    a copy from pageable memory makes the host wait for the stream.
  - losses stay device tensors; fit() reads them every log_every steps.
"""
from __future__ import annotations

import torch


def adapt_adam(optimizer: torch.optim.Optimizer, device: torch.device, compiled: bool) -> None:
    """Set `optimizer`'s groups and state for the compiled step (lr a device tensor; capturable, with `step`
    on the device, on CUDA) or for the eager one (lr a float, `step` on the host), whichever mode wrote the
    state it was loaded from: a run checkpointed in one mode resumes in the other."""
    capturable = compiled and device.type == "cuda"
    for group in optimizer.param_groups:
        lr = group["lr"]
        if compiled:
            group["lr"] = torch.tensor(float(lr), dtype=torch.float32, device=device)
        else:
            group["lr"] = float(lr)
        group["capturable"] = capturable
        for p in group["params"]:
            st = optimizer.state.get(p)
            if st and "step" in st:
                st["step"] = st["step"].to(dtype=torch.float32, device=p.device if capturable else "cpu")


class EagerStep:
    """The reference: the trainer's forward as it is, the learning rate a float, GradScaler around backward and
    Adam (a no-op unless fp16)."""

    def __init__(self, trainer):
        self.forward, self.optimizer, self.scaler = trainer.forward_terms, trainer.optimizer, trainer.scaler
        adapt_adam(self.optimizer, trainer.device, compiled=False)

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def backward_and_update(self, total: torch.Tensor) -> None:
        self.scaler.scale(total).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()


class CompiledStep:
    """The same step with the forward (+ loss, + its backward) and the Adam update compiled. `backend`:
    torch.compile's (the tests check capture, guards and resume with "aot_eager", which generates no code)."""

    def __init__(self, trainer, backend: str = "inductor"):
        if trainer.amp == "fp16":
            raise ValueError("--compile trains in bf16 or fp32 (--amp bf16|off): fp16 needs GradScaler, which "
                             "reads an inf flag back from the device every step")
        optimizer = trainer.optimizer
        adapt_adam(optimizer, trainer.device, compiled=True)
        self.lr = [group["lr"] for group in optimizer.param_groups]
        self.forward = torch.compile(trainer.forward_terms, fullgraph=not trainer.dist.enabled,
                                     dynamic=False, backend=backend)  # one crop size per run: static shapes

        @torch.compile(backend=backend)
        def update():
            optimizer.step()

        self.update = update

    def set_lr(self, lr: float) -> None:
        for tensor in self.lr:
            tensor.fill_(lr)  # a kernel with the value as its argument: no copy, no sync, no recompile

    def backward_and_update(self, total: torch.Tensor) -> None:
        total.backward()
        self.update()
