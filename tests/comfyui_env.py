"""Import a real ComfyUI checkout named by COMFYUI_PATH, or skip with the reason.

ComfyUI imports torchvision at start-up but none of the code these tests touch uses it; where
it is not installed (there is no CPU wheel here) an import-only placeholder stands in.
"""

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import types

import pytest

SKIP_REASON = (
    "COMFYUI_PATH is not set to a ComfyUI checkout; set it (a clone of Comfy-Org/ComfyUI with its "
    "requirements.txt installed, torchvision/torchaudio/spandrel/kornia not needed) to run the "
    "tests against ComfyUI"
)


def _placeholder_attribute(name):
    if name.startswith("__"):
        raise AttributeError(name)
    return types.SimpleNamespace()


class _TorchvisionPlaceholder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path, target=None):
        if name == "torchvision" or name.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        module = types.ModuleType(spec.name)
        module.__path__ = []
        module.__getattr__ = _placeholder_attribute
        return module

    def exec_module(self, module):
        pass


def install_torchvision_placeholder():
    """Let ``import torchvision`` succeed (as an empty module) where it is not installed."""
    if importlib.util.find_spec("torchvision") is None:
        sys.meta_path.append(_TorchvisionPlaceholder())


def import_comfyui():
    """Put ComfyUI on sys.path (CPU mode) and return its root, or skip the calling module."""
    root = os.environ.get("COMFYUI_PATH")
    if not root:
        pytest.skip(SKIP_REASON, allow_module_level=True)
    if not os.path.isfile(os.path.join(root, "comfy", "samplers.py")):
        pytest.skip(f"COMFYUI_PATH={root} is not a ComfyUI checkout (no comfy/samplers.py)",
                    allow_module_level=True)
    if root not in sys.path:
        sys.path.insert(0, root)
    install_torchvision_placeholder()
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    return root
