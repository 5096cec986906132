"""instyle: fast neural style transfer.

    stylizer = instyle.load("mosaic")        # -> instyle.engine.Stylizer
    out = stylizer(x)                         # N,3,H,W float 0..255 (or uint8) -> float 0..255
    img = stylizer.stylize_image(pil_image)   # PIL in, PIL out
"""
from instyle.version import __version__


def load(model=None, backend="auto", precision="auto", device="auto", **kwargs):
    """Load a generator (shipped style name, .safetensors / .pth path, or nn.Module) into a Stylizer."""
    from instyle.engine import load as _load

    return _load(model, backend=backend, precision=precision, device=device, **kwargs)


__all__ = ["__version__", "load"]
