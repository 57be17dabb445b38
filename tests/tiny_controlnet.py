"""Tiny random-weight diffusers ControlNet / VACE *pipelines* (no hub downloads, no text encoders).

Same conventions as `tiny_pipelines`: each `TinyPipeline` entry builds a real diffusers pipeline around a tiny
transformer and a tiny ControlNet (random weights), `None` for text encoders and tokenizers, and
`call_kwargs(steps)` gives random `prompt_embeds`, a seeded generator, a tiny resolution and
`output_type="latent"`. Every one of these pipelines runs its control image (and init image / mask) through
`self.vae.encode` or at least reads `self.vae.dtype`, so each gets a tiny real VAE (8-channel convs, the released
models' 8x spatial downsampling, so 128 px images give the 16 x 16 latents of `tiny_pipelines`) instead of `None`.

ControlNets zero-initialise their output projections (`zero_module`), so a freshly built one adds exact zeros to
the transformer's stream. `_unzero` gives every all-zero parameter small random values, so the residuals the
transformer adds between its blocks (the "glue") are real and a cache that skipped or misplaced them would show.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import diffusers
import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler

from extra_models import EXTRA_MODELS
from tiny_models import MODELS
from tiny_pipelines import COND_LEN, HAVE_TRANSFORMERS, TEXT_DIM, UNCOND_LEN, TinyPipeline  # noqa: F401 (re-export)


def _r(g: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=g)


def _img(g: torch.Generator, *shape: int) -> torch.Tensor:  # a pixel image in [0, 1]
    return torch.rand(*shape, generator=g)


def _unzero(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for p in model.parameters():
            if p.numel() and not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


def _build(cls: str, ctor: dict[str, Any], seed: int = 0, unzero: bool = False) -> torch.nn.Module:
    torch.manual_seed(seed)
    m = getattr(diffusers, cls)(**ctor).eval()
    return _unzero(m, seed) if unzero else m


# --------------------------------------------------------------------------------------------- tiny VAEs
def _vae_kl(latent_channels: int = 4, shift: float | None = 0.0) -> torch.nn.Module:
    """AutoencoderKL, 4 blocks of 8 channels: scale factor 8."""
    return _build("AutoencoderKL", dict(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8,) * 4, layers_per_block=1,
        latent_channels=latent_channels, norm_num_groups=4, sample_size=32, scaling_factor=1.0,
        shift_factor=shift), seed=7)


def _vae_qwen(z_dim: int = 4) -> torch.nn.Module:
    """AutoencoderKLQwenImage (causal 3D convs), base 8 channels, 3 downsamplings: scale factor 8."""
    return _build("AutoencoderKLQwenImage", dict(
        base_dim=8, z_dim=z_dim, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True],
        latents_mean=[0.0] * z_dim, latents_std=[1.0] * z_dim), seed=7)


def _vae_wan(z_dim: int = 4) -> torch.nn.Module:
    """AutoencoderKLWan, base 8 channels: spatial scale 8, temporal scale 4."""
    return _build("AutoencoderKLWan", dict(
        base_dim=8, z_dim=z_dim, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True],
        latents_mean=[0.0] * z_dim, latents_std=[1.0] * z_dim), seed=7)


def _vae_dc(latent_channels: int = 4) -> torch.nn.Module:
    """AutoencoderDC (Sana's deep-compression VAE), 4 stages of 8 channels, no attention: scale factor 8."""
    return _build("AutoencoderDC", dict(
        in_channels=3, latent_channels=latent_channels, attention_head_dim=8, encoder_block_types="ResBlock",
        decoder_block_types="ResBlock", encoder_block_out_channels=(8,) * 4, decoder_block_out_channels=(8,) * 4,
        encoder_layers_per_block=(1,) * 4, decoder_layers_per_block=(1,) * 4, encoder_qkv_multiscales=((),) * 4,
        decoder_qkv_multiscales=((),) * 4, scaling_factor=1.0), seed=7)


# ----------------------------------------------------------------------------------------- tiny models
_FLUX_T = dict(MODELS["flux"].ctor)  # 2 double + 4 single blocks, 16 packed channels (4 latent x 2x2)
_FLUX_CN = dict(patch_size=1, in_channels=16, attention_head_dim=32, num_attention_heads=4, joint_attention_dim=32,
                pooled_projection_dim=32, axes_dims_rope=(8, 12, 12))
_SD3_CN = dict(sample_size=16, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=32, num_attention_heads=4,
               joint_attention_dim=32, caption_projection_dim=128, pooled_projection_dim=32, out_channels=4,
               pos_embed_max_size=32)
_QWEN_CN = dict(patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=32, num_attention_heads=4,
                joint_attention_dim=32, axes_dims_rope=(8, 12, 12))
_Z = EXTRA_MODELS["zimage"].ctor  # 4 layers, dim 64, 1 refiner layer
_ZIMAGE_CN = dict(control_layers_places=[0, 2], control_in_dim=4, all_patch_size=(2,), all_f_patch_size=(1,),
                  dim=_Z["dim"], n_refiner_layers=_Z["n_refiner_layers"], n_heads=_Z["n_heads"],
                  n_kv_heads=_Z["n_kv_heads"])
_SANA_CN = dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=32, num_layers=2,
                num_cross_attention_heads=2, cross_attention_head_dim=32, cross_attention_dim=64, caption_channels=32,
                sample_size=16, patch_size=2, norm_elementwise_affine=False)
_H = EXTRA_MODELS["hunyuandit"].ctor  # 6 blocks: skips from blocks 0, 1 into blocks 5, 4
_HUNYUAN_CN = dict(conditioning_channels=3, num_attention_heads=_H["num_attention_heads"],
                   attention_head_dim=_H["attention_head_dim"], in_channels=4, patch_size=2, sample_size=16,
                   hidden_size=_H["hidden_size"], transformer_num_layers=_H["num_layers"],
                   cross_attention_dim=32, cross_attention_dim_t5=32, pooled_projection_dim=32, text_len=8,
                   text_len_t5=8)

# name -> (diffusers class, config): the transformers and control models the pipelines below are built from
CONTROLNET_MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "flux": ("FluxTransformer2DModel", _FLUX_T),
    # 3 double blocks, so repeat (index % 2: 0, 1, 0) and interval (index // 2: 0, 0, 1) differ
    "flux3": ("FluxTransformer2DModel", {**_FLUX_T, "num_layers": 3, "num_single_layers": 2}),
    "flux_cn": ("FluxControlNetModel", {**_FLUX_CN, "num_layers": 2, "num_single_layers": 0}),  # InstantX-like
    "flux_cn_single": ("FluxControlNetModel", {**_FLUX_CN, "num_layers": 1, "num_single_layers": 2}),
    # XLabs-like: an input hint block on pixels (8x down), patch 2: 4 x 2 x 2 = 16 channels per token
    "flux_cn_xlabs": ("FluxControlNetModel", {**_FLUX_CN, "num_layers": 2, "num_single_layers": 0, "patch_size": 2,
                                              "conditioning_embedding_channels": 4}),
    "sd3": ("SD3Transformer2DModel", dict(MODELS["sd3"].ctor)),  # 4 blocks, the last one context_pre_only
    "sd3_cn": ("SD3ControlNetModel", _SD3_CN),
    "sd3_cn_inpaint": ("SD3ControlNetModel", {**_SD3_CN, "extra_conditioning_channels": 1}),  # + mask channel
    "qwenimage": ("QwenImageTransformer2DModel", dict(MODELS["qwenimage"].ctor)),
    "qwen_cn": ("QwenImageControlNetModel", _QWEN_CN),
    "qwen_cn_inpaint": ("QwenImageControlNetModel", {**_QWEN_CN, "extra_condition_channels": 4}),  # mask, packed
    "zimage": ("ZImageTransformer2DModel", dict(_Z)),
    "zimage_cn": ("ZImageControlNetModel", _ZIMAGE_CN),
    # "2.0"-style union control: control latents + mask + masked init latents (4 + 1 + 4 channels)
    "zimage_cn_inpaint": ("ZImageControlNetModel", {**_ZIMAGE_CN, "control_in_dim": 9}),
    # hints after layers 0, 1 and 3 (not 2; the last one after the Bn block)
    "zimage_cn_013": ("ZImageControlNetModel", {**_ZIMAGE_CN, "control_layers_places": [0, 1, 3]}),
    "sana": ("SanaTransformer2DModel", dict(EXTRA_MODELS["sana"].ctor)),
    "sana_cn": ("SanaControlNetModel", _SANA_CN),
    "hunyuandit": ("HunyuanDiT2DModel", dict(_H)),
    "hunyuandit_cn": ("HunyuanDiT2DControlNetModel", _HUNYUAN_CN),
    # Wan 2.1 VACE: hints after blocks 0 and 2; VACE input = inactive + reactive latents (2 x 4) + 8 x 8 mask = 72
    "wan_vace": ("WanVACETransformer3DModel", {**MODELS["wan"].ctor, "vace_layers": [0, 2], "vace_in_channels": 72}),
    # a hint after every block: vace_blocks is then a 4-block run too, whose middle blocks' hints are used later
    "wan_vace_every_block": ("WanVACETransformer3DModel", {**MODELS["wan"].ctor, "vace_layers": [0, 1, 2, 3],
                                                           "vace_in_channels": 72}),
}


def _model(name: str, seed: int = 0, unzero: bool = False) -> torch.nn.Module:
    cls, ctor = CONTROLNET_MODELS[name]
    return _build(cls, ctor, seed, unzero)


def _builder(cls: str, scheduler: Callable[[], Any], parts: Callable[[], dict[str, Any]]
             ) -> Callable[[], DiffusionPipeline]:
    """The pipeline with `parts()` (transformer, controlnet, vae, ...) and None for every other required component."""
    def build() -> DiffusionPipeline:
        pipe_cls = getattr(diffusers, cls)
        params = inspect.signature(pipe_cls.__init__).parameters
        comps = {n: None for n, p in params.items() if n != "self" and p.default is inspect.Parameter.empty}
        pipe = pipe_cls(**{**comps, "scheduler": scheduler(), **parts()})
        pipe.set_progress_bar_config(disable=True)
        return pipe
    return build


def _kwargs(inputs: Callable[[torch.Generator], dict[str, Any]], **static: Any) -> Callable[[int], dict[str, Any]]:
    def call_kwargs(steps: int) -> dict[str, Any]:
        # some pipelines sample the VAE posterior of the control image without the generator
        # (`latent_dist.sample()`: SD3, HunyuanDiT, Qwen inpaint): seed the global RNG for them
        torch.manual_seed(2)
        return dict(num_inference_steps=steps, output_type="latent", generator=torch.Generator().manual_seed(0),
                    **static, **inputs(torch.Generator().manual_seed(1)))
    return call_kwargs


def _flux_sched():
    return FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15)


# ------------------------------------------------------------------------------------------------ Flux
_PX = 128  # VAE scale 8 -> 16 x 16 latents (Flux: 8 x 8 = 64 packed tokens)


def _flux_parts(transformer: str = "flux", controlnet: str = "flux_cn") -> Callable[[], dict[str, Any]]:
    return lambda: dict(transformer=_model(transformer), controlnet=_model(controlnet, 1, unzero=True), vae=_vae_kl())


def _flux_inputs(image: bool = False, mask: bool = False):
    px = _PX

    def make(g: torch.Generator) -> dict[str, Any]:
        out = dict(prompt_embeds=_r(g, 1, COND_LEN, TEXT_DIM), pooled_prompt_embeds=_r(g, 1, TEXT_DIM),
                   control_image=_img(g, 1, 3, px, px) * 2 - 1)
        if image:
            out["image"] = _img(g, 1, 3, px, px)
        if mask:
            out["mask_image"] = _mask(px)
        return out
    return make


# ------------------------------------------------------------------------------------------------- SD3
def _sd3_sched():
    return FlowMatchEulerDiscreteScheduler(shift=3.0)


def _sd3_parts(controlnet: str = "sd3_cn") -> Callable[[], dict[str, Any]]:
    return lambda: dict(transformer=_model("sd3"), controlnet=_model(controlnet, 1, unzero=True), vae=_vae_kl())


def _sd3_inputs(mask: bool = False):
    def make(g: torch.Generator) -> dict[str, Any]:
        out = {f"{p}{k}": _r(g, *shape) for p in ("", "negative_")
               for k, shape in (("prompt_embeds", (1, COND_LEN, TEXT_DIM)), ("pooled_prompt_embeds", (1, TEXT_DIM)))}
        out["control_image"] = _img(g, 1, 3, _PX, _PX) * 2 - 1
        if mask:
            out["control_mask"] = _mask()
        return out
    return make


def _mask(px: int = _PX) -> torch.Tensor:  # 1 = repaint: the centre square
    m = torch.zeros(1, 1, px, px)
    m[..., px // 4: 3 * px // 4, px // 4: 3 * px // 4] = 1.0
    return m


# ------------------------------------------------------------------------------------------- QwenImage
def _qwen_sched():
    return FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=0.9,
                                           max_image_seq_len=8192, shift_terminal=0.02)


def _qwen_parts(controlnet: str = "qwen_cn") -> Callable[[], dict[str, Any]]:
    return lambda: dict(transformer=_model("qwenimage"), controlnet=_model(controlnet, 1, unzero=True),
                        vae=_vae_qwen())


def _qwen_inputs(mask: bool = False):
    def make(g: torch.Generator) -> dict[str, Any]:
        out = dict(prompt_embeds=_r(g, 1, COND_LEN, TEXT_DIM), prompt_embeds_mask=torch.ones(1, COND_LEN, dtype=torch.int64),
                   negative_prompt_embeds=_r(g, 1, COND_LEN, TEXT_DIM),
                   negative_prompt_embeds_mask=torch.ones(1, COND_LEN, dtype=torch.int64),
                   control_image=_img(g, 1, 3, _PX, _PX) * 2 - 1)
        if mask:
            out["control_mask"] = _mask()
        return out
    return make


# --------------------------------------------------------------------------------------------- Z-Image
def _zimage_parts(controlnet: str = "zimage_cn") -> Callable[[], dict[str, Any]]:
    return lambda: dict(transformer=_model("zimage"), controlnet=_model(controlnet, 1, unzero=True),
                        vae=_vae_kl(shift=0.0))


def _zimage_inputs(inpaint: bool = False):
    def make(g: torch.Generator) -> dict[str, Any]:
        out = dict(prompt_embeds=[_r(g, COND_LEN, TEXT_DIM)], negative_prompt_embeds=[_r(g, UNCOND_LEN, TEXT_DIM)],
                   control_image=_img(g, 1, 3, _PX, _PX) * 2 - 1)
        if inpaint:
            out.update(image=_img(g, 1, 3, _PX, _PX) * 2 - 1, mask_image=_mask())
        return out
    return make


# ------------------------------------------------------------------------------------------------ Sana
def _sana_sched():
    return diffusers.DPMSolverMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                                 flow_shift=3.0)


def _sana_inputs(g: torch.Generator) -> dict[str, Any]:
    return dict(prompt_embeds=_r(g, 1, COND_LEN, TEXT_DIM), prompt_attention_mask=torch.ones(1, COND_LEN, dtype=torch.int64),
                negative_prompt_embeds=_r(g, 1, COND_LEN, TEXT_DIM),
                negative_prompt_attention_mask=torch.ones(1, COND_LEN, dtype=torch.int64),
                control_image=_img(g, 1, 3, _PX, _PX) * 2 - 1)


# ------------------------------------------------------------------------------------------ HunyuanDiT
def _hunyuan_inputs(g: torch.Generator) -> dict[str, Any]:
    ones = torch.ones(1, 8, dtype=torch.int64)
    return dict(prompt_embeds=_r(g, 1, 8, 32), prompt_attention_mask=ones, prompt_embeds_2=_r(g, 1, 8, 32),
                prompt_attention_mask_2=ones, negative_prompt_embeds=_r(g, 1, 8, 32),
                negative_prompt_attention_mask=ones, negative_prompt_embeds_2=_r(g, 1, 8, 32),
                negative_prompt_attention_mask_2=ones, control_image=_img(g, 1, 3, _PX, _PX) * 2 - 1)


# ------------------------------------------------------------------------------------------- Wan VACE
def _wan_sched():
    return diffusers.UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)


_WAN_FRAMES = 5  # -> 2 latent frames


def _pil(x: torch.Tensor):  # [C, H, W] in [0, 1] -> a PIL image (the VACE pipeline takes videos as lists of frames)
    from PIL import Image

    return Image.fromarray((x.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy())


def _wan_inputs(g: torch.Generator) -> dict[str, Any]:
    mask = _pil(_mask()[0].expand(3, -1, -1))
    return dict(prompt_embeds=_r(g, 1, COND_LEN, TEXT_DIM), negative_prompt_embeds=_r(g, 1, UNCOND_LEN, TEXT_DIM),
                video=[_pil(_img(g, 3, _PX, _PX)) for _ in range(_WAN_FRAMES)], mask=[mask] * _WAN_FRAMES)


_P = TinyPipeline
_ENTRIES = [
    _P("flux_controlnet", _builder("FluxControlNetPipeline", _flux_sched, _flux_parts()),
       _kwargs(_flux_inputs(), height=_PX, width=_PX, controlnet_conditioning_scale=0.7),
       notes="InstantX-like: the control image is VAE-encoded and packed; one sample per double block "
             "(controlnet_blocks_repeat=False)"),
    _P("flux_controlnet_single", _builder("FluxControlNetPipeline", _flux_sched,
                                          _flux_parts(controlnet="flux_cn_single")),
       _kwargs(_flux_inputs(), height=_PX, width=_PX),
       notes="1 double-block sample (for both double blocks: interval 2) and 2 single-block samples (interval 2)"),
    _P("flux_controlnet_xlabs", _builder("FluxControlNetPipeline", _flux_sched,
                                         _flux_parts("flux3", "flux_cn_xlabs")),
       _kwargs(_flux_inputs(), height=_PX, width=_PX),
       notes="XLabs-like (input_hint_block): controlnet_blocks_repeat=True, samples[index % 2] after each of 3 "
             "double blocks; the hint block downsamples the pixel control image 8x and patchifies it 2x2 itself"),
    _P("flux_controlnet_img2img", _builder("FluxControlNetImg2ImgPipeline", _flux_sched, _flux_parts()),
       _kwargs(_flux_inputs(image=True), height=_PX, width=_PX, strength=0.8),
       notes="init image VAE-encoded; strength 0.8 of the schedule"),
    _P("flux_controlnet_inpaint", _builder("FluxControlNetInpaintPipeline", _flux_sched, _flux_parts()),
       _kwargs(_flux_inputs(image=True, mask=True), height=_PX, width=_PX, strength=0.8),
       notes="init image + mask; latents re-blended with the noised init latents outside the mask after each step"),
    _P("sd3_controlnet", _builder("StableDiffusion3ControlNetPipeline", _sd3_sched, _sd3_parts()),
       _kwargs(_sd3_inputs(), height=_PX, width=_PX, guidance_scale=7.0),
       notes="CFG batched (batch 2, the control latents doubled); 2 samples for the 3 blocks that are not "
             "context_pre_only (index / 1.5): none after the last block"),
    _P("sd3_controlnet_inpaint", _builder("StableDiffusion3ControlNetInpaintingPipeline", _sd3_sched,
                                          _sd3_parts("sd3_cn_inpaint")),
       _kwargs(_sd3_inputs(mask=True), height=_PX, width=_PX, guidance_scale=7.0),
       notes="control = masked image latents + 1 mask channel (extra_conditioning_channels=1)"),
    _P("qwenimage_controlnet", _builder("QwenImageControlNetPipeline", _qwen_sched, _qwen_parts()),
       _kwargs(_qwen_inputs(), height=_PX, width=_PX, true_cfg_scale=4.0), cfg_calls_per_step=2,
       notes="true CFG: cache_context cond / uncond calls, both given the same controlnet samples; negative text of "
             "the same length (one graph: tiny_pipelines' qwenimage covers different lengths)"),
    _P("qwenimage_controlnet_inpaint", _builder("QwenImageControlNetInpaintPipeline", _qwen_sched,
                                                _qwen_parts("qwen_cn_inpaint")),
       _kwargs(_qwen_inputs(mask=True), height=_PX, width=_PX, true_cfg_scale=4.0), cfg_calls_per_step=2,
       notes="control = packed masked-image latents + mask (4 + 1 channels x 2 x 2 = 20 per token)"),
    _P("zimage_controlnet", _builder("ZImageControlNetPipeline", lambda: FlowMatchEulerDiscreteScheduler(shift=3.0),
                                     _zimage_parts()),
       _kwargs(_zimage_inputs(), height=_PX, width=_PX, guidance_scale=5.0), increasing_timesteps=True,
       notes="control samples as a dict {layer index: hint} added after layers 0 and 2; CFG batched as lists"),
    _P("zimage_controlnet_inpaint", _builder("ZImageControlNetInpaintPipeline",
                                             lambda: FlowMatchEulerDiscreteScheduler(shift=3.0),
                                             _zimage_parts("zimage_cn_inpaint")),
       _kwargs(_zimage_inputs(inpaint=True), height=_PX, width=_PX, guidance_scale=5.0), increasing_timesteps=True,
       notes="control = control latents + mask + masked init latents (control_in_dim 9)"),
    _P("zimage_controlnet_013", _builder("ZImageControlNetPipeline", lambda: FlowMatchEulerDiscreteScheduler(shift=3.0),
                                         _zimage_parts("zimage_cn_013")),
       _kwargs(_zimage_inputs(), height=_PX, width=_PX, guidance_scale=5.0), increasing_timesteps=True,
       notes="control_layers_places [0, 1, 3]: glue after layers 0 and 1 (so the run's first two blocks look alike), "
             "none after layer 2, the last hint after the Bn layer"),
    _P("sana_controlnet", _builder("SanaControlNetPipeline", _sana_sched, lambda: dict(
           transformer=_model("sana"), controlnet=_model("sana_cn", 1, unzero=True), vae=_vae_dc())),
       _kwargs(_sana_inputs, height=_PX, width=_PX, guidance_scale=4.5, use_resolution_binning=False,
               negative_prompt=None),
       notes="CFG batched; samples[i - 1] added after blocks 1 and 2 (0 < i <= 2)"),
    _P("hunyuandit_controlnet", _builder("HunyuanDiTControlNetPipeline", diffusers.DDPMScheduler, lambda: dict(
           transformer=_model("hunyuandit"), controlnet=_model("hunyuandit_cn", 1, unzero=True),
           vae=_vae_kl(shift=None))),
       _kwargs(_hunyuan_inputs, height=_PX, width=_PX, guidance_scale=5.0, use_resolution_binning=False),
       notes="CFG batched; the 2 samples are added to the long skips (block 0 -> 5, block 1 -> 4), not to the stream"),
    _P("wan_vace", _builder("WanVACEPipeline", _wan_sched, lambda: dict(
           transformer=_model("wan_vace", 0, unzero=True), vae=_vae_wan())),
       _kwargs(_wan_inputs, height=_PX, width=_PX, num_frames=_WAN_FRAMES, guidance_scale=5.0),
       cfg_calls_per_step=2,
       notes="VACE: the hints come from vace_blocks inside the transformer's own forward, added after blocks 0 and 2"),
    _P("wan_vace_every_block", _builder("WanVACEPipeline", _wan_sched, lambda: dict(
           transformer=_model("wan_vace_every_block", 0, unzero=True), vae=_vae_wan())),
       _kwargs(_wan_inputs, height=_PX, width=_PX, num_frames=_WAN_FRAMES, guidance_scale=5.0),
       cfg_calls_per_step=2,
       notes="VACE with a hint after each of the 4 blocks: vace_blocks[0:4] is found as a run but not cached (its "
             "middle blocks' hints are read later), blocks[0:4] is"),
]

CONTROLNET_PIPELINES: dict[str, TinyPipeline] = {p.name: p for p in _ENTRIES}
