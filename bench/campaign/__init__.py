"""GPU-loan logistics: the campaign (`python -m instyle.bench.campaign`), its bundle, the kernel census and the
sm_90 compile check. A developer's tool, run from a checkout (an editable install, or the device's linked
tree): pyproject's package list leaves this folder out, so `pip install .` installs none of it, and no
installed module imports it (tests/test_import_graph.py)."""
