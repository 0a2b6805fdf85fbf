"""A small UNet the package trains itself on procedural images, shipped as safetensors.

It proves the distillation engine on a real network with real backpropagation, and it is the
demo's default model. ``load_test_unet()`` returns it as a k-diffusion denoiser.
"""

from .data import procedural_images
from .unet import TinyUNet, load_test_unet, WEIGHTS_PATH

__all__ = ["TinyUNet", "WEIGHTS_PATH", "load_test_unet", "procedural_images"]
