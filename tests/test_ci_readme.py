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


def test_ci_builds_the_docs_strictly_before_the_tests_and_the_nav_lists_every_page():
    """mkdocs.yml's nav names every page of docs/ (strict: a page left out fails the build), .ci/run builds the
    site --strict outside the repository before the test suite, and the README's links into docs/ resolve."""
    import re

    config = (PROJECT_ROOT / "mkdocs.yml").read_text()
    assert re.search(r"^strict: true$", config, re.M) and re.search(r"^docs_dir: docs$", config, re.M)
    nav = set(re.findall(r"^\s+- (?:(?:\"[^\"\n]+\"|[^:\n]+): )?([\w/.-]+\.md)$", config, re.M))
    pages = {p.relative_to(PROJECT_ROOT / "docs").as_posix() for p in (PROJECT_ROOT / "docs").rglob("*.md")}
    assert nav == pages, (sorted(pages - nav), sorted(nav - pages))
    script = (PROJECT_ROOT / ".ci" / "run").read_text()
    build = 'python3 -m mkdocs build --strict --site-dir "$(mktemp -d)"'
    assert 'pip install -q -e ".[docs]"' in script and build in script
    assert script.index(build) < script.index('bash -c "$second"')
    readme = (PROJECT_ROOT / "README.md").read_text()
    linked = re.findall(r"\]\(((?:docs|bench)/[^)#\s]+)", readme)
    assert linked and all((PROJECT_ROOT / target).exists() for target in linked), linked
