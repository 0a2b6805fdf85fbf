"""The README is a short front door whose links all lead somewhere, and the docs' examples run
as written: the Python API example and the file commands."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"


def test_the_readme_is_short_and_every_file_it_links_exists():
    text = README.read_text()
    assert len(text) <= 20_000
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [t for t in targets if not re.match(r"[a-z]+://", t)]
    assert {"docs/how-it-works.md", "docs/benchmarks.md", "docs/webui.md", "docs/files.md",
            "docs/development.md"} <= set(local)
    missing = [t for t in local if not (ROOT / t).exists()]
    assert missing == []


def test_every_link_between_the_docs_leads_to_a_file():
    for doc in DOCS.glob("*.md"):
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
            if not re.match(r"[a-z]+://", target):
                assert (doc.parent / target).exists(), f"{doc.name} links {target}"


def test_the_readme_names_the_test_command_ci_runs():
    """A newcomer sets up and runs the tests with the README's commands alone: the test command is
    in a code block, it is the one .ci/run runs, and it installs the package before pytest."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), re.S)
    assert any(line.strip() == "bash tests/run.sh" for block in blocks for line in block.splitlines())
    assert "exec bash tests/run.sh" in (ROOT / ".ci" / "run").read_text()
    run = (ROOT / "tests" / "run.sh").read_text()
    assert run.index("pip install -q torch==2.13.0") < run.index('pip install -q -e ".[test]"') < run.index("exec python -m pytest")


def test_the_readmes_commands_are_ones_the_command_line_takes():
    from learned_solvers.__main__ import build_parser

    commands = re.findall(r"^python -m learned_solvers (\S+.*?)(?:\s+#.*)?$", README.read_text(), re.M)
    assert commands
    for command in commands:
        build_parser().parse_args(command.split())


def test_python_api_example_runs():
    text = (DOCS / "python-api.md").read_text()
    section = text
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    solver, same, images = namespace["solver"], namespace["same"], namespace["images"]
    assert solver.nfes == [4, 6]
    assert same.shape == images.shape == (2, 4, 16, 16)
    # with the grid in float64 the bound sampler is the solver's own sample; ComfyUI hands it a
    # float32 grid, whose rounding (relative 6e-8) moves a 4-step result by up to about 3e-5
    exact = namespace["sampler"](namespace["my_denoiser"], namespace["x"], namespace["sigmas"])
    assert (exact - images).abs().max() < 1e-6
    assert (same - images).abs().max() < 1e-4 * images.abs().max()
    for nfe in solver.nfes:
        assert solver.fits[nfe].held_out_rmse <= solver.fits[nfe].base_held_out_rmse


def test_file_commands_run_on_the_shipped_preset(tmp_path, monkeypatch, capsys):
    """inspect, validate and export as docs/files.md shows them, from the repository root."""
    import glob
    import os
    import shlex

    from learned_solvers.__main__ import main

    monkeypatch.chdir(ROOT)
    section = (DOCS / "files.md").read_text()
    commands = [line for line in re.findall(r"^python -m learned_solvers (.*)$", section, re.M)
                if line.split()[0] in ("inspect", "validate", "export")]
    assert {c.split()[0] for c in commands} == {"inspect", "validate", "export"}
    for command in commands:
        words = []
        for word in shlex.split(command.replace("grid.png", str(tmp_path / "grid.png"))):
            words += sorted(glob.glob(word)) if "*" in word else [word]
        assert main(words) == 0, command
    assert os.path.getsize(tmp_path / "grid.png") > 0
    assert "ok " in capsys.readouterr().out
