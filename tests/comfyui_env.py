"""Import a real ComfyUI checkout named by COMFYUI_PATH, or skip with the reason.

ComfyUI imports torchvision at start-up, and two of its core node files import torchaudio and
spandrel; none of the code these tests touch uses them. Where they are not installed (the
registry has no CPU wheels of them) import-only placeholders stand in, so every core node loads
as it does on a user's machine (the web page expects them: without UpscaleModelLoader its model
browser raises on every checkpoint widget).
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


PLACEHOLDER_MODULES = ("torchvision", "torchaudio", "spandrel")


class _ImportOnlyPlaceholder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, names):
        self.names = tuple(names)

    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in self.names:
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        module = types.ModuleType(spec.name)
        module.__path__ = []
        module.__getattr__ = _placeholder_attribute
        return module

    def exec_module(self, module):
        pass


def install_placeholders():
    """Let ``import torchvision`` (and torchaudio, spandrel) succeed, as empty modules, where
    they are not installed."""
    missing = [name for name in PLACEHOLDER_MODULES if importlib.util.find_spec(name) is None]
    if missing and not any(isinstance(f, _ImportOnlyPlaceholder) for f in sys.meta_path):
        sys.meta_path.append(_ImportOnlyPlaceholder(missing))


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
    install_placeholders()
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    return root
