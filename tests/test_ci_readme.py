""".ci/run runs the README's Quickstart commands, read from README.md: the first (plain install + stylize)
before the second (dev extras + tests), so CI fails whenever a plain install cannot stylize."""
import subprocess

from instyle.paths import PROJECT_ROOT


def readme_command(n: int) -> str:
    """The command .ci/run would run, extracted by the script's own readme_command()."""
    script = (PROJECT_ROOT / ".ci" / "run").read_text()
    fn = script[script.index("readme_command() {"):script.index("\n}\n") + 3]
    out = subprocess.run(["bash", "-c", f"{fn}\nreadme_command {n}"], cwd=PROJECT_ROOT, capture_output=True,
                         text=True, check=True)
    return out.stdout.strip()


def test_ci_runs_the_readme_first_command_first():
    first, second = readme_command(1), readme_command(2)
    assert "pip install -e . " in first and "[" not in first.split("instyle stylize")[0]  # no extras
    assert "instyle stylize ../shared/data/content/" in first and "--model" not in first  # the shipped default
    assert 'pip install -e ".[dev]"' in second and "pytest" in second
    script = (PROJECT_ROOT / ".ci" / "run").read_text()
    assert script.index('bash -c "$first"') < script.index('bash -c "$second"')
    assert "Traceback" in script and "stylized/chicago.jpg" in script


def test_ci_runs_the_slow_tests_the_readme_command_leaves_out_last():
    """The default selection leaves `slow` out (pyproject addopts); CI runs those after it, once, so every test
    runs exactly once and the last pytest summary ends the log."""
    assert 'addopts = "-ra -m \'not slow\'"' in (PROJECT_ROOT / "pyproject.toml").read_text()
    script = (PROJECT_ROOT / ".ci" / "run").read_text()
    assert 'slow="python3 -m pytest -q -m slow"' in script
    assert script.rstrip().endswith('bash -c "$slow"')
    assert script.index('bash -c "$second"') < script.index('bash -c "$slow"')
    assert "-m" not in readme_command(2).split("pytest", 1)[1]  # the README's run is the default selection
