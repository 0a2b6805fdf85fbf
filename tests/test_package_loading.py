"""The repository root loads as a ComfyUI custom-node folder under any name, without ComfyUI."""

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = ("learned_samplers", "distill", "schedules", "hosts")

# Mirrors ComfyUI's nodes.load_custom_node: the module name is the folder path with dots
# replaced, the spec comes from <folder>/__init__.py. The absolute package name is blocked, so
# any import that is not relative fails here.
LOADER = textwrap.dedent("""
    import asyncio, importlib, importlib.abc, importlib.util, inspect, pathlib, sys

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in ("learned_solvers", "comfy", "comfy_api"):
                raise ImportError(f"blocked absolute import of {name}")

    sys.meta_path.insert(0, Block())
    folder = pathlib.Path(sys.argv[1])
    name = str(folder).replace(".", "_x_")
    spec = importlib.util.spec_from_file_location(name, folder / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)

    loaded = []
    for path in sorted(folder.rglob("*.py")):
        parts = path.relative_to(folder).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if not parts or parts[0] == "tests":  # the pack itself is loaded above
            continue
        if parts == ("hosts", "comfyui", "nodes"):  # the node classes exist only inside ComfyUI: refused clearly
            try:
                importlib.import_module(".".join((name,) + parts))
            except ImportError as err:
                assert "need ComfyUI" in str(err), err
                continue
            raise AssertionError("hosts/comfyui/nodes.py should need ComfyUI")
        sub = importlib.import_module(".".join((name,) + parts))
        assert pathlib.Path(sub.__file__).resolve().is_relative_to(folder.resolve()), sub.__file__
        loaded.append(".".join(parts))

    assert inspect.iscoroutinefunction(module.comfy_entrypoint)
    try:
        asyncio.run(module.comfy_entrypoint())
    except ImportError as err:
        assert "ComfyUI" in str(err), err
    else:
        raise AssertionError("comfy_entrypoint should need ComfyUI")
    print("LOADED", " ".join(loaded))
""")


def copy_pack(destination: Path):
    destination.mkdir(parents=True)
    for item in ROOT.iterdir():
        if item.name in PACKAGE_DIRS:
            shutil.copytree(item, destination / item.name, ignore=shutil.ignore_patterns("__pycache__"))
        elif item.suffix == ".py":
            shutil.copy2(item, destination)


def test_loads_like_a_comfyui_custom_node_under_an_odd_name(tmp_path):
    pack = tmp_path / "custom_nodes" / "ComfyUI-learned.solvers-v0.1"
    copy_pack(pack)
    result = subprocess.run([sys.executable, "-c", LOADER, str(pack)], capture_output=True, text=True,
                            cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    loaded = result.stdout.split("LOADED", 1)[1].split()
    for expected in ("nodes", "learned_samplers.solver", "learned_samplers.coefficients",
                     "learned_samplers.conventions", "learned_samplers.gaussian_mixture",
                     "schedules.grids", "distill", "__main__"):
        assert expected in loaded


def test_the_package_version_is_the_one_pyproject_declares():
    import tomllib

    from learned_solvers import __version__

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert __version__ == declared


def test_the_package_metadata_declares_nothing_empty_or_made_up():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert isinstance(project["project"]["license"], str)  # an SPDX expression, not the whole text
    assert all(value != "" for value in project["tool"]["comfy"].values())
    assert "urls" not in project["project"]  # added when published (docs/development.md: Publishing), never a placeholder


def test_the_root_file_imports_on_its_own_as_pytest_imports_a_checkout_in_an_odd_folder():
    """pytest imports the root __init__.py as a lone module when the folder name is no
    identifier (a clone in "check-ci"): a relative import at its top would fail every test."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("__init__", ROOT / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert callable(module.comfy_entrypoint)
