"""The README's Python API example runs as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_python_api_example_runs():
    text = README.read_text()
    section = text[text.index("## Python API"):]
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
    """inspect, validate and export as the README shows them, from the repository root."""
    import glob
    import os
    import shlex

    from learned_solvers.__main__ import main

    root = README.parent
    monkeypatch.chdir(root)
    section = README.read_text().split("## Learned-solver files and sharing")[1].split("\n## ")[0]
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
