"""What we are running on: device name and peak rates, software versions, git revision.

Peak rates are the vendor's dense (no 2:4 sparsity) figures. `fp16`/`bf16` are tensor-core rates with
fp32 accumulation; `tf32` is the tensor-core rate that cuDNN uses for fp32 convolutions when
`torch.backends.cudnn.allow_tf32` is on (PyTorch's default), so it is the honest peak for fp32 conv
rows (`fp32` is the plain CUDA-core rate). Bandwidth is peak DRAM (HBM/GDDR) GB/s.

Sources (checked 2026-11 with the project's search tool against datasheet reproductions):
- H100 SXM / PCIe: NVIDIA H100 datasheet (SXM: 1979 fp16 sparse = 989 dense, tf32 989 sparse = 495 dense,
  fp32 67, 3350 GB/s; PCIe: 1513 sparse = 756 dense, tf32 378, fp32 51, 2000 GB/s).
- H200: NVIDIA H200 datasheet: same compute as H100 SXM, 4.8 TB/s HBM3e.
- A100: NVIDIA A100 datasheet: fp16 312, tf32 156, fp32 19.5; 1555 GB/s (40 GB), 2039 GB/s (80 GB SXM).
- L4: NVIDIA L4 datasheet: fp16 242 sparse = 121 dense, tf32 120 sparse = 60 dense, fp32 30.3, 300 GB/s.
- RTX 4090: NVIDIA Ada (AD102) whitepaper: fp16 with fp32 accumulate 165 dense, tf32 82.6, fp32 82.6,
  1008 GB/s.
Anything else (including every CPU) has unknown peaks: null, and the bound/%-of-peak columns stay null.
"""
from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import subprocess
from importlib import metadata
from pathlib import Path

# (substrings that must all occur in the lower-cased device name, canonical name, peaks)
_GPU_PEAKS: list[tuple[tuple[str, ...], str, dict | None]] = [
    (("h200",), "NVIDIA H200", dict(fp16=989, bf16=989, tf32=495, fp32=67, gbps=4800)),
    (("h100", "nvl"), "NVIDIA H100 NVL", None),  # different clocks and memory: not in our sources, unknown
    (("h100", "pcie"), "NVIDIA H100 PCIe", dict(fp16=756, bf16=756, tf32=378, fp32=51, gbps=2000)),
    (("h100",), "NVIDIA H100 SXM", dict(fp16=989, bf16=989, tf32=495, fp32=67, gbps=3350)),
    (("a100", "80gb"), "NVIDIA A100 80GB", dict(fp16=312, bf16=312, tf32=156, fp32=19.5, gbps=2039)),
    (("a100",), "NVIDIA A100 40GB", dict(fp16=312, bf16=312, tf32=156, fp32=19.5, gbps=1555)),
    (("l4",), "NVIDIA L4", dict(fp16=121, bf16=121, tf32=60, fp32=30.3, gbps=300)),
    (("4090",), "NVIDIA GeForce RTX 4090", dict(fp16=165, bf16=165, tf32=82.6, fp32=82.6, gbps=1008)),
]


def lookup_peaks(name: str) -> dict | None:
    """Peak TFLOP/s per precision and GB/s for a known GPU name, else None."""
    low = name.lower()
    for keys, _, peaks in _GPU_PEAKS:
        if all(re.search(rf"(?<![a-z0-9]){re.escape(k)}(?![0-9])", low) for k in keys):
            return dict(peaks) if peaks else None
    return None


def peak_tflops_for(peaks: dict | None, precision: str) -> float | None:
    """The compute peak a run at `precision` can reach (fp32 convs run on TF32 tensor cores by default)."""
    if not peaks:
        return None
    return peaks["tf32"] if precision == "fp32" else peaks.get(precision)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def device_info(device) -> dict:
    """{"name", "kind", "peak_tflops" (per precision or null), "peak_gbps"} for a torch.device."""
    import torch

    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        name = props.name
        peaks = lookup_peaks(name)
        # the 40 GB and 80 GB A100 differ only in memory: tell them apart by the size the driver reports
        if peaks and "a100" in name.lower() and "80gb" not in name.lower() and props.total_memory > 60e9:
            peaks = lookup_peaks("a100 80gb")
        info = {"name": name, "kind": "cuda", "memory_gb": round(props.total_memory / 1e9, 1)}
    else:
        peaks = None
        info = {"name": cpu_name(), "kind": "cpu", "logical_cpus": os.cpu_count(), "isa": cpu_isa()}
    info["peak_tflops"] = {k: v for k, v in peaks.items() if k != "gbps"} if peaks else None
    info["peak_gbps"] = peaks["gbps"] if peaks else None
    return info


def cpu_isa() -> list[str]:
    """The CPU's vector/matrix extensions that decide CPU speed per precision (from /proc/cpuinfo)."""
    from instyle.cpu import isa

    return list(isa())


def slug(name: str) -> str:
    """A file-name-safe short form of a device name: 'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3'."""
    name = re.sub(r"\((r|tm)\)", "", name.split(" (")[0], flags=re.IGNORECASE)
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:48] or "device"


def _dist_version(*names: str) -> str | None:
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def _nvidia_driver() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def versions() -> dict:
    """Versions of everything that changes the numbers (packages read from metadata, not imported)."""
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": _dist_version("triton", "pytorch-triton"),
        "onnxruntime": _dist_version("onnxruntime", "onnxruntime-gpu"),
        "tensorrt": _dist_version("tensorrt", "tensorrt-cu12", "tensorrt-cu13"),
        "openvino": _dist_version("openvino"),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
        "driver": _nvidia_driver() if torch.cuda.is_available() else None,
        "platform": platform.platform(),
    }


def git_rev(root: Path | None = None) -> str | None:
    """HEAD's short hash, with '-dirty' when tracked files differ from it; None outside a checkout."""
    root = root or Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=10)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--"], cwd=root, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return rev.stdout.strip() + ("-dirty" if dirty.returncode == 1 else "")


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")

