"""Training core on CPU with a small randomly initialised VGG: losses, data stream, trainer, exact resume,
torn checkpoint writes, variants (batch norm, zero padding, texture), Gatys, fused-IN swap, AMP path."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from instyle import checkpoint
from instyle.models import JohnsonNet
from instyle.train import state as state_mod
from instyle.train.data import ContentImages, StreamSampler, list_images
from instyle.train.fused_norm import FusedInstanceNorm, swap_instance_norm
from instyle.train.gatys import stylize
from instyle.train.losses import LossSpec, PerceptualLoss, gram, total_variation
from instyle.train.trainer import TrainConfig, Trainer
from instyle.train.vgg import VGGFeatures, layer_indices

SMALL = (8, 16, 16, 16, 16)  # per-block VGG widths for speed


@pytest.fixture(autouse=True)
def one_thread():
    # on a busy machine OpenMP threads spin waiting for each other far longer than these tiny convs compute
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def smooth_image(rng, h, w):
    """A structured (not white-noise) RGB uint8 image: upsampled coarse noise."""
    coarse = rng.uniform(0, 255, (h // 8 + 1, w // 8 + 1, 3)).astype(np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC))


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    (folder / "sub").mkdir()
    for i in range(6):
        where = folder / "sub" if i % 2 else folder
        Image.fromarray(smooth_image(rng, 72 + 8 * i, 96)).save(where / f"p{i}.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


def stripes(size=64):
    y, x = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    s = (torch.sin((x + y) * 0.6) + 1) * 127.5
    return torch.stack([s, 255 - s, s.flip(0)])[None].float()


def tiny_loss(texture=False, **weights):
    spec = LossSpec(content_layers=[] if texture else ["relu2_2"], style_layers=["relu1_1", "relu2_1", "relu3_1"],
                    content_weight=0.0 if texture else weights.get("content", 1.0),
                    style_weight=weights.get("style", 10.0), tv_weight=weights.get("tv", 0.0))
    torch.manual_seed(1)
    loss = PerceptualLoss(VGGFeatures(spec.layers(), widths=SMALL), spec)
    loss.set_style(stripes())
    return loss


def config(tmp_path, photos, **kw):
    base = dict(style="stripes.png", out=str(tmp_path / "g.safetensors"), data=str(photos),
                model_config=dict(width=8, blocks=1), image_size=64, batch_size=2, iterations=30, workers=0,
                checkpoint_every=1000, sample_every=0, log_every=5, progress=False, seed=3, lr=3e-3)
    base.update(kw)
    return TrainConfig(**base)


# ----------------------------------------------------------------------------------------- losses

def test_gram_normalised_and_fp32():
    f = torch.randn(2, 4, 5, 6, dtype=torch.bfloat16)
    g = gram(f)
    ref = torch.einsum("nchw,ndhw->ncd", f.float(), f.float()) / (4 * 5 * 6)
    assert g.dtype == torch.float32 and torch.allclose(g, ref, atol=1e-5)
    assert total_variation(torch.zeros(1, 3, 4, 4)) == 0


def test_style_balance_divides_each_style_by_its_gram_magnitude():
    spec = LossSpec(content_layers=["relu2_2"], style_layers=["relu1_1", "relu2_1"], style_layer_weights=[1.0, 0.5],
                    content_weight=0.0, style_weight=7.0, tv_weight=0.0, style_balance="gram",
                    style_multipliers=[1.0, 2.5])
    torch.manual_seed(1)
    vgg = VGGFeatures(spec.layers(), widths=SMALL)
    loss = PerceptualLoss(vgg, spec)
    styles = [stripes(48), stripes(40) * 0.2]  # Gram magnitudes ~25x apart
    loss.set_styles(styles)
    y = torch.rand(3, 3, 32, 32) * 255
    got = loss(y, None, torch.tensor([1, 0, 1]))["style_per_sample"]
    with torch.no_grad():  # by hand: raw weighted Gram error / raw weighted Gram magnitude, per style
        fy = vgg(y)
        want = []
        for i, s in enumerate([1, 0, 1]):
            fs = vgg(styles[s])
            err = mag = 0.0
            for n, w in (("relu1_1", 1.0), ("relu2_1", 0.5)):
                gy = torch.einsum("chw,dhw->cd", fy[n][i], fy[n][i]) / fy[n][i].numel()
                gs = torch.einsum("chw,dhw->cd", fs[n][0], fs[n][0]) / fs[n][0].numel()
                err, mag = err + w * (gy - gs).square().mean(), mag + w * gs.square().mean()
            want.append(7.0 * [1.0, 2.5][s] * err / mag)
    torch.testing.assert_close(got, torch.stack(want), rtol=1e-4, atol=0)
    assert float(loss.gram_magnitudes()[0] / loss.gram_magnitudes()[1]) > 10
    off = PerceptualLoss(vgg, LossSpec(**{**spec.__dict__, "style_balance": "off", "style_multipliers": None}))
    off.set_styles(styles)
    raw = off(y, None, torch.tensor([1, 0, 1]))["style_per_sample"]
    torch.testing.assert_close(got, raw * torch.tensor([2.5, 1.0, 2.5]) / loss.gram_magnitudes()[[1, 0, 1]])
    with pytest.raises(ValueError, match="2 style weight multipliers for 1 styles"):
        loss.set_styles(styles[:1])


def test_vgg_layers_by_name_and_depth():
    idx = layer_indices("vgg16")
    assert (idx["relu1_2"], idx["relu2_2"], idx["relu3_3"], idx["relu4_3"]) == (3, 8, 15, 22)
    assert layer_indices("vgg19")["relu4_1"] == 20
    vgg = VGGFeatures(["relu2_2", "relu1_1"], widths=SMALL)
    assert len(vgg.features) == 9 and not any(p.requires_grad for p in vgg.parameters())
    vgg.train()
    assert not vgg.training
    out = vgg(torch.rand(1, 3, 16, 16) * 255)
    assert set(out) == {"relu1_1", "relu2_2"} and out["relu2_2"].shape == (1, 16, 8, 8)
    with pytest.raises(ValueError, match="relu9_9"):
        VGGFeatures(["relu9_9"])


# ------------------------------------------------------------------------------------------- data

def test_data_listing_and_deterministic_crops(photos):
    files = list_images(photos)
    assert len(files) == 6 and all(f.suffix == ".png" for f in files)
    sub = list_images(photos, max_images=3, seed=1)
    assert len(sub) == 3 and sub == list_images(photos, max_images=3, seed=1)
    ds = ContentImages(files, 32, seed=5)
    a, b, c = ds[7], ds[7], ds[13]  # code 7 = epoch 1, image 1
    assert a.dtype == torch.uint8 and a.shape == (3, 32, 32)
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ValueError, match="no such data folder"):
        list_images(photos / "nowhere")


def test_data_folder_without_images(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(ValueError, match="no image files"):
        list_images(tmp_path)


def test_stream_sampler_shards_and_resumes():
    def take(s, k):
        it = iter(s)
        return [next(it) for _ in range(k)]

    full = take(StreamSampler(5, seed=2), 14)
    assert sorted(c % 5 for c in full[:5]) == list(range(5))  # an epoch is a permutation
    assert take(StreamSampler(5, seed=2, start=4), 10) == full[4:]
    r0, r1 = take(StreamSampler(5, seed=2, rank=0, world_size=2), 7), take(StreamSampler(5, seed=2, rank=1,
                                                                                       world_size=2), 7)
    assert r0 == full[0::2] and r1 == full[1::2]


# ---------------------------------------------------------------------------------------- trainer

def test_loss_falls_and_outputs_written(tmp_path, photos):
    cfg = config(tmp_path, photos, sample_every=15)
    tr = Trainer(cfg, tiny_loss())
    last = tr.fit()
    rows = tr.log.rows
    assert len(rows) == 6 and rows[-1]["total"] < 0.7 * rows[0]["total"]
    assert set(last) == {"content", "style", "tv", "total"}
    model, meta = checkpoint.load(cfg.out)
    assert meta["arch"] == "johnson" and model.config["width"] == 8
    import json

    training = json.loads(meta["training"])
    assert training["iterations"] == 30 and training["images"] == 6 and training["losses"]["style_layers"]
    for suffix in (".state.pt", ".log.csv", ".loss.png"):
        assert (tmp_path / f"g{suffix}").is_file()
    assert sorted(p.name for p in (tmp_path / "g.samples").iterdir()) == ["00000015.png", "00000030.png"]


class Stop(Exception):
    pass


def crash_at(trainer, at: int, monkeypatch) -> None:
    """trainer.fit() dies (raises Stop) when it reaches step `at`, as a killed run would."""
    step = trainer.train_step

    def crash(content):
        if trainer.step == at:
            raise Stop
        return step(content)

    monkeypatch.setattr(trainer, "train_step", crash)


def test_resume_reproduces_uninterrupted_run_bitwise(tmp_path, photos, monkeypatch):
    a = Trainer(config(tmp_path / "a", photos, iterations=12, checkpoint_every=4), tiny_loss())
    a.fit()
    want = a.model.state_dict()

    b = Trainer(config(tmp_path / "b", photos, iterations=12, checkpoint_every=4), tiny_loss())
    crash_at(b, 9, monkeypatch)  # dies mid-run: the last good checkpoint is step 8
    with pytest.raises(Stop):
        b.fit()
    c = Trainer(config(tmp_path / "b", photos, iterations=12, checkpoint_every=4, resume=True), tiny_loss())
    assert c.step == 8 and c.position == 16
    c.fit()
    got = c.model.state_dict()
    assert all(torch.equal(want[k], got[k]) for k in want)
    assert [r["step"] for r in c.log.rows] == [5, 10, 12]
    with pytest.raises(ValueError, match="batch_size"):
        Trainer(config(tmp_path / "b", photos, batch_size=3, resume=True), tiny_loss())


def test_torn_write_keeps_last_good_checkpoint(tmp_path, photos, monkeypatch):
    cfg = config(tmp_path, photos, iterations=4, checkpoint_every=2)
    tr = Trainer(cfg, tiny_loss())
    tr.fit()
    good_state = (tmp_path / "g.state.pt").read_bytes()
    good_model = (tmp_path / "g.safetensors").read_bytes()
    real_save = torch.save

    def torn_save(obj, f, *a, **k):  # half the bytes reach the disk, then the process "dies"
        real_save(obj, f, *a, **k)
        data = open(f, "rb").read()
        open(f, "wb").write(data[: len(data) // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(state_mod.torch, "save", torn_save)
    with pytest.raises(KeyboardInterrupt):
        tr.save_checkpoint({})
    monkeypatch.undo()
    assert (tmp_path / "g.state.pt").read_bytes() == good_state
    assert (tmp_path / "g.safetensors").read_bytes() == good_model
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]
    assert state_mod.load_state(tmp_path / "g.state.pt")["step"] == 4
    (tmp_path / "g.state.pt").write_bytes(good_state[:100])
    with pytest.raises(ValueError, match="damaged"):
        state_mod.load_state(tmp_path / "g.state.pt")


@pytest.mark.parametrize("norm,padding", [("batch", "reflect"), ("instance", "zero")])
def test_batch_norm_and_zero_padding_variants_train(tmp_path, photos, norm, padding):
    cfg = config(tmp_path, photos, iterations=20,
                 model_config=dict(width=8, blocks=1, norm=norm, padding=padding))
    tr = Trainer(cfg, tiny_loss())
    tr.fit()
    rows = tr.log.rows
    assert all(np.isfinite(r["total"]) for r in rows) and rows[-1]["total"] < rows[0]["total"]
    model, _ = checkpoint.load(cfg.out)
    assert model.config["norm"] == norm and model.config["padding"] == padding


def test_texture_mode_trains_and_samples_any_size(tmp_path):
    from instyle.train.texture_cli import sample

    cfg = TrainConfig(style="stripes.png", out=str(tmp_path / "t.safetensors"), arch="pyramid", mode="texture",
                      model_config=dict(ratios=[4, 2, 1], channels=4), image_size=32, batch_size=2,
                      iterations=30, log_every=5, progress=False, checkpoint_every=1000, sample_every=30, lr=5e-2)
    tr = Trainer(cfg, tiny_loss(texture=True))
    tr.fit()
    rows = tr.log.rows
    assert rows[-1]["style"] < 0.75 * rows[0]["style"] and all(r["content"] == 0 for r in rows)
    model, _ = checkpoint.load(cfg.out)
    assert model.mode == "texture"
    out = sample(model, 45, 19, seed=1)
    assert out.shape == (1, 3, 19, 45) and 0 <= out.min() and out.max() <= 255
    with pytest.raises(ValueError, match="pyramid"):
        Trainer(TrainConfig(style="s", out=str(tmp_path / "x.safetensors"), mode="texture"), tiny_loss(True))


def test_bf16_autocast_keeps_losses_fp32(tmp_path, photos):
    tr = Trainer(config(tmp_path, photos, iterations=2, amp="bf16"), tiny_loss())
    content = torch.rand(2, 3, 64, 64) * 255
    terms = tr.train_step(content)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in terms.values())


# ----------------------------------------------------------------------------------- gatys, fused

@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_gatys_reduces_loss(optimizer):
    loss = tiny_loss(style=1e4)
    content = torch.from_numpy(smooth_image(np.random.default_rng(1), 48, 48).copy()).permute(2, 0, 1)[None].float()
    image, history = stylize(loss, content, steps=25, optimizer=optimizer)
    assert len(history) <= 25 and history[-1]["total"] < 0.5 * history[0]["total"]
    assert image.shape == content.shape and image.min() >= 0 and image.max() <= 255


def test_fused_swap_shares_parameters_and_matches():
    torch.manual_seed(0)
    ref = JohnsonNet(width=8, blocks=1)
    with torch.no_grad():
        for m in ref.modules():
            if isinstance(m, torch.nn.InstanceNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    fused = JohnsonNet(width=8, blocks=1)
    fused.load_state_dict(ref.state_dict())
    calls = []

    def op(x, w, b, eps):
        calls.append(1)
        return F.instance_norm(x, weight=w, bias=b, eps=eps)

    assert swap_instance_norm(fused, op) == 7
    assert isinstance(fused.in1, FusedInstanceNorm) and set(fused.state_dict()) == set(ref.state_dict())
    x = torch.rand(1, 3, 16, 16) * 255
    assert torch.allclose(fused(x), ref(x), atol=1e-4) and len(calls) == 7


@pytest.mark.interpreter
def test_fused_kernel_trains_like_reference():
    """The real instyle.kernels op (Triton interpreter on CPU) in a generator: same output and gradients."""
    from instyle.train.fused_norm import find_op

    op = find_op()
    if op is None:
        pytest.skip("instyle.kernels.instance_norm not available")
    torch.manual_seed(0)
    ref = JohnsonNet(width=4, blocks=1)
    fused = JohnsonNet(width=4, blocks=1)
    fused.load_state_dict(ref.state_dict())
    assert swap_instance_norm(fused, op) == 7
    x = torch.rand(1, 3, 12, 12) * 255
    y_ref, y = ref(x), fused(x)
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-3)
    y_ref.square().mean().backward()
    y.square().mean().backward()
    for (name, p), q in zip(ref.named_parameters(), fused.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-3, atol=1e-3, msg=name)


# ----------------------------------------------------------------------------------- continuation


def test_init_continues_with_saved_adam_moments_rows_by_name_and_warms_up(tmp_path, photos):
    from safetensors.torch import load_file

    from instyle.models.norm import ConditionalInstanceNorm2d
    from instyle.train.adam_state import adam_path

    loss = tiny_loss()
    loss.set_styles([stripes(), stripes(48).flip(-1)])
    base = Trainer(config(tmp_path, photos, style=["a.png", "b.png"], iterations=3), loss)
    base.fit()
    assert base.warmup == 0 and base.optimizer.param_groups[0]["lr"] == 3e-3
    saved = load_file(str(adam_path(base.out)))
    names = dict(base.model.named_parameters())
    assert {t.dtype for k, t in saved.items() if not k.endswith(".step")} == {torch.bfloat16}
    for name, p in names.items():
        st = base.optimizer.state[p]
        assert float(saved[f"{name}.step"]) == 3
        assert torch.equal(saved[f"{name}.exp_avg"], st["exp_avg"].bfloat16()), name

    # b keeps its rows' moments, c (new) starts from the mean row; every other tensor as saved
    cont = Trainer(config(tmp_path, photos, style=["b.png", "c.png"], iterations=1, init=str(base.out),
                   out=str(tmp_path / "more.safetensors")), loss)
    record = cont.init_record["optimizer"]
    assert record["file"] == "g.adam.safetensors" and record["restored"] == record["parameters"] == len(names)
    for name, p in cont.model.named_parameters():
        st, want = cont.optimizer.state[p], saved[f"{name}.exp_avg_sq"].float()
        if isinstance(cont.model.get_submodule(name.rpartition(".")[0]), ConditionalInstanceNorm2d):
            want = torch.stack([want[1], want.mean(0)])
        assert torch.equal(st["exp_avg_sq"], want) and float(st["step"]) == 3, name
    cont.fit()
    assert cont.warmup == 200 and cont.optimizer.param_groups[0]["lr"] == pytest.approx(3e-3 / 200)
    fresh = Trainer(config(tmp_path, photos, style=["b.png", "c.png"], iterations=1, init=str(base.out),
                           init_optimizer=None, out=str(tmp_path / "fresh.safetensors")), loss)
    assert fresh.init_record["optimizer"] is None and not fresh.optimizer.state
