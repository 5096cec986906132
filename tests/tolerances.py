"""How the tests compare a result with its reference, and what they print when it is off.

Derived tolerances (flash-attention style): a result computed at low precision must satisfy
    max|result - ref| <= factor * max|lowp - ref| + atol[dtype] * max(1, max|ref|)      (factor 2)
where ref is the exact-as-possible reference (fp32, or float64) and lowp is a plain-PyTorch run that
rounds where a low-precision pipeline must round: the result may cost at most a small factor of what
PyTorch's own rounding costs. `atol` scales with the output's magnitude, so it is relative above 1.
"""
import pytest
import torch

ATOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def assert_derived_close(name, result, ref, lowp, dtype, *, atol=ATOL, factor=2.0, cap=None):
    """max|result - ref| <= factor * max|lowp - ref| + atol[dtype] * max(1, max|ref|) (and <= cap, if
    given); lowp None: atol alone. Differences are taken in float32, or float64 where an input is float64.
    Fails with the five worst elements."""
    assert result.shape == ref.shape, f"{name}: shape {tuple(result.shape)} != {tuple(ref.shape)}"
    if result.numel() == 0:
        return
    work = torch.float64 if torch.float64 in (result.dtype, ref.dtype) else torch.float32
    result, ref = result.detach().to(work), ref.detach().to(work)
    lowp = None if lowp is None else lowp.detach().to(work)
    err = (result - ref).abs()
    base = 0.0 if lowp is None else (lowp - ref).abs().max().item()
    tol = factor * base + atol[dtype] * max(1.0, ref.abs().max().item())
    tol = tol if cap is None else min(tol, cap)
    max_err = err.max().item()
    if not max_err <= tol:  # also catches NaN
        flat = torch.nan_to_num(err, nan=float("inf")).flatten()
        lines = []
        for i in flat.topk(min(5, flat.numel())).indices.tolist():
            idx = tuple(int(v) for v in torch.unravel_index(torch.tensor(i), err.shape))
            lines.append(f"  at {idx}: result {result[idx].item():.6g}  ref {ref[idx].item():.6g}"
                         + ("" if lowp is None else f"  lowp {lowp[idx].item():.6g}"))
        rule = f"{factor:g} * lowp err {base:.4g} + atol {atol[dtype]:g} * scale"
        rule += "" if cap is None else f", at most {cap:g}"
        pytest.fail(f"{name} ({dtype}): max|result - ref| = {max_err:.4g} > tol {tol:.4g} ({rule})\n"
                    + "\n".join(lines))


def worst(y, ref) -> str:
    """Where y and ref differ most: for the message of an assertion on |y - ref|."""
    d = (y.float() - ref.float()).abs()
    i = int(d.argmax())
    return f"max |delta| {d.max().item():.3g} at flat index {i}: {y.flatten()[i].item()} vs {ref.flatten()[i].item()}"


def assert_close(y, ref, atol):
    """max|y - ref| <= atol (absolute), reporting the worst element."""
    assert (y.float() - ref.float()).abs().max() <= atol, f"{worst(y, ref)} > {atol}"
