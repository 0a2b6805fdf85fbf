"""A small UNet the package trains itself on procedural images, shipped as safetensors.

It proves the distillation engine on a real network with real backpropagation, and it is the
demo's default model. ``load_test_unet()`` returns it as a k-diffusion denoiser.
"""

from .data import CLASSES, labelled_images, procedural_images
from .unet import CONDITIONAL_WEIGHTS_PATH, WEIGHTS_PATH, ConditionalTinyUNet, GuidedUNet, TinyUNet, load_test_unet

__all__ = ["CLASSES", "CONDITIONAL_WEIGHTS_PATH", "ConditionalTinyUNet", "GuidedUNet", "TinyUNet", "WEIGHTS_PATH",
           "labelled_images", "load_test_unet", "procedural_images"]
