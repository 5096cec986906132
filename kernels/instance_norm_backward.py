"""Backward of the fused instance norm y = act(xhat * w + b) + r, xhat = (x - mean) * rstd.

With g = dy * [xhat * w + b > 0] (the ReLU mask, recomputed from x and the saved statistics; g = dy
without ReLU) and per-plane sums Sg = sum(g), Sgx = sum(g * xhat) over H*W:
    dr = dy,   db = sum_n Sg,   dw = sum_n Sgx   (per-sample [N, C] affine: db = Sg, dw = Sgx),
    dx = rstd * w * (g - Sg / HW - xhat * Sgx / HW).
Two passes over (x, dy) -- sums, then dx -- plus one write of dx: three tensor-sized passes where
autograd of the unfused ops spends about eight (residual add, ReLU mask, affine, normalize backward).
Same tiling and paths as the forward (instance_norm_forward.py): small planes in one program per (n, channel
block); large planes split into spatial chunks, partial sums per chunk, summed per plane in PyTorch
(tiny N*C x chunks tensors), then a dx pass over the same chunks. Sums accumulate in fp32.

This file also registers the autograd formula of instyle::instance_norm.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from .instance_norm_forward import (
    _plane_block,
    _plane_shift,
    _saved_affine,
    _split_program,
    affine_args,
    check_device,
    instance_norm_op,
    memory_format,
    plan,
    plane_strides,
)


@triton.jit
def _chunk_grad_sums(dy_ptr, x_ptr, dy_base, x_base, c, c_mask, shift, mean, rstd, scale, b, hw_start, hw_end,
                     stride_dyc, stride_dyhw, stride_xc, stride_xhw,
                     APPLY_RELU: tl.constexpr, BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr):
    """Per channel in c: Sg = sum(g), Sgx = sum(g * xhat) over spatial positions [hw_start, hw_end)."""
    sg = tl.zeros([BLOCK_C], dtype=tl.float32)
    sgx = tl.zeros([BLOCK_C], dtype=tl.float32)
    for start in range(hw_start, hw_end, BLOCK_HW):
        hw = (start + tl.arange(0, BLOCK_HW)).to(tl.int64)
        mask = (hw < hw_end)[:, None] & c_mask[None, :]
        # x and dy tiles [BLOCK_HW, BLOCK_C], each with its own (channel, flattened H*W) strides
        x = tl.load(x_ptr + x_base + hw[:, None] * stride_xhw + c[None, :] * stride_xc, mask=mask, other=0.0)
        dy = tl.load(dy_ptr + dy_base + hw[:, None] * stride_dyhw + c[None, :] * stride_dyc, mask=mask, other=0.0)
        xc = tl.where(mask, (x.to(tl.float32) - shift[None, :]) - mean[None, :], 0.0)  # dead lanes: 0
        g = tl.where(mask, dy.to(tl.float32), 0.0)
        if APPLY_RELU:  # same expression as the forward, so the mask matches it bit for bit
            g = tl.where(xc * scale[None, :] + b[None, :] > 0.0, g, 0.0)
        sg += tl.sum(g, axis=0)
        sgx += tl.sum(g * (xc * rstd[None, :]), axis=0)
    return sg, sgx


@triton.jit
def _chunk_dx(dy_ptr, x_ptr, dx_ptr, dy_base, x_base, dx_base, c, c_mask, shift, mean, rstd, scale, b, c1, c2,
              hw_start, hw_end, stride_dyc, stride_dyhw, stride_xc, stride_xhw, stride_dxc, stride_dxhw,
              APPLY_RELU: tl.constexpr, BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr):
    """dx = scale * (g - c1 - xhat * c2) with scale = rstd * w, c1 = Sg / HW, c2 = Sgx / HW."""
    for start in range(hw_start, hw_end, BLOCK_HW):
        hw = (start + tl.arange(0, BLOCK_HW)).to(tl.int64)
        mask = (hw < hw_end)[:, None] & c_mask[None, :]
        x = tl.load(x_ptr + x_base + hw[:, None] * stride_xhw + c[None, :] * stride_xc, mask=mask, other=0.0)
        dy = tl.load(dy_ptr + dy_base + hw[:, None] * stride_dyhw + c[None, :] * stride_dyc, mask=mask, other=0.0)
        xc = tl.where(mask, (x.to(tl.float32) - shift[None, :]) - mean[None, :], 0.0)  # dead lanes: 0
        g = tl.where(mask, dy.to(tl.float32), 0.0)
        if APPLY_RELU:
            g = tl.where(xc * scale[None, :] + b[None, :] > 0.0, g, 0.0)
        dx = scale[None, :] * (g - c1[None, :] - (xc * rstd[None, :]) * c2[None, :])
        # dx tile, with dx's own strides (dx has x's memory format)
        tl.store(dx_ptr + dx_base + hw[:, None] * stride_dxhw + c[None, :] * stride_dxc,
                 dx.to(dx_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _in_bwd_fused_kernel(
    dy_ptr, x_ptr, w_ptr, b_ptr, dx_ptr,  # dy, x, weight[C], bias[C] (ReLU mask only), dx out
    mean_ptr, rstd_ptr,                   # fp32 [N*C] forward statistics (mean of x - shift)
    sg_ptr, sgx_ptr,                      # fp32 [N*C] out: Sg, Sgx per plane (for db, dw)
    C, HW,
    stride_wn,                            # weight/bias batch stride: 0 (shared [C]) or C (per sample)
    stride_dyn, stride_dyc, stride_dyhw,  # dy strides: batch, channel, flattened H*W
    stride_xn, stride_xc, stride_xhw,     # x strides
    stride_dxn, stride_dxc, stride_dxhw,  # dx strides
    HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, APPLY_RELU: tl.constexpr,
    BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Small planes: one program per (n, channel block) reduces Sg, Sgx, then writes dx."""
    pb = tl.program_id(0).to(tl.int64)
    n, c, c_mask = _plane_block(pb, C, BLOCK_C)
    x_base = n * stride_xn
    shift = _plane_shift(x_ptr, x_base, c, c_mask, stride_xc)
    mean, rstd, scale, b = _saved_affine(mean_ptr, rstd_ptr, w_ptr, b_ptr, n, C, c, c_mask, stride_wn,
                                         HAS_WEIGHT, HAS_BIAS)
    sg, sgx = _chunk_grad_sums(dy_ptr, x_ptr, n * stride_dyn, x_base, c, c_mask, shift, mean, rstd, scale, b, 0, HW,
                               stride_dyc, stride_dyhw, stride_xc, stride_xhw, APPLY_RELU, BLOCK_HW, BLOCK_C)
    tl.store(sg_ptr + n * C + c, sg, mask=c_mask)
    tl.store(sgx_ptr + n * C + c, sgx, mask=c_mask)
    _chunk_dx(dy_ptr, x_ptr, dx_ptr, n * stride_dyn, x_base, n * stride_dxn, c, c_mask, shift, mean, rstd, scale, b,
              sg / HW, sgx / HW, 0, HW, stride_dyc, stride_dyhw, stride_xc, stride_xhw, stride_dxc, stride_dxhw,
              APPLY_RELU, BLOCK_HW, BLOCK_C)


@triton.jit
def _in_bwd_partial_sums_kernel(
    dy_ptr, x_ptr, w_ptr, b_ptr,          # as in _in_bwd_fused_kernel
    mean_ptr, rstd_ptr,                   # fp32 [N*C] forward statistics
    psg_ptr, psgx_ptr,                    # fp32 [N*C, NUM_CHUNKS] out: per-chunk Sg, Sgx
    C, HW, NUM_CHUNKS,
    stride_wn,                            # weight/bias batch stride: 0 or C
    stride_dyn, stride_dyc, stride_dyhw,  # dy strides
    stride_xn, stride_xc, stride_xhw,     # x strides
    HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, APPLY_RELU: tl.constexpr,
    CHUNK_HW: tl.constexpr, BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Split pass 1: one program per (n, channel block, spatial chunk)."""
    n, c, c_mask, hw_start, hw_end = _split_program(C, HW, NUM_CHUNKS, CHUNK_HW, BLOCK_C)
    x_base = n * stride_xn
    shift = _plane_shift(x_ptr, x_base, c, c_mask, stride_xc)
    mean, rstd, scale, b = _saved_affine(mean_ptr, rstd_ptr, w_ptr, b_ptr, n, C, c, c_mask, stride_wn,
                                         HAS_WEIGHT, HAS_BIAS)
    sg, sgx = _chunk_grad_sums(dy_ptr, x_ptr, n * stride_dyn, x_base, c, c_mask, shift, mean, rstd, scale, b,
                               hw_start, hw_end, stride_dyc, stride_dyhw, stride_xc, stride_xhw,
                               APPLY_RELU, BLOCK_HW, BLOCK_C)
    out = (n * C + c) * NUM_CHUNKS + hw_start // CHUNK_HW
    tl.store(psg_ptr + out, sg, mask=c_mask)
    tl.store(psgx_ptr + out, sgx, mask=c_mask)


@triton.jit
def _in_bwd_dx_kernel(
    dy_ptr, x_ptr, w_ptr, b_ptr, dx_ptr,  # as in _in_bwd_fused_kernel
    mean_ptr, rstd_ptr,                   # fp32 [N*C] forward statistics
    sg_ptr, sgx_ptr,                      # fp32 [N*C] in: per-plane Sg, Sgx
    C, HW, NUM_CHUNKS,
    stride_wn,                            # weight/bias batch stride: 0 or C
    stride_dyn, stride_dyc, stride_dyhw,  # dy strides
    stride_xn, stride_xc, stride_xhw,     # x strides
    stride_dxn, stride_dxc, stride_dxhw,  # dx strides
    HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, APPLY_RELU: tl.constexpr,
    CHUNK_HW: tl.constexpr, BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Split pass 2: one program per (n, channel block, spatial chunk) writes its part of dx."""
    n, c, c_mask, hw_start, hw_end = _split_program(C, HW, NUM_CHUNKS, CHUNK_HW, BLOCK_C)
    x_base = n * stride_xn
    shift = _plane_shift(x_ptr, x_base, c, c_mask, stride_xc)
    mean, rstd, scale, b = _saved_affine(mean_ptr, rstd_ptr, w_ptr, b_ptr, n, C, c, c_mask, stride_wn,
                                         HAS_WEIGHT, HAS_BIAS)
    c1 = tl.load(sg_ptr + n * C + c, mask=c_mask, other=0.0) / HW
    c2 = tl.load(sgx_ptr + n * C + c, mask=c_mask, other=0.0) / HW
    _chunk_dx(dy_ptr, x_ptr, dx_ptr, n * stride_dyn, x_base, n * stride_dxn, c, c_mask, shift, mean, rstd, scale, b,
              c1, c2, hw_start, hw_end, stride_dyc, stride_dyhw, stride_xc, stride_xhw, stride_dxc, stride_dxhw,
              APPLY_RELU, BLOCK_HW, BLOCK_C)


def _backward(dy, x, weight, bias, mean, rstd, relu: bool):
    """Launch the backward kernels. Returns dx (x's memory format) and fp32 N x C sums Sg, Sgx."""
    check_device(x)
    N, C, H, W = x.shape
    HW = H * W
    fmt = memory_format(x)
    dx = torch.empty_like(x, memory_format=fmt)
    if x.numel() == 0:
        zeros = torch.zeros((N, C), device=x.device, dtype=torch.float32)
        return dx, zeros, zeros.clone()
    x, sx = plane_strides(x, fmt)
    dy, sdy = plane_strides(dy, fmt)
    _, sdx = plane_strides(dx, fmt)
    w, b, stride_wn = affine_args(x, weight, bias)
    p = plan(C, HW, channels_last=(sx[1] == 1 and C > 1 and HW > 1))
    flags = dict(HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None, APPLY_RELU=relu)
    planes = N * triton.cdiv(C, p.block_c)
    if not p.split:
        sg = torch.empty((N, C), device=x.device, dtype=torch.float32)
        sgx = torch.empty_like(sg)
        # grid: one program per (n, channel block), as the fused forward
        _in_bwd_fused_kernel[(planes,)](
            dy, x, w, b, dx, mean, rstd, sg, sgx, C, HW, stride_wn, *sdy, *sx, *sdx, **flags,
            BLOCK_HW=p.block_hw, BLOCK_C=p.block_c, num_warps=p.num_warps)
        return dx, sg, sgx
    # grid: one program per (n, channel block, spatial chunk) for the partial sums and for dx
    psg = torch.empty((N * C, p.num_chunks), device=x.device, dtype=torch.float32)
    psgx = torch.empty_like(psg)
    grid = (planes * p.num_chunks,)
    _in_bwd_partial_sums_kernel[grid](
        dy, x, w, b, mean, rstd, psg, psgx, C, HW, p.num_chunks, stride_wn, *sdy, *sx, **flags,
        CHUNK_HW=p.chunk_hw, BLOCK_HW=p.block_hw, BLOCK_C=p.block_c, num_warps=p.num_warps)
    sg, sgx = psg.sum(dim=1).view(N, C), psgx.sum(dim=1).view(N, C)
    _in_bwd_dx_kernel[grid](
        dy, x, w, b, dx, mean, rstd, sg, sgx, C, HW, p.num_chunks, stride_wn, *sdy, *sx, *sdx, **flags,
        CHUNK_HW=p.chunk_hw, BLOCK_HW=p.block_hw, BLOCK_C=p.block_c, num_warps=p.num_warps)
    return dx, sg, sgx


@torch.library.custom_op("instyle::instance_norm_backward", mutates_args=())
def instance_norm_backward_op(dy: torch.Tensor, x: torch.Tensor, weight: Optional[torch.Tensor],
                              bias: Optional[torch.Tensor], mean: torch.Tensor, rstd: torch.Tensor, relu: bool
                              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _backward(dy, x, weight, bias, mean, rstd, relu)


@instance_norm_backward_op.register_fake
def _(dy, x, weight, bias, mean, rstd, relu):
    return torch.empty_like(x, memory_format=memory_format(x)), torch.empty_like(mean), torch.empty_like(mean)


def _setup_context(ctx, inputs, output):
    x, weight, bias, residual, eps, relu = inputs
    _, mean, rstd = output
    ctx.save_for_backward(x, weight, bias, mean, rstd)
    ctx.relu = relu
    ctx.has_residual = residual is not None
    ctx.mark_non_differentiable(mean, rstd)


def _instance_norm_grad(ctx, dy, _dmean, _drstd):
    x, weight, bias, mean, rstd = ctx.saved_tensors
    dx, sg, sgx = instance_norm_backward_op(dy, x, weight, bias, mean, rstd, ctx.relu)
    # shared [C] affine: sum the per-plane sums over the batch; per-sample [N, C]: one per plane
    dw = (sgx if weight.dim() == 2 else sgx.sum(0)).to(weight.dtype) if weight is not None else None
    db = (sg if bias.dim() == 2 else sg.sum(0)).to(bias.dtype) if bias is not None else None
    dr = dy if ctx.has_residual else None
    return dx, dw, db, dr, None, None


instance_norm_op.register_autograd(_instance_norm_grad, setup_context=_setup_context)
