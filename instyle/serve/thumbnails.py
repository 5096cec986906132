"""One swatch per style: a small synthetic picture (sky, hills, a sun: smooth gradients and edges, the things a
style repaints most visibly) stylized by that style, so the page shows what each style does to a photo. Drawn
once at start-up on an fp32 eager copy of the model on the CPU: the serving backend's warm state is untouched."""
from __future__ import annotations

SIDE = 96


def swatch(side: int = SIDE):
    """A side x side RGB uint8 array."""
    import numpy as np

    y, x = np.mgrid[0:side, 0:side].astype(np.float32) / side
    sky = np.stack([90 + 120 * y, 140 + 80 * y, 230 - 40 * y], axis=-1)
    hill = y > 0.62 + 0.12 * np.sin(6.0 * x)
    ground = np.stack([60 + 60 * x, 130 - 40 * y, 50 + 0 * x], axis=-1)
    sun = (x - 0.72) ** 2 + (y - 0.28) ** 2 < 0.018
    img = np.where(hill[..., None], ground, sky)
    img[sun] = (250, 210, 80)
    return img.clip(0, 255).astype(np.uint8)


def render(stylizer) -> dict[str, bytes]:
    """{style name: PNG bytes} for every style of `stylizer`'s model."""
    import copy
    import io as stdio

    import torch
    from PIL import Image

    from instyle.engine.stylizer import Stylizer
    from instyle.serve.options import style_names

    source = stylizer.source if stylizer.source is not None else stylizer.model
    eager = Stylizer(copy.deepcopy(source).float().cpu(), backend="eager", precision="fp32", device="cpu",
                     metadata=stylizer.metadata, tile="off")
    names = style_names(eager)
    x = torch.from_numpy(swatch()).permute(2, 0, 1).float()[None].expand(len(names), -1, -1, -1)
    weights = torch.eye(len(names)) if eager.source is not None else None
    out = eager(x, style_weights=weights).clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    pngs = {}
    for name, rgb in zip(names, out):
        buffer = stdio.BytesIO()
        Image.fromarray(rgb).save(buffer, format="PNG")
        pngs[name] = buffer.getvalue()
    return pngs
