"""The GPU campaign end to end on the CPU (--dry-run), its bundle, and the kernel census."""
import json
import os
import subprocess
import sys

import pytest
import torch

from instyle.bench.campaign import bundle as campaign_bundle
from instyle.bench.campaign import census

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory, data):
    """One dry run of both stages (tiny sizes, Triton interpreter), shared by the checks below."""
    out = tmp_path_factory.mktemp("campaign")
    env = dict(os.environ, TRITON_INTERPRET="1")
    res = subprocess.run([sys.executable, "-m", "instyle.bench.campaign", "--dry-run", "--out", str(out)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    return out, res


def test_dry_run_every_stage_ok(dry_run):
    out, res = dry_run
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    names = [s["name"] for s in summary["stages"]]
    assert names[:5] == ["zoo.train", "zoo.gate", "zoo.baseline", "zoo.ship", "zoo.pictures"]
    assert {"verify.env", "verify.tests", "verify.parity", "verify.bench", "verify.throughput", "verify.layers",
            "verify.modes", "verify.sweep", "verify.bench_compile"} <= set(names)
    assert all(s["status"] == "ok" for s in summary["stages"]), summary["stages"]
    plan = {p["stage"]: p for p in summary["device_plan"]}
    # the zoo trains with the fused IN (forward + backward kernels); verify runs the triton and fused backends
    assert plan["zoo"]["kernels"] >= 2 and plan["verify"]["kernels"] >= 10
    assert plan["zoo"]["estimate_s"] > 270 and plan["verify"]["estimate_s"] > 0
    assert plan["verify"]["fits_one_call"] and plan["verify"]["estimate_s"] <= 480
    # the zoo trains with the compiled step; its compiling is planned inside the training budget
    assert plan["zoo"]["compile_s"] > 0 and plan["zoo"]["train_s"] == 270 - plan["zoo"]["compile_s"]


def test_dry_run_files(dry_run):
    from instyle import checkpoint

    out, res = dry_run
    assert res.returncode == 0
    model, meta = checkpoint.load(out / "zoo" / "zoo" / "styles.safetensors")
    assert model.styles == 2 and checkpoint.style_names(meta) == ["candy", "mosaic"]
    assert all(v.dtype == torch.float16 for v in _tensors(out / "zoo" / "zoo" / "styles.safetensors"))
    gate = json.loads((out / "zoo" / "gate.json").read_text())
    assert set(gate["styles"]) == {"candy", "mosaic"}
    shipped_gate = json.loads((out / "zoo" / "gate-shipped.json").read_text())  # the baseline: same photos
    from instyle.paths import ZOO_DIR

    shipped_names = checkpoint.style_names(checkpoint.read_metadata(ZOO_DIR / "styles.safetensors"))
    assert shipped_gate["photos"] == gate["photos"] and list(shipped_gate["styles"]) == shipped_names
    for r in gate["styles"].values():  # figures, not flags only
        assert r["gram_ratio_median"] > 0 and r["content_median"] > 0
    zoo = json.loads((out / "zoo" / "summary.json").read_text())
    assert zoo["training"]["compiled"] and zoo["training"]["first_step_s"] > 0
    # Adam's moments beside the shipped zoo, for a later loan's --init; one file in the returned archive
    moments = out / "zoo" / zoo["moments"]
    assert moments == out / "zoo" / "zoo" / "styles.adam.safetensors"
    assert moments.samefile(out / "zoo" / "train" / "styles.adam.safetensors")
    decision = zoo["decision"]
    # two tiny styles cannot beat the shipped ten: no ship decision (the dry run ships anyway, to run the path)
    assert decision["ship"] is False and decision["why"].startswith("lacks shipped styles")
    assert (out / "zoo" / "pictures" / "candy.jpg").is_file()
    assert (out / "zoo" / "train" / "styles.log.csv").read_text().splitlines()[0].endswith("style_candy,style_mosaic")
    parity = json.loads((out / "verify" / "parity.json").read_text())
    rows = {(r["backend"], r["precision"]): r for r in parity["rows"]}
    assert set(rows) == {(b, p) for b in ("eager", "triton", "fused") for p in ("fp16", "bf16")}
    assert all("error" not in r and r["nonfinite"] == 0 for r in rows.values()), rows
    assert parity["tiled"]["tile"] is not None
    bench = json.loads((out / "verify" / "bench" / "results.json").read_text())
    assert {r["backend"] for r in bench["rows"]} == {"eager", "triton", "fused"}
    assert all(r["tiled"] is None and r["skipped"] is None for r in bench["rows"])
    window = json.loads((out / "verify" / "bench-window" / "results.json").read_text())
    assert window["matrix"]["options"] == {"fused": {"first_layer": "window"}}
    assert window["rows"] and all(r["skipped"] is None for r in window["rows"])
    assert "conv1+win" in (out / "verify" / "fused_layers-window.txt").read_text()
    modes = json.loads((out / "verify" / "modes.json").read_text())  # the layer variants, timed per layer
    variants = {(r["layer"], r.get("first_layer") or r.get("upsample") or r.get("conv3x3")) for r in modes["layers"]}
    assert variants - {("res2.conv1", "prologue"), ("res2.conv1", "tma")} == {
        ("conv1", "flat"), ("conv1", "window"), ("deconv1", "direct"), ("deconv1", "phase"), ("deconv2", "direct"),
        ("deconv2", "phase"), ("res1.conv2", "prologue"), ("res1.conv2", "tma")}
    assert len(modes["whole"]) == 8 and all(r["median_ms"] > 0 for r in modes["layers"] + modes["whole"])
    throughput = json.loads((out / "verify" / "throughput.json").read_text())  # the zoo's compiled step timed too
    assert [(r["row"], r["compile"]) for r in throughput["rows"]][-1] == ("bf16+cl+compile", "aot_eager")
    swept = json.loads((out / "verify" / "sweep.json").read_text())  # per layer key: pinned + a candidate
    keys = {r["key"] for r in swept["rows"]}
    assert any(k.startswith("conv_tma") for k in keys) and any(" flat " in k for k in keys)
    assert all("median_ms" in r for r in swept["rows"])
    assert {r["role"] for r in swept["rows"]} == {"rules", "candidate"} and not swept["unswept"]
    tiles = json.loads((out / "verify" / "tiles.json").read_text())
    assert tiles["arch"] == "dry-run" and set(tiles["tiles"]) == keys  # a dry run's table applies on no GPU
    compiled = json.loads((out / "verify" / "bench-compile-default" / "results.json").read_text())
    assert compiled["matrix"]["options"] == {"compile": {"mode": "default"}}
    specs = json.loads((out / "kernels.json").read_text())
    assert {s["kernel"] for s in specs} >= {"_conv_in_kernel", "_in_fwd_fused_kernel", "_in_bwd_fused_kernel"}
    # the row-window conv1 is among the kernels compile_check builds for sm_90 (its shared memory checked)
    assert any(s["constexprs"].get("PADDED") and s["constexprs"]["KH"] == 9 for s in specs)


def _row(ratio, content=1.0):
    return {"gram_ratio_median": ratio, "content_median": content, "passed": ratio <= 0.35 and content <= 3.0}


def test_zoo_ships_only_when_it_gates_better():
    from instyle.train.zoo import better, retrain_multipliers

    old = {"styles": {"a": _row(0.3), "b": _row(0.5)}}
    assert better({"styles": {"a": _row(0.3), "b": _row(0.34), "c": _row(0.9)}}, old)[0]  # one more passes
    assert not better({"styles": {"a": _row(0.5), "b": _row(0.34)}}, old)[0]  # as many pass, higher median
    assert better({"styles": {"a": _row(0.2), "b": _row(0.45)}}, old)[0]  # as many pass, lower median
    assert not better({"styles": {"a": _row(0.1)}}, old)[0]  # a shipped style lost
    assert not better({"styles": {"a": _row(0.3), "b": _row(0.5)}}, old)[0]  # a tie is no better
    assert better({"styles": {"a": _row(0.9)}}, None)[0]
    assert retrain_multipliers({"styles": {"a": _row(0.3), "b": _row(0.5), "c": _row(0.71)}}, 0.35) == \
        {"b": 1.5, "c": 2.25}


def test_zoo_with_a_stronger_stride_grid_is_not_better():
    from instyle.train.zoo import better

    def row(ratio, grid):
        return {**_row(ratio), "lattice_median": grid}

    old = {"styles": {"a": row(0.3, 10.0), "b": row(0.5, 10.0)}}
    assert better({"styles": {"a": row(0.2, 9.0), "b": row(0.45, 8.0)}}, old)[0]
    wins, why = better({"styles": {"a": row(0.2, 14.0), "b": row(0.45, 12.0)}}, old)
    assert not wins and "lattice 13.00 vs 10.00" in why
    assert better({"styles": {"a": _row(0.2), "b": _row(0.45)}}, old)[0]  # no figure on one side: not compared


def _tensors(path):
    from safetensors.torch import load_file

    return list(load_file(str(path)).values())


def test_bundle_layout_and_size(tmp_path, data):
    bundle = tmp_path / "bundle"
    manifest = campaign_bundle.build(bundle, data, campaign_bundle.Path(ROOT), wheels=False)
    for dst, _ in campaign_bundle.DATA:
        assert (bundle / dst).exists(), dst
    assert len(list((bundle / "data" / "content" / "train").glob("*.jpg"))) == 300
    assert manifest["mib_with_tree"] <= campaign_bundle.LIMIT_MIB
    run_sh = (bundle / "run.sh").read_text()
    assert "--target /tmp/site" in run_sh and "INSTYLE_DATA" in run_sh and "flock" in run_sh
    assert '$OUT/$name.tgz' in run_sh and 'name="${RUN_NAME:-$stage}"' in run_sh
    assert f'-gt {campaign_bundle.RETURNED_FILE_BYTES} ]' in run_sh and "@RETURNED" not in run_sh
    assert subprocess.run(["bash", "-n", str(bundle / "run.sh")]).returncode == 0


def test_adam_moments_of_the_full_zoo_generator_fit_a_returned_file(tmp_path):
    """The zoo stage's Adam moments come back from the loan in its archive (a later --init continues with them)."""
    from instyle.train.adam_state import save_moments
    from instyle.train.trainer import TrainConfig, build_generator

    cfg = TrainConfig(style=[f"s{i}.jpg" for i in range(11)], out=str(tmp_path / "z.safetensors"))
    model = build_generator(cfg)
    opt = torch.optim.Adam(model.parameters())
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    path = save_moments(opt, model, tmp_path / "z.adam.safetensors", cfg.style_names)
    assert path.stat().st_size < campaign_bundle.RETURNED_FILE_BYTES
    assert path.stat().st_size > 4 * sum(p.numel() for p in model.parameters())  # two bf16 moments each


def test_bundle_refuses_missing_data(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        campaign_bundle.build(tmp_path / "b", tmp_path / "nothing", campaign_bundle.Path(ROOT), wheels=False)


@pytest.mark.interpreter  # the census records interpreted launches
def test_census_counts_distinct_specializations():
    from instyle.kernels import instance_norm
    from instyle.kernels import instance_norm_forward as IN

    before = dict(IN.TUNING)
    with census.recording() as c:
        assert IN.TUNING == IN._GPU_TUNING  # the GPU's tiles while recording
        x = torch.randn(2, 4, 9, 7)
        instance_norm(x)
        instance_norm(x + 1)  # same specialization
        instance_norm(x.half())  # another dtype: another binary
    assert IN.TUNING == before
    assert c.count() == 2 and c.by_kernel() == {"_in_fwd_fused_kernel": 2}
    assert sum(c.launches.values()) == 3
    spec = c.specializations()[0]
    assert spec["args"]["x_ptr"] in ("*float32", "*float16") and "BLOCK_HW" in spec["constexprs"]
