"""The feed-forward trainer: generator + frozen VGG loss, Adam, AMP, checkpoints with exact resume.

One step: a batch of content crops (style mode) or noise (texture mode) -> generator (under autocast) ->
PerceptualLoss (VGG under autocast, loss arithmetic fp32) -> GradScaler-scaled backward -> Adam.
Performance choices, each optional: bf16/fp16 autocast, channels_last on CUDA, the fused Triton instance
norm (train/fused_norm.py), the compiled step (train/compiled_step.py, beside its eager reference), DDP
across GPUs (train/distributed.py). Batches reach the device ahead of their step (train/prefetch.py) and the
loop reads losses back only every log_every steps, so the host runs ahead of the device.

Exact resume: the state file (state.py) holds model, optimizer, scaler, RNG states and the global sample
position; data crops and noise are pure functions of (seed, sample code / step), so a resumed run
reproduces the uninterrupted one bit for bit (CPU, fixed worker count).
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from instyle import checkpoint, models
from instyle.precision import DTYPES

from . import distributed, fused_norm
from .compiled_step import CompiledStep, EagerStep
from .data import list_images, make_loader
from .logs import LossLog, sample_grid
from .losses import PerceptualLoss
from .prefetch import DevicePrefetcher
from .state import git_rev, load_state, rng_state, save_state, set_rng_state, state_path

AMP_DTYPES = {"bf16": DTYPES["bf16"], "fp16": DTYPES["fp16"], "off": None}
# settings that must match for --resume to continue the same run
_RESUME_KEYS = ("arch", "model_config", "mode", "image_size", "batch_size", "seed", "lr", "style", "finetune",
                "init", "warmup")
INIT_WARMUP = 200  # steps: a continued run's first updates otherwise move every weight by ~lr at once


@dataclass
class TrainConfig:
    style: str | list[str]  # style image path(s); several: one conditional-IN network for all of them
    out: str
    data: str | None = None  # content folder; None in texture mode
    arch: str = "johnson"
    model_config: dict = field(default_factory=dict)  # constructor arguments (norm, padding, width, ...)
    mode: str = "style"  # style | texture (texture: pyramid generator fed noise, style loss only)
    image_size: int = 256
    batch_size: int = 4
    iterations: int = 40000
    lr: float = 1e-3
    seed: int = 0
    amp: str = "auto"  # auto (bf16 on CUDA, off on CPU) | bf16 | fp16 | off
    channels_last: bool | None = None  # None: on CUDA
    compile: bool | str = False  # the compiled, sync-free step (train/compiled_step.py); bf16 or fp32; a string
    # names torch.compile's backend (default inductor; the campaign's dry run: aot_eager, capture without codegen)
    fused: str = "off"  # auto | on | off (off: measured slower than bf16 + channels_last alone on an H100)
    workers: int = 4
    max_images: int | None = None
    checkpoint_every: int = 1000
    sample_every: int = 1000
    log_every: int = 10
    resume: bool = False
    overwrite: bool = False  # a fresh run may replace an existing run's state file
    device: str = "auto"
    save_dtype: str = "fp32"  # fp32 | fp16 (of the .safetensors generator)
    progress: bool = True
    time_budget: float | None = None  # seconds of training (this process) after which to stop and save
    finetune: str | None = None  # a trained generator: add `style` as new styles, train only their gamma/beta
    init: str | None = None  # a trained generator to start from (styles matched by name); every weight trains
    init_optimizer: str | None = "auto"  # with init: Adam moments file (auto: init's .adam.safetensors if any)
    warmup: int | None = None  # steps of linear LR warm-up (None: 200 with init, else 0)
    vgg_info: dict = field(default_factory=dict)  # recorded in the checkpoint metadata

    @property
    def style_paths(self) -> list[str]:
        return [self.style] if isinstance(self.style, (str, Path)) else [str(p) for p in self.style]

    @property
    def style_names(self) -> list[str]:
        """Style names: the style images' file names without extension."""
        return [Path(p).stem for p in self.style_paths]


def generator_config(cfg: TrainConfig) -> dict:
    """The constructor arguments of the generator `cfg` trains."""
    config = dict(cfg.model_config)
    if len(cfg.style_paths) > 1:
        config["styles"] = len(cfg.style_paths)
    if cfg.mode == "texture":
        if cfg.arch != "pyramid":
            raise ValueError("texture mode needs --arch pyramid (a generator fed noise only)")
        config["mode"] = "texture"
    return config


def build_generator(cfg: TrainConfig) -> nn.Module:
    model = models.build(cfg.arch, generator_config(cfg))
    # Start from mid-gray: the output contract is 0..255 but a fresh final conv outputs ~0, and Adam moves a
    # bias by ~lr per step, so without this the first thousands of steps only brighten the image.
    last = {"johnson": "deconv3.conv2d", "pyramid": "to_rgb"}.get(cfg.arch)
    if last is not None:
        with torch.no_grad():
            model.get_submodule(last).bias.fill_(127.5)
    return model


class Trainer:
    """Trains a generator of `cfg` against `loss` (a PerceptualLoss whose style Grams are already set)."""

    def __init__(self, cfg: TrainConfig, loss: PerceptualLoss):
        from instyle.specs import resolve_device

        self.cfg, self.loss = cfg, loss
        if cfg.mode not in ("style", "texture"):
            raise ValueError(f"mode must be style or texture, got {cfg.mode!r}")
        if cfg.amp not in (*AMP_DTYPES, "auto"):
            raise ValueError(f"amp must be one of auto, {', '.join(AMP_DTYPES)}; got {cfg.amp!r}")
        self.dist, self.device = distributed.setup(resolve_device(cfg.device))
        dev = self.device
        self.amp = cfg.amp if cfg.amp != "auto" else ("bf16" if dev.type == "cuda" else "off")
        self.channels_last = dev.type == "cuda" if cfg.channels_last is None else cfg.channels_last
        self.out = Path(cfg.out)
        self.texture = cfg.mode == "texture"

        torch.manual_seed(cfg.seed)  # same initial weights on every rank
        self.base_entries: list[dict] = []  # fine-tuning: the base model's styles, before the new ones
        self.init_record: dict | None = None  # warm start: the generator this run started from
        if cfg.finetune and cfg.init:
            raise ValueError("--finetune and --init exclude each other: --finetune adds styles to a model and "
                             "trains only their rows, --init continues training all of a model's weights")
        if cfg.init:
            from .finetune import warm_start

            self.model, self.init_record = warm_start(cfg.init, cfg.arch, generator_config(cfg), cfg.style_names)
        elif cfg.finetune:
            from .finetune import extend

            self.model, self.base_entries = extend(cfg.finetune, len(cfg.style_paths))
        else:
            self.model = build_generator(cfg)
        m = self.model.stride_multiple
        if cfg.image_size % m or cfg.image_size < self.model.min_size:
            raise ValueError(f"--image-size {cfg.image_size} must be a multiple of {m} and >= "
                             f"{self.model.min_size} for this {cfg.arch} generator")
        self.model.to(dev)
        self.loss.to(dev)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
            self.loss.vgg.to(memory_format=torch.channels_last)
        params = list(self.model.parameters())
        if cfg.finetune:
            from .finetune import trainable_rows

            params = trainable_rows(self.model, len(self.base_entries))
        self.optimizer = torch.optim.Adam(params, lr=cfg.lr)
        self.warmup = cfg.warmup if cfg.warmup is not None else (INIT_WARMUP if cfg.init else 0)
        if cfg.init:
            self._restore_moments()
        self.scaler = torch.amp.GradScaler(dev.type, enabled=self.amp == "fp16")
        self.n_fused = fused_norm.maybe_fuse(self.model, dev, cfg.fused)

        self.files = [] if self.texture else list_images(_need_data(cfg), cfg.max_images, cfg.seed)
        self.step, self.position, self.elapsed = 0, 0, 0.0
        self.first_step_s: float | None = None  # the first step's seconds in this process (compiling, if any)
        self.names = [e["name"] for e in self.base_entries] + cfg.style_names
        self.styles = len(self.names)
        if len(set(self.names)) != self.styles:
            raise ValueError(f"style names repeat: {', '.join(self.names)}")
        if getattr(loss, "num_styles", 1) != len(cfg.style_paths):
            raise ValueError(f"the loss holds {getattr(loss, 'num_styles', 1)} style targets for "
                             f"{len(cfg.style_paths)} styles")
        self.style_columns = tuple(f"style_{n}" for n in self.names) if self.styles > 1 else ()
        self.log = LossLog(self._sibling(".log.csv"), self._sibling(".loss.png"), extra_fields=self.style_columns)
        if cfg.resume:
            self._resume()
        elif state_path(self.out).exists() and not cfg.overwrite:
            raise ValueError(f"{state_path(self.out)} exists (an earlier run): pass --resume to continue it or "
                             f"--overwrite to start over")
        if self.dist.is_main:
            self.log.flush(plot=False)  # a fresh run starts a fresh CSV; a resumed one drops rows past its step

        net: nn.Module = self.model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            net = DDP(net, device_ids=[dev.index] if dev.type == "cuda" else None)
        self.net = net
        # after any resume or --init: the runner puts the optimizer state loaded there in its own form
        self.runner = (CompiledStep(self, **({"backend": cfg.compile} if isinstance(cfg.compile, str) else {}))
                       if cfg.compile else EagerStep(self))

    # ------------------------------------------------------------------------------------ pieces

    def _restore_moments(self) -> None:
        """--init: Adam's moments from the base's moments file (rows matched by style name), when there is one."""
        from . import adam_state
        from .finetune import row_map

        cfg = self.cfg
        path = adam_state.adam_path(cfg.init) if cfg.init_optimizer == "auto" else cfg.init_optimizer
        if path is None or (cfg.init_optimizer == "auto" and not Path(path).is_file()):
            self.init_record["optimizer"] = None
            return
        if not Path(path).is_file():
            raise ValueError(f"--init-optimizer {path}: no such file")
        rows = row_map(self.init_record["styles"], cfg.style_names)
        self.init_record["optimizer"] = adam_state.load_moments(self.optimizer, self.model, path, rows)

    def _sibling(self, suffix: str) -> Path:
        stem = self.out.stem if self.out.suffix == ".safetensors" else self.out.name
        return self.out.with_name(stem + suffix)

    def _autocast(self):
        dtype = AMP_DTYPES[self.amp]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def _noise_generator(self, step: int, rank: int) -> torch.Generator:
        """Noise for step `step` on `rank`: a pure function of (seed, step, rank), so resume needs no state."""
        g = torch.Generator(device=self.device)
        g.manual_seed((self.cfg.seed * 1_000_003 + step) * 1_009 + rank)
        return g

    def _inputs(self, content: torch.Tensor | None, step: int) -> torch.Tensor:
        """The generator's input for this step: content (+ noise channels) or, in texture mode, noise."""
        g = self._noise_generator(step, self.dist.rank)
        model = self.model
        if self.texture:
            s = self.cfg.image_size
            x = model.sample_noise(self.cfg.batch_size, s, s, generator=g, device=self.device)
        elif getattr(model, "noise_channels", 0):
            x = model.with_noise(content, generator=g)
        else:
            x = content
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _style_index(self, step: int, rank: int) -> torch.Tensor | None:
        """Each sample's style for this step (a pure function of seed, step, rank); None with one style."""
        if self.styles == 1:
            return None
        g = torch.Generator().manual_seed((self.cfg.seed * 1_000_003 + step) * 1_013 + rank)
        first = len(self.base_entries)  # fine-tuning draws only the new styles
        index = first + torch.randint(self.styles - first, (self.cfg.batch_size,), generator=g)
        if self.device.type != "cuda":
            return index.to(self.device)
        # from pinned memory the copy is queued like a kernel; from pageable memory the host would wait for it
        return index.pin_memory().to(self.device, non_blocking=True)

    def lr_at(self, step: int) -> float:
        """The learning rate of step `step`: linear warm-up, then cfg.lr (a pure function of the step: exact
        resume keeps it)."""
        return self.cfg.lr * min(1.0, (step + 1) / self.warmup) if self.warmup else self.cfg.lr

    def _loader(self):
        if self.texture:
            return None
        cfg, d = self.cfg, self.dist
        return make_loader(self.files, size=cfg.image_size, batch_size=cfg.batch_size, seed=cfg.seed,
                           start=self.position, rank=d.rank, world_size=d.world_size, workers=cfg.workers,
                           pin_memory=self.device.type == "cuda")

    def forward_terms(self, x: torch.Tensor, content: torch.Tensor | None,
                      index: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Generator input `x` -> the loss terms (fp32, with `style_per_sample`); what the compiled step compiles."""
        with self._autocast():
            if index is None:
                y = self.net(x)
            else:
                y = self.net(x, torch.nn.functional.one_hot(index, self.styles).float())
            # the loss holds the targets of the styles being trained: the new ones when fine-tuning
            return self.loss(y, None if self.texture else content,
                             None if index is None else index - len(self.base_entries))

    def train_step(self, content: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """One optimisation step (its device parts by self.runner: compiled or eager); returns the detached fp32
        loss terms. `last_styles` keeps this step's (style index per sample, weighted style loss per sample),
        index None with one style."""
        self.net.train()
        index = self._style_index(self.step, self.dist.rank)
        terms = self.runner.forward(self._inputs(content, self.step), content, index)
        self.last_styles = (index, terms.pop("style_per_sample").detach())
        self.optimizer.zero_grad(set_to_none=True)
        if self.warmup:
            self.runner.set_lr(self.lr_at(self.step))
        self.runner.backward_and_update(terms["total"])
        return {k: v.detach() for k, v in terms.items()}

    # ---------------------------------------------------------------------------------- the loop

    def fit(self) -> dict[str, float]:
        """Train to cfg.iterations; returns the final (last logging window's mean) loss terms."""
        cfg, d = self.cfg, self.dist
        loader = self._loader()
        batches = DevicePrefetcher(iter(loader), self.device, self.channels_last) if loader is not None else None
        bar = None
        if cfg.progress and d.is_main:
            from tqdm import tqdm

            if cfg.time_budget is not None and cfg.iterations >= 10**9:  # bound by time: the bar counts seconds
                bar = tqdm(total=round(cfg.time_budget), unit="s", desc="train", dynamic_ncols=True,
                           bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s [ETA {remaining}]"
                                      "{postfix}")
            else:
                bar = tqdm(total=cfg.iterations, initial=self.step, desc="train", dynamic_ncols=True)
        sums: dict[str, torch.Tensor] = {}
        per_style = torch.zeros(2, self.styles, device=self.device)  # weighted style loss sums, sample counts
        window, t0, last = 0, time.perf_counter(), {}
        started = time.perf_counter()
        try:
            while self.step < cfg.iterations:
                content = next(batches) if batches is not None else None
                t_step = time.perf_counter()
                terms = self.train_step(content)
                if self.first_step_s is None:  # host time: with --compile, mostly compiling
                    self.first_step_s = time.perf_counter() - t_step
                self.step += 1
                self.position += cfg.batch_size * d.world_size
                index, sample_style = self.last_styles
                if index is not None:
                    per_style[0].index_add_(0, index, sample_style)
                    per_style[1].index_add_(0, index, torch.ones_like(sample_style))
                for k, v in terms.items():
                    sums[k] = sums.get(k, 0) + v
                window += 1
                out_of_time = False
                if self.step % cfg.log_every == 0 or self.step == cfg.iterations:
                    last = self._log_window(sums, window, time.perf_counter() - t0, per_style, bar)
                    sums, window, t0 = {}, 0, time.perf_counter()
                    # the budget is checked here only, with every rank agreeing (DDP steps in lockstep)
                    if cfg.time_budget is not None:
                        flag = torch.tensor([float(time.perf_counter() - started >= cfg.time_budget)],
                                            device=self.device)
                        out_of_time = bool(distributed.mean_across(d, flag)[0] > 0)
                if bar is not None:
                    bar.update(1 if bar.unit != "s" else min(time.perf_counter() - started, bar.total) - bar.n)
                if out_of_time:
                    break
                if cfg.sample_every and self.step % cfg.sample_every == 0:
                    self.write_samples()
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.step < cfg.iterations:
                    self.save_checkpoint(last)
            if cfg.time_budget is not None and cfg.sample_every and self.step % cfg.sample_every:
                self.write_samples()  # the state the budget stopped at
            self.final_losses = last
            self.save_checkpoint(last)
        finally:
            if bar is not None:
                bar.close()
            del batches, loader
        return last

    def _log_window(self, sums: dict, window: int, dt: float, per_style: torch.Tensor, bar) -> dict[str, float]:
        """Mean loss terms of the last `window` steps (across ranks), logged; resets `per_style`."""
        d = self.dist
        self.elapsed += dt
        means = distributed.mean_across(d, torch.stack([sums[k] for k in sorted(sums)]) / window)
        last = {k: float(v) for k, v in zip(sorted(sums), means.tolist())}
        if self.styles > 1:  # styles drawn in this window: their mean weighted style loss
            tot = distributed.mean_across(d, per_style)
            last.update({col: float(tot[0, s] / tot[1, s]) for s, col in enumerate(self.style_columns)
                         if tot[1, s] > 0})
            per_style.zero_()
        ips = window * self.cfg.batch_size * d.world_size / max(dt, 1e-9)
        self.log.add(write=d.is_main, step=self.step, **last, images_per_s=ips, elapsed_s=self.elapsed)
        if bar is not None:
            shown = ("content", "style", "tv", "lattice", "distill", "total")
            bar.set_postfix({k: f"{last[k]:.3g}" for k in shown if k in last})
        return last

    # ---------------------------------------------------------------------------- checkpoints

    def _raw_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}

    def training_metadata(self, losses: dict[str, float]) -> dict:
        cfg = self.cfg
        names = [Path(p).name for p in cfg.style_paths]
        return {
            "style": names[0] if len(names) == 1 else names, "mode": cfg.mode,
            "data": None if self.texture else str(cfg.data), "images": len(self.files),
            "iterations": self.step, "batch_size": cfg.batch_size, "world_size": self.dist.world_size,
            "image_size": cfg.image_size, "lr": cfg.lr, "amp": self.amp, "seed": cfg.seed,
            "losses": self.loss.spec.as_dict(), "final_losses": losses, "vgg": cfg.vgg_info,
            "git_rev": git_rev(), "elapsed_s": round(self.elapsed, 1),
            **({"init": self.init_record} if self.init_record else {}),
        }

    def save_checkpoint(self, losses: dict[str, float]) -> None:
        """Rank 0: the resumable state first, then the generator, then the log (each atomic)."""
        if not self.dist.is_main:
            return
        cfg = self.cfg
        save_state(state_path(self.out), {
            "step": self.step, "position": self.position, "elapsed": self.elapsed,
            "model": self._raw_state(), "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(), "rng": rng_state(),
            "config": {k: v for k, v in asdict(cfg).items() if k in _RESUME_KEYS}, "losses": losses,
        })
        dtype = None if cfg.save_dtype == "fp32" else DTYPES[cfg.save_dtype]
        styles = None if self.styles == 1 else self.base_entries + [
            {"name": n, "source": Path(p).name} for n, p in zip(cfg.style_names, cfg.style_paths)]
        checkpoint.save(self.model, self.out, style=self.names[0], styles=styles,
                        training=self.training_metadata(losses), dtype=dtype)
        if not cfg.finetune:  # the moments a later --init run continues with
            from .adam_state import adam_path, save_moments

            save_moments(self.optimizer, self.model, adam_path(self.out), self.names)
        self.log.flush()

    def _resume(self) -> None:
        cfg = self.cfg
        state = load_state(state_path(self.out))
        saved = state["config"]
        mine = {k: v for k, v in asdict(cfg).items() if k in _RESUME_KEYS}
        diff = [k for k in _RESUME_KEYS if k in saved and saved[k] != mine[k]]
        if diff:
            raise ValueError(f"--resume: {state_path(self.out)} was trained with different settings: "
                             + ", ".join(f"{k}={saved[k]!r} (now {mine[k]!r})" for k in diff))
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        self.step, self.position, self.elapsed = state["step"], state["position"], state["elapsed"]
        self.final_losses = state.get("losses", {})
        self.log = LossLog.resume(self.log.csv_path, self.log.plot_path, self.step, self.style_columns)

    # --------------------------------------------------------------------------------- samples

    def _sample_inputs(self) -> torch.Tensor | None:
        """Fixed inputs for sample grids: central crops of the first 4 content images (style mode)."""
        if self.texture:
            return None
        if not hasattr(self, "_samples"):
            from .data import ContentImages

            ds = ContentImages(self.files[:4], self.cfg.image_size, seed=self.cfg.seed, scale=(1.0, 1.0),
                               flip=False)
            self._samples = torch.stack([ds[i] for i in range(len(ds))]).float()
        return self._samples

    @torch.no_grad()
    def write_samples(self) -> Path | None:
        if not self.dist.is_main:
            return None
        from .common import save_image

        content = self._sample_inputs()
        self.model.eval()
        try:
            n = 4 if content is None else content.shape[0]
            if self.texture:
                s = self.cfg.image_size
                g = torch.Generator(device=self.device).manual_seed(self.cfg.seed)
                x = self.model.sample_noise(n, s, s, generator=g, device=self.device)
            else:
                content = content.to(self.device)
                x = content
                if getattr(self.model, "noise_channels", 0):
                    x = self.model.with_noise(content, generator=torch.Generator(self.device).manual_seed(0))
            with self._autocast():
                if self.styles == 1:
                    rows = [self.model(x).float()]
                else:  # one row per style
                    eye = torch.eye(self.styles, device=self.device)
                    rows = [self.model(x, eye[s].expand(x.shape[0], -1)).float() for s in range(self.styles)]
        finally:
            self.model.train()
        path = self._sibling(".samples") / f"{self.step:08d}.png"
        return save_image(path, sample_grid(content, *rows))


def _need_data(cfg: TrainConfig) -> str:
    if not cfg.data:
        raise ValueError("style mode needs --data DIR (a folder of content images)")
    return cfg.data


def train(cfg: TrainConfig, loss: PerceptualLoss) -> Trainer:
    """Build a Trainer, run it to cfg.iterations, tear down the process group; returns the trainer."""
    trainer = Trainer(cfg, loss)
    try:
        trainer.fit()
    finally:
        distributed.teardown(trainer.dist)
    return trainer
