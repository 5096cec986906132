"""DDP on CPU (gloo, 2 processes): two ranks of batch 1 follow the single-process batch-2 run, rank 0 alone
writes files. Structured like a torchrun launch: the environment variables are what torchrun sets."""
from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from test_train_core import config, one_thread, photos, tiny_loss  # noqa: F401  (fixtures)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out_dir: str, data: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from instyle.train.trainer import train

    tr = train(config(Path(out_dir), Path(data), iterations=3, batch_size=1, log_every=1),
               tiny_loss())
    assert tr.dist.world_size == world and tr.dist.rank == rank
    torch.save(tr.model.state_dict(), Path(out_dir) / f"rank{rank}.pt")


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_ddp_two_ranks_match_single_process(tmp_path, photos):  # noqa: F811
    from instyle.train.trainer import Trainer

    ddp_dir = tmp_path / "ddp"
    ddp_dir.mkdir()
    mp.start_processes(_worker, args=(2, _free_port(), str(ddp_dir), str(photos)), nprocs=2, join=True,
                       start_method="spawn")
    r0 = torch.load(ddp_dir / "rank0.pt", weights_only=True)
    r1 = torch.load(ddp_dir / "rank1.pt", weights_only=True)
    assert all(torch.equal(r0[k], r1[k]) for k in r0)  # replicas stay identical

    single = Trainer(config(tmp_path / "single", photos, iterations=3, batch_size=2, log_every=1), tiny_loss())
    single.fit()
    import csv

    terms = ("content", "style", "tv", "total")
    with open(ddp_dir / "g.log.csv") as fa, open(tmp_path / "single" / "g.log.csv") as fb:
        for a, b in zip(csv.DictReader(fa), csv.DictReader(fb)):  # same samples, same losses (all-reduced mean)
            torch.testing.assert_close(torch.tensor([float(a[k]) for k in terms]),
                                       torch.tensor([float(b[k]) for k in terms]), rtol=1e-5, atol=0)
    # weights: equal up to rounding, which Adam amplifies where a gradient is near zero: its update there is
    # ~lr * sign(g), so a rounding-level gradient of the other sign moves the weight by up to 2 lr per step
    # (CPUs with other vector units round differently). Bound: every weight within 2 * lr * steps, and all
    # but a few within 2e-4 (a real divergence moves most of them).
    lr, steps = single.cfg.lr, 3
    close = total = 0
    for k, v in single.model.state_dict().items():
        diff = (r0[k].float() - v.float()).abs()
        assert diff.max() <= 2 * lr * steps + 1e-6, (k, float(diff.max()))
        close += int((diff <= 2e-4 + 1e-3 * v.abs()).sum())
        total += diff.numel()
    assert close >= 0.95 * total, f"{total - close} of {total} weights differ by more than rounding"
    names = sorted(p.name for p in ddp_dir.iterdir())
    assert names == ["g.adam.safetensors", "g.log.csv", "g.loss.png", "g.safetensors", "g.state.pt",
                     "rank0.pt", "rank1.pt"]
    from instyle.train.state import load_state

    assert load_state(ddp_dir / "g.state.pt")["position"] == 6  # global samples: 3 steps x 2 ranks x 1
