"""The CLI-overhead script's pieces that need no long run: the test photo and the arithmetic of the report."""
from __future__ import annotations

from conftest import need
from PIL import Image

from instyle.bench import cli_overhead


def test_make_photo_crops_to_the_requested_size(data, tmp_path):
    src = need(data / "content" / "hires" / cli_overhead.PHOTO_1K)
    out = cli_overhead.make_photo(src, tmp_path / "p.jpg", 96, 64)
    with Image.open(out) as im:
        assert im.size == (96, 64) and im.format == "JPEG" and im.mode == "RGB"


def test_report_states_goals_and_overheads():
    r = {"model": "/x/m.pth", "threads": 1, "size": 1024, "images": 3, "backend": "eager/fp32/cpu",
         "forward": {"cpu_s": 2.0, "wall_s": 2.0}, "stylize_1": {"cpu_s": 3.0, "wall_s": 3.0},
         "stylize_n": {"cpu_s": 7.2, "wall_s": 7.2}, "per_image_cpu_s": 2.1, "fixed_cpu_s": 0.9,
         "per_image_overhead_pct": 5.0, "one_image_overhead_pct": 50.0,
         "stylize_4k": {"cpu_s": 9.0, "wall_s": 9.0, "peak_rss_mb": 7000.0},
         "forward_4k": {"cpu_s": 8.0, "wall_s": 8.0, "peak_rss_mb": 5000.0}}
    text = cli_overhead.report(r)
    assert "+5.0 % of the forward (goal <= 15 %: met)" in text
    assert "7.34 GB" in text and "NOT met" in text and "bare forward process" in text


def test_importtime_lines_give_each_module_its_own_time():
    stderr = ("import time: self [us] | cumulative | imported package\n"
              "import time:       120 |        120 |   _io\n"
              "import time:      3000 |       5000 | torch\n"
              "a warning line\n")
    assert cli_overhead.imported_modules(stderr) == {"_io": 120, "torch": 3000}


def test_help_report_names_the_commit_the_way_it_started_and_the_heavy_imports():
    row = {"runs": 15, "git_rev": "3bdbe03f00", "how": "instyle --help", "cli_file": "/tmp/old/instyle/cli.py",
           "wall_s": {"median": 2.5, "p10": 2.0, "p90": 3.0}, "import_s": {"median": 1.6}, "modules": 1131,
           "heavy": ["PIL", "numpy", "torch"]}
    text = cli_overhead.help_report({"what": "instyle --help", "rows": [row, dict(row, heavy=[])]})
    assert "15 interleaved runs" in text and "3bdbe03  instyle --help" in text and " 2.500 s (2.000..3.000)" in text
    assert "heavy: PIL, numpy, torch" in text and "heavy: none" in text and "[/tmp/old/instyle/cli.py]" in text
