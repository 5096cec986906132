"""python -m instyle.bench.vs_peer: without the peer installed it says so and exits 0; its report names the CPU,
its ISA, the load averages and whether the target was met."""
import importlib.util

from instyle.bench import vs_peer


def test_skips_with_a_clear_message_without_the_peer(monkeypatch, capsys, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == vs_peer.PEER else real(name, *a))
    assert vs_peer.main(["--out", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert "skipped" in err and vs_peer.PEER in err and not any(tmp_path.iterdir())


def test_markdown_reports_the_machine_and_the_verdict():
    style = {"style": "candy", "switch_ms": 9.0, "first_call_ms": 500.0, "repeated_ms": 490.0,
             "vs_repeated": 1.02, "psnr_db": 45.1,
             "max_abs": 30.0}
    report = {"label": "native", "image": "chicago.jpg", "size": 1024, "iters": 10, "warmup": 2,
              "load_before": [2.0, 2.1, 2.2], "load_after": [2.5, 2.2, 2.2],
              "environment": {"date": "2026-12-07T05:00:00+00:00", "cpu": "Some CPU", "logical_cpus": 2,
                              "isa": ["avx2", "avx512_vnni"], "onednn_max_cpu_isa": None, "git_rev": "abc"},
              "result": {"ours": {"choice": "openvino int8", "load_s": 1.0, "notes": []},
                         "median_ms": {"ours": 490.0, "peer": 800.0, "ours_network": 400.0, "peer_network": 700.0},
                         "speedup": 1.63, "speedup_network": 1.75, "styles": [style], "min_psnr_db": 45.1}}
    text = vs_peer.markdown(report)
    assert "Some CPU" in text and "avx512_vnni" in text and "[2.0, 2.1, 2.2]" in text
    assert "**1.63×**" in text and "Target: ≥ 1.3× at ≥ 40 dB: met" in text and "| candy |" in text
