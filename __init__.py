"""Learned diffusion samplers and schedules, fitted to your own checkpoint.

Loads as a ComfyUI custom-node folder (under any folder name) and as the ``learned_solvers``
Python package. Importing it is cheap and needs no ComfyUI: the nodes are built only when
ComfyUI asks for them through ``comfy_entrypoint``.
"""

__all__ = ["__version__", "comfy_entrypoint"]


def __getattr__(name):
    # lazily, so this file also imports where it is not a package: pytest imports a checkout's
    # root __init__.py by itself when the folder's name is no identifier (a clone in "x-y")
    if name == "__version__":
        from .version import __version__

        return __version__
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


async def comfy_entrypoint():
    """ComfyUI's V3 entry point: the extension that lists this package's nodes."""
    from .nodes import extension

    return extension()
