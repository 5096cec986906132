"""Training data: a folder of content photos, random resized crops, a resumable deterministic sample stream.

Determinism without depending on worker scheduling: the sampler yields *codes* (epoch * n + index) and
every random choice for a sample (crop box, flip) is drawn from a generator seeded by (seed, code), so a
sample is the same whichever worker decodes it. The stream of codes is a fixed function of (seed, n):
epoch e is a permutation seeded by (seed, e). Position p in the global stream is where training stands;
rank r of a world of w takes positions p+r, p+r+w, ... (the DDP shard), so resuming at p reproduces the
exact remainder of the run, and a resume on a different world size still continues from the same place.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from instyle.io import IMAGE_EXTENSIONS, ImageError, read_image


def list_images(folder: str | os.PathLike, max_images: int | None = None, seed: int = 0) -> list[Path]:
    """Image files under `folder` (recursive, sorted); `max_images` picks a seeded random subset."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: no such data folder")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise ValueError(f"{folder}: no image files found (extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})")
    if max_images is not None and max_images < len(files):
        if max_images < 1:
            raise ValueError(f"--max-images must be >= 1, got {max_images}")
        keep = np.random.default_rng([seed, 0x5EB5E7]).permutation(len(files))[:max_images]
        files = [files[i] for i in sorted(keep)]
    return files


def crop_box(w: int, h: int, rng: np.random.Generator, scale: tuple[float, float] = (0.25, 1.0),
             ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """A random box (left, top, right, bottom) covering `scale` of the area with aspect in `ratio`
    (torchvision's RandomResizedCrop rule, drawn from `rng`)."""
    area = w * h
    for _ in range(10):
        a = area * rng.uniform(*scale)
        r = float(np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1]))))
        cw, ch = round((a * r) ** 0.5), round((a / r) ** 0.5)
        if 0 < cw <= w and 0 < ch <= h:
            left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            return left, top, left + cw, top + ch
    side = min(w, h)  # fallback: the central square
    left, top = (w - side) // 2, (h - side) // 2
    return left, top, left + side, top + side


class ContentImages(Dataset):
    """Item `code` (from `StreamSampler`) -> uint8 tensor 3 x size x size: a random resized crop, maybe flipped."""

    def __init__(self, files: list[Path], size: int = 256, seed: int = 0, scale: tuple[float, float] = (0.25, 1.0),
                 flip: bool = True):
        self.files, self.size, self.seed, self.scale, self.flip = list(files), size, seed, scale, flip

    def __len__(self) -> int:
        return len(self.files)

    def _open(self, index: int) -> Image.Image:
        # a file that fails to decode is replaced by the next one (deterministically), not fatal mid-run
        for k in range(min(len(self.files), 16)):
            path = self.files[(index + k) % len(self.files)]
            try:
                pic = read_image(path)
            except ImageError as e:
                if k == 0:
                    import warnings

                    warnings.warn(f"skipping unreadable training image: {e}", stacklevel=2)
                continue
            rgb = pic.rgb if pic.rgb.dtype == np.uint8 else np.clip(np.rint(pic.rgb), 0, 255).astype(np.uint8)
            return Image.fromarray(rgb, "RGB")
        raise ValueError(f"16 training images in a row failed to decode near {self.files[index]}")

    def __getitem__(self, code: int) -> torch.Tensor:
        epoch, index = divmod(int(code), len(self.files))
        rng = np.random.default_rng([self.seed, epoch, index])
        img = self._open(index)
        box = crop_box(*img.size, rng, self.scale)
        img = img.resize((self.size, self.size), Image.Resampling.BILINEAR, box=box, reducing_gap=3.0)
        if self.flip and rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)


class StreamSampler(Sampler[int]):
    """Endless stream of sample codes from global position `start`, this rank's shard of it."""

    def __init__(self, n: int, seed: int = 0, start: int = 0, rank: int = 0, world_size: int = 1):
        assert 0 <= rank < world_size and n > 0
        self.n, self.seed, self.start, self.rank, self.world_size = n, seed, start, rank, world_size

    def permutation(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n, generator=g)

    def __iter__(self) -> Iterator[int]:
        pos = self.start + self.rank
        epoch, perm = -1, None
        while True:
            e, i = divmod(pos, self.n)
            if e != epoch:
                epoch, perm = e, self.permutation(e)
            yield e * self.n + int(perm[i])
            pos += self.world_size


def make_loader(files: list[Path], *, size: int, batch_size: int, seed: int, start: int = 0, rank: int = 0,
                world_size: int = 1, workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """Batches (uint8, B x 3 x size x size) of this rank's shard from global sample position `start`."""
    sampler = StreamSampler(len(files), seed=seed, start=start, rank=rank, world_size=world_size)
    return DataLoader(ContentImages(files, size, seed), batch_size=batch_size, sampler=sampler,
                      num_workers=workers, pin_memory=pin_memory, drop_last=True,
                      persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None)
