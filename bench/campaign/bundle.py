"""`campaign --bundle`: what must travel to the GPU machine beside the source tree, in one ignored folder.

The GPU machine gets the repository's tracked and untracked-not-ignored files plus the paths a call
names in `carry`; nothing from ../shared, and no network. The bundle (default `.bundle/`, git-ignored)
holds:
  data/       the shared data the stages and the GPU tests read, in shared/data's layout (INSTYLE_DATA):
              the device bundle's fp16 VGG (to relu4_3), 300 training photos, 11 styles; the demo photos;
              the random TransformerNet the GPU tests load
  wheels/     Python 3.12 manylinux wheels of what the project imports and the GPU image lacks
  run.sh      the GPU machine's entry: installs the wheels, makes `instyle` importable, runs a stage,
              and packs its folder into $OUT (the device returns at most 8 files)
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

LIMIT_MIB = 60
# The most one file the device returns may hold (16 MiB, with a margin): run.sh packs each run into one archive,
# text files only when the whole would be larger. The zoo's Adam moments must fit it (a test checks).
RETURNED_FILE_BYTES = 16_000_000
# (bundle path, path under the shared data folder)
DATA = [
    ("data/vgg/vgg16-features-relu4_3-fp16.safetensors", "device-bundle/vgg16-features-relu4_3-fp16.safetensors"),
    ("data/content/train", "device-bundle/content"),
    ("data/styles", "device-bundle/styles"),
    ("data/content/demo", "content/demo"),
    ("data/pretrained/random-transformernet.pth", "pretrained/random-transformernet.pth"),
]
# imported by the project, absent from the GPU image (its package list, device tool's KINDS.md)
DEVICE_MISSING = ["pypng"]
WHEEL_PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
                   "manylinux2014_x86_64", "manylinux1_x86_64"]

RUN_SH = r"""#!/usr/bin/env bash
# The GPU machine's entry, from the repository root:  bash .bundle/run.sh zoo|verify [campaign options]
# RUN_NAME=NAME puts a run's results in runs/NAME and $OUT/NAME.tgz (default: the stage's name)
# Written by `python -m instyle.bench.campaign --bundle`; results land in runs/<stage>/ and, packed, in $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
B=.bundle
# setup once per machine, under a lock: two stages may start side by side (RUN_NAME tells their outputs apart)
exec 9>/tmp/instyle-setup.lock && flock 9
if [ ! -e /tmp/instyle-src/.ready ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        $B/wheels/*.whl || exit 1
    # instyle's package-dir layout (pyproject.toml) without an install: a folder of symbolic links
    rm -rf /tmp/instyle-src && mkdir -p /tmp/instyle-src/instyle
    for f in instyle/*; do ln -s "$PWD/$f" /tmp/instyle-src/instyle/; done
    for d in models kernels engine export train bench; do ln -s "$PWD/$d" /tmp/instyle-src/instyle/$d; done
    touch /tmp/instyle-src/.ready
fi
flock -u 9
# PYTHONSAFEPATH: the repository root (the cwd) must not shadow the linked package with its bare instyle/
export PYTHONPATH=/tmp/site:/tmp/instyle-src INSTYLE_DATA="$PWD/$B/data" PYTHONUNBUFFERED=1 PYTHONSAFEPATH=1
export TRITON_CACHE_DIR=/tmp/triton-cache INSTYLE_CACHE=/tmp/instyle-cache
mkdir -p runs
stage="$1"; shift
name="${RUN_NAME:-$stage}"
python3 -m instyle.bench.campaign --stage "$stage" --out "runs/$name" "$@" 2>&1 | tee "runs/$name.log"
rc=${PIPESTATUS[0]}
if [ -n "${OUT:-}" ]; then
    # $OUT returns at most 8 files of 16 MiB: one archive per run, without the training state, the photo links
    # and all but the last sample grid
    last=$(ls runs/"$name"/train/*.samples/*.png 2>/dev/null | tail -1)
    [ -n "$last" ] && cp "$last" "runs/$name/train/last-sample.png"
    packed=("$name" "$name.log")
    # the zoo again, in case its reply was lost (once it has finished: its summary names the pictures step)
    [ "$stage" != zoo ] && grep -qs zoo.pictures runs/zoo/summary.json && packed+=(zoo)
    tar czf "$OUT/$name.tgz" --exclude="*.state.pt" --exclude="*.samples" --exclude="train-photos" \
        -C runs "${packed[@]}"
    if [ "$(stat -c %s "$OUT/$name.tgz")" -gt @RETURNED_FILE_BYTES@ ]; then
        echo "run.sh: $name.tgz is over 16 MiB, the most a returned file may hold: packing text files only" >&2
        (cd runs && find "${packed[@]}" \( -name "*.json" -o -name "*.log" -o -name "*.csv" -o -name "*.txt" \)) \
            | tar czf "$OUT/$name.tgz" -C runs -T -
    fi
    cp "runs/$name/summary.json" "$OUT/$name-summary.json" 2>/dev/null
fi
exit $rc
"""


def _copy(src: Path, dst: Path) -> None:
    if dst.exists():
        shutil.rmtree(dst) if dst.is_dir() else dst.unlink()
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, dst)
    else:
        shutil.copy2(src, dst)


def fetch_wheels(folder: Path, names: list[str]) -> list[Path]:
    """Download the installed version of each package as a py3.12 manylinux (or pure) wheel."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.whl"):
        old.unlink()
    for name in names:
        version = metadata.version(name)
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
               "--python-version", "3.12", "--implementation", "cp", "-d", str(folder), f"{name}=={version}"]
        for plat in WHEEL_PLATFORMS:
            cmd += ["--platform", plat]
        subprocess.run(cmd, check=True)
    return sorted(folder.glob("*.whl"))


def tree_bytes(root: Path) -> int:
    """Bytes of what the device tool sends: tracked and untracked-not-ignored files."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                         capture_output=True, check=True).stdout
    return sum((root / p).stat().st_size for p in out.decode().split("\0") if p and (root / p).is_file())


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def build(bundle: Path, data: Path, root: Path, *, wheels: bool = True) -> dict:
    """Assemble the bundle; returns its manifest (sizes in MiB, the device command lines)."""
    missing = [src for _, src in DATA if not (data / src).exists()]
    if missing:
        raise FileNotFoundError(f"{data}: missing {', '.join(missing)} (set INSTYLE_DATA to the shared data folder)")
    for dst, src in DATA:
        _copy(data / src, bundle / dst)
    wheel_files = fetch_wheels(bundle / "wheels", DEVICE_MISSING) if wheels else []
    (bundle / "run.sh").write_text(RUN_SH.replace("@RETURNED_FILE_BYTES@", str(RETURNED_FILE_BYTES)))
    size = (tree_bytes(root) + folder_bytes(bundle)) / 2**20
    if size > LIMIT_MIB:
        raise ValueError(f"the tree and {bundle} come to {size:.1f} MiB, over the {LIMIT_MIB} MiB budget")
    carry = bundle.relative_to(root).as_posix() if bundle.is_relative_to(root) else str(bundle)
    return {
        "bundle": str(bundle), "mib_with_tree": round(size, 1), "wheels": [p.name for p in wheel_files],
        "carry": [carry],
        "commands": [f"bash {carry}/run.sh zoo", f"bash {carry}/run.sh verify"],
    }
