"""ComfyUI nodes (V3 schema). A thin adapter: every computation lives in the library.

Importing this module outside ComfyUI is harmless (tests, the command line): the node classes
exist only when ComfyUI's ``comfy_api`` is importable.
"""

from __future__ import annotations

from .learned_samplers import BASE_SOLVERS, sample_learned

try:
    import comfy.samplers
    from comfy_api.latest import ComfyExtension, io
except ImportError:  # not running inside ComfyUI
    io = None

CATEGORY = "sampling/custom_sampling/samplers"

if io is not None:

    class SolverFamilySampler(io.ComfyNode):
        """One base solver of the package's solver family as a SAMPLER."""

        @classmethod
        def define_schema(cls) -> io.Schema:
            return io.Schema(
                node_id="LSSolverFamilySampler",
                display_name="Solver Family Sampler",
                category=CATEGORY,
                description=(
                    "Euler, DPM-Solver++ 2M/3M, iPNDM or UniPC from the learned-solver family, "
                    "with exact half-log-SNR steps for flow models."
                ),
                inputs=[
                    io.Combo.Input("base", options=list(BASE_SOLVERS), default="dpmpp_2m",
                                   tooltip="The classical solver; learned solvers start from one of these."),
                    io.Combo.Input("corrector", options=["default", "on", "off"], default="default",
                                   tooltip="UniPC-style corrector at no extra model call; default: on for UniPC only."),
                    io.Combo.Input("convention", options=["auto", "ve", "flow"], default="auto",
                                   tooltip="auto: detect flow models (SD3, Flux, Wan). 've' on a flow model "
                                           "reproduces ComfyUI's own dpmpp_2m/ipndm steps."),
                ],
                outputs=[io.Sampler.Output()],
            )

        @classmethod
        def execute(cls, base, corrector, convention) -> io.NodeOutput:
            options = {"base": base, "convention": convention}
            if corrector != "default":
                options["corrector"] = corrector == "on"
            return io.NodeOutput(comfy.samplers.KSAMPLER(sample_learned, extra_options=options))

    class LearnedSolversExtension(ComfyExtension):
        async def get_node_list(self) -> list[type[io.ComfyNode]]:
            return [SolverFamilySampler]


def extension():
    """The ComfyExtension listing this package's nodes; needs ComfyUI."""
    if io is None:
        raise ImportError("the learned-solvers nodes need ComfyUI (comfy_api) to be importable")
    return LearnedSolversExtension()
