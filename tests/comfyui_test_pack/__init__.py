"""Test-only ComfyUI nodes: tiny models built through ComfyUI's classes, and a SIGMAS reader.

Loaded by the real-server tests from a temporary custom_nodes folder; never shipped.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.realpath(__file__))))

from comfyui_models import tiny_conditioning, tiny_model  # noqa: E402


class TinyModel:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"kind": (["eps", "flow"],)}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "build"
    CATEGORY = "testing"

    def build(self, kind):
        return (tiny_model(kind),)


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
