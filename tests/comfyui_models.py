"""Tiny models built through ComfyUI's own classes (random weights), and matching conditioning.

Imported only after ``comfyui_env.import_comfyui()``; also used by the test node pack that the
real-server tests load.
"""

import torch

TINY_UNET = {
    "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
    "legacy": False, "adm_in_channels": None, "in_channels": 4, "model_channels": 32, "num_res_blocks": [1, 1],
    "transformer_depth": [1, 1], "channel_mult": [1, 2], "transformer_depth_middle": 1,
    "use_linear_in_transformer": False, "context_dim": 32, "num_heads": 2, "num_head_channels": -1,
    "transformer_depth_output": [1, 1, 1, 1],
}


TINY_FLUX = {
    "image_model": "flux", "in_channels": 16, "patch_size": 2, "out_channels": 16, "vec_in_dim": 16,
    "context_in_dim": 32, "hidden_size": 64, "mlp_ratio": 2.0, "num_heads": 2, "depth": 1,
    "depth_single_blocks": 1, "axes_dim": [8, 12, 12], "theta": 10000, "qkv_bias": True, "guidance_embed": True,
}


def tiny_model(kind: str = "eps", seed: int = 0):
    """A ModelPatcher around a tiny network built by ComfyUI's own classes: ``eps``, an
    SD1.5-architecture UNet (1M parameters) with SD1.5's discrete schedule; ``flow``, the same
    UNet as ComfyUI's FLOW model type (ModelSamplingDiscreteFlow); ``flux``, a Flux DiT (one
    double and one single block; its RMSNorm scales are plain parameters, outside ComfyUI's
    cast layers) with ModelSamplingFlux."""
    import comfy.model_base
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models

    config = (comfy.supported_models.Flux(dict(TINY_FLUX)) if kind == "flux"
              else comfy.supported_models.SD15(dict(TINY_UNET)))
    gen = torch.Generator().manual_seed(seed)
    with torch.inference_mode():  # as a ComfyUI loader node creates weights
        if kind in ("eps", "flux"):
            model = config.get_model({})
        elif kind == "flow":
            model = comfy.model_base.BaseModel(config, model_type=comfy.model_base.ModelType.FLOW)
        else:
            raise ValueError(kind)
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=gen) * 0.05)
    return comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                            offload_device=comfy.model_management.unet_offload_device())


def tiny_conditioning(seed: int = 1, kind: str = "eps"):
    """(positive, negative) CONDITIONING for ``tiny_model(kind)``: [1, 4 tokens, 32] each, and for
    ``flux`` a pooled vector [1, 16] and the embedded guidance."""
    gen = torch.Generator().manual_seed(seed)
    positive, negative = torch.randn(1, 4, 32, generator=gen), torch.zeros(1, 4, 32)
    if kind != "flux":
        return [[positive, {}]], [[negative, {}]]
    pooled = torch.randn(1, 16, generator=gen)
    return ([[positive, {"pooled_output": pooled, "guidance": 3.5}]],
            [[negative, {"pooled_output": torch.zeros(1, 16), "guidance": 3.5}]])


# An SD1.5 checkpoint as small as ComfyUI's detection allows: its SD15 config needs 320 model
# channels and a 768-wide context, and its text encoder is always the full CLIP-L; one UNet
# level, no middle block and a TAESD VAE keep the rest small (about 270 MB in float16).
TINY_SD15_CHECKPOINT_UNET = {
    "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
    "legacy": False, "adm_in_channels": None, "in_channels": 4, "model_channels": 320, "num_res_blocks": [1],
    "transformer_depth": [1], "channel_mult": [1], "transformer_depth_middle": -2,
    "use_linear_in_transformer": False, "context_dim": 768, "num_heads": 8, "num_head_channels": -1,
    "transformer_depth_output": [1, 1],
}


def write_tiny_sd15_checkpoint(path, seed: int = 0):
    """Write a random-weight SD1.5 checkpoint that ComfyUI's CheckpointLoaderSimple detects as
    SD15 and loads with no missing keys: the UNet above, a full CLIP-L text encoder and a TAESD
    VAE, every tensor float16 with small random values."""
    import comfy.ldm.modules.diffusionmodules.openaimodel as openaimodel
    import comfy.ops
    import comfy.sd1_clip
    import comfy.taesd.taesd
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(seed)
    parts = {
        "model.diffusion_model.": openaimodel.UNetModel(**TINY_SD15_CHECKPOINT_UNET,
                                                        operations=comfy.ops.disable_weight_init),
        "cond_stage_model.": comfy.sd1_clip.SDClipModel(device="cpu"),
        "first_stage_model.": comfy.taesd.taesd.TAESD(latent_channels=4),
    }
    state = {}
    for prefix, module in parts.items():
        for key, value in module.state_dict().items():
            if key.endswith("position_ids") or not value.is_floating_point():
                state[prefix + key] = value.contiguous()
            else:
                state[prefix + key] = (torch.randn(value.shape, generator=gen) * 0.02).half()
    save_file(state, str(path))
    return path
