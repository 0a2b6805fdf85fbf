"""Learned diffusion samplers and schedules, fitted to your own checkpoint.

Loads as a ComfyUI custom-node folder (under any folder name) and as the ``learned_solvers``
Python package. Importing it is cheap and needs no ComfyUI: the nodes are built only when
ComfyUI asks for them through ``comfy_entrypoint``.
"""

from .version import __version__

__all__ = ["__version__", "comfy_entrypoint"]


async def comfy_entrypoint():
    """ComfyUI's V3 entry point: the extension that lists this package's nodes."""
    from .nodes import extension

    return extension()
