"""The int8 OpenVINO model shipped with the zoo: instyle/zoo/<file>.int8.xml + .int8.bin (IR) + .int8.json.

`instyle quantize --ship` builds it from a shipped multi-style file (export/ov_quant.py `ship`): the one network
with `style_weights` as an input, quantized once by NNCF with calibration crops over every style, gated per style
against eager fp32, written as OpenVINO IR. The sidecar records what it was built from -- the zoo file's sha256 and
a digest of its weights -- the IR files' sha256, the recipe, the versions and the gate report.

`find(model)` is what the openvino backend asks: the shipped IR whose weights digest is `model`'s and whose gate
passed, its files intact. A zoo file whose weights changed after the IR was built (stale) or whose IR is missing
gets a one-line note instead, and `auto` runs bf16/fp32. Reading it needs openvino only, never nncf.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from .cache import sha256_file, weights_digest

FORMAT = "1"
REBUILD = "instyle quantize --ship"


@dataclass(frozen=True)
class Shipped:
    xml: Path
    meta: dict

    @property
    def ir_sha256(self) -> str:
        return f"{self.meta['xml_sha256']}:{self.meta['bin_sha256']}"


def files(zoo_file: Path) -> tuple[Path, Path, Path]:
    """(IR xml, IR weights, sidecar) beside a shipped .safetensors file."""
    stem = zoo_file.with_suffix("")
    return tuple(Path(f"{stem}.int8{ext}") for ext in (".xml", ".bin", ".json"))  # type: ignore[return-value]


def sidecar(zoo_file: Path) -> dict | None:
    path = files(zoo_file)[2]
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None


def problems(zoo_file: Path) -> list[str]:
    """Why the IR shipped beside `zoo_file` cannot be used: missing, stale (built from other weights), damaged,
    or failed its gate. Empty when it is good."""
    meta = sidecar(zoo_file)
    if meta is None:
        return [f"no int8 model shipped beside {zoo_file.name} (build it with `{REBUILD}`)"]
    out = []
    if meta.get("zoo_sha256") != sha256_file(zoo_file):
        out.append(f"the shipped int8 model was built from other weights than {zoo_file.name}'s (stale: "
                   f"rebuild it with `{REBUILD}`)")
    xml, bin_, _ = files(zoo_file)
    if not _intact(xml, bin_, meta.get("xml_sha256"), meta.get("bin_sha256")):
        out.append(f"the shipped int8 model beside {zoo_file.name} is missing or damaged (rebuild it with `{REBUILD}`)")
    if not meta.get("gate", {}).get("passed"):
        out.append(_failed_gate(zoo_file))
    return out


def _failed_gate(zoo_file: Path) -> str:
    return f"the shipped int8 model of {zoo_file.name} did not pass its quality gate"


@functools.lru_cache(maxsize=8)
def _intact_cached(xml: Path, bin_: Path, stamp: tuple, xml_sha: str | None, bin_sha: str | None) -> bool:
    return sha256_file(xml) == xml_sha and sha256_file(bin_) == bin_sha


def _intact(xml: Path, bin_: Path, xml_sha: str | None, bin_sha: str | None) -> bool:
    try:
        stamp = tuple((p.stat().st_size, p.stat().st_mtime_ns) for p in (xml, bin_))
    except OSError:
        return False
    return _intact_cached(xml, bin_, stamp, xml_sha, bin_sha)


@functools.lru_cache(maxsize=8)
def _zoo_digest(zoo_file: Path, stamp: tuple) -> str:
    from instyle import checkpoint

    return weights_digest(checkpoint.load(zoo_file)[0])


def find(model: nn.Module, *, failed_gate_ok: bool = False) -> tuple[Shipped | None, str | None]:
    """(the usable shipped int8 model of `model`, None) or (None, a one-line note when `model` is a shipped file's
    network whose int8 model is stale, missing or failed; None for any other model). `failed_gate_ok`: an intact,
    current model whose gate failed is usable too (an explicit `--precision int8`), with its note."""
    from instyle import checkpoint

    digest = weights_digest(model)
    for zoo_file in checkpoint.shipped().values():
        meta = sidecar(zoo_file)
        if meta is not None and meta.get("weights_digest") == digest:
            xml, bin_, _ = files(zoo_file)
            if meta.get("gate", {}).get("passed") and _intact(xml, bin_, meta.get("xml_sha256"),
                                                               meta.get("bin_sha256")):
                return Shipped(xml, meta), None
            found = problems(zoo_file)  # one pass over the files: staleness, damage, the gate
            if failed_gate_ok and found == [_failed_gate(zoo_file)]:
                return Shipped(xml, meta), found[0]
            return None, "; ".join(found)
        stat = zoo_file.stat()
        if _zoo_digest(zoo_file, (stat.st_size, stat.st_mtime_ns)) == digest:
            return None, "; ".join(problems(zoo_file)) or f"no usable int8 model shipped beside {zoo_file.name}"
    return None, None


def write(zoo_file: Path, ov_model, meta: dict) -> Shipped:
    """Save the quantized ov.Model as IR beside `zoo_file`, then its sidecar (what it was built from, `meta`)."""
    import openvino as ov

    from instyle.atomic import atomic_path

    xml, bin_, side = files(zoo_file)
    tmp_xml = xml.with_name(f".{xml.name}.tmp.xml")  # save_model writes the .bin beside the .xml it is given
    ov.save_model(ov_model, str(tmp_xml), compress_to_fp16=True)
    tmp_xml.with_suffix(".bin").replace(bin_)
    tmp_xml.replace(xml)  # the xml names its weights by offset, not by file name: renaming both is safe
    full = {"format": FORMAT, "zoo_file": zoo_file.name, "zoo_sha256": sha256_file(zoo_file),
            "xml_sha256": sha256_file(xml), "bin_sha256": sha256_file(bin_), **meta}
    with atomic_path(side) as tmp:
        tmp.write_text(json.dumps(full, indent=1) + "\n")
    return Shipped(xml, full)
