"""ComfyUI's entry to the nodes (``__init__.comfy_entrypoint`` calls ``extension``). The nodes
live in ``hosts/comfyui/nodes.py``, with the rest of ComfyUI's glue; this file imports nothing
of ComfyUI until ComfyUI asks, so the package imports anywhere."""


def extension():
    """The ComfyExtension listing this package's nodes; needs ComfyUI."""
    try:
        import comfy_api  # noqa: F401
    except ImportError:
        raise ImportError("the learned-solvers nodes need ComfyUI (comfy_api) to be importable") from None
    from .hosts.comfyui.nodes import LearnedSolversExtension

    return LearnedSolversExtension()
