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
    assert (same - images).abs().max() < 1e-5
    for nfe in solver.nfes:
        assert solver.fits[nfe].held_out_rmse <= solver.fits[nfe].base_held_out_rmse
