"""Test-only ComfyUI nodes: tiny models built through ComfyUI's classes, and a SIGMAS reader.

Loaded by the real-server tests from a temporary custom_nodes folder; never shipped.
"""

import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.realpath(__file__))))

from comfyui_models import tiny_conditioning, tiny_model  # noqa: E402


def _nan_output(apply_model, args):
    return apply_model(args["input"], args["timestep"], **args["c"]) * float("nan")


def _out_of_memory_in_backprop(apply_model, args):
    if torch.is_grad_enabled():  # the teacher runs; the first gradient step does not fit
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
    return apply_model(args["input"], args["timestep"], **args["c"])


class TinyModel:
    """eps / flow: tiny models; nan: an eps model whose every output is NaN; oom: an eps model
    that runs out of memory as soon as gradients are recorded."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"kind": (["eps", "flow", "nan", "oom"],)}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "build"
    CATEGORY = "testing"

    def build(self, kind):
        if kind in ("eps", "flow"):
            return (tiny_model(kind),)
        model = tiny_model("eps")
        model.set_model_unet_function_wrapper(_nan_output if kind == "nan" else _out_of_memory_in_backprop)
        return (model,)


class TinyConditioning:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    RETURN_TYPES = ("CONDITIONING", "CONDITIONING")
    FUNCTION = "build"
    CATEGORY = "testing"

    def build(self):
        return tiny_conditioning()


class SigmasAsText:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"sigmas": ("SIGMAS",)}}

    RETURN_TYPES = ()
    FUNCTION = "show"
    OUTPUT_NODE = True
    CATEGORY = "testing"

    def show(self, sigmas):
        return {"ui": {"text": [json.dumps([float(s) for s in sigmas])]}}


NODE_CLASS_MAPPINGS = {"LSTestTinyModel": TinyModel, "LSTestTinyConditioning": TinyConditioning,
                       "LSTestSigmasAsText": SigmasAsText}
