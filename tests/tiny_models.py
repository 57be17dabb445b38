"""Tiny random-weight diffusers transformers and their forward inputs (no hub downloads).

Each entry builds the model from a small config and returns inputs for one call. The test loops
vary `timestep` and the latents, everything else stays fixed across steps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import diffusers
import torch


@dataclass(frozen=True)
class TinyModel:
    name: str
    cls: str
    ctor: dict[str, Any]
    make_inputs: Callable[[torch.Generator], dict[str, Any]]
    latent_key: str = "hidden_states"
    timestep_dtype: torch.dtype = torch.float32
    timestep_scale: float = 1.0  # Flux and Qwen pipelines pass timestep / 1000
    # block lists and forward pattern the eager oracle uses (as cache-dit's registry would say)
    blocks: tuple[str, ...] = ("transformer_blocks",)
    pattern: int = 1

    def build(self, seed: int = 0) -> torch.nn.Module:
        torch.manual_seed(seed)
        model = getattr(diffusers, self.cls)(**self.ctor).eval()
        return model


def _r(g: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=g)


def _flux(g):
    return dict(hidden_states=_r(g, 1, 64, 16), encoder_hidden_states=_r(g, 1, 8, 32), pooled_projections=_r(g, 1, 32),
                img_ids=torch.rand(64, 3, generator=g), txt_ids=torch.zeros(8, 3), return_dict=False)


def _sd3(g):
    return dict(hidden_states=_r(g, 1, 4, 16, 16), encoder_hidden_states=_r(g, 1, 8, 32),
                pooled_projections=_r(g, 1, 32), return_dict=False)


def _pixart(g):
    return dict(hidden_states=_r(g, 1, 4, 16, 16), encoder_hidden_states=_r(g, 1, 8, 32),
                added_cond_kwargs={"resolution": None, "aspect_ratio": None}, return_dict=False)


def _dit(g):
    return dict(hidden_states=_r(g, 1, 4, 16, 16), class_labels=torch.tensor([3]), return_dict=False)


def _qwen(g):
    return dict(hidden_states=_r(g, 1, 64, 16), encoder_hidden_states=_r(g, 1, 8, 32),
                encoder_hidden_states_mask=torch.ones(1, 8, dtype=torch.int64), img_shapes=[(1, 8, 8)],
                return_dict=False)


def _wan(g):
    return dict(hidden_states=_r(g, 1, 4, 2, 16, 16), encoder_hidden_states=_r(g, 1, 8, 32), return_dict=False)


def _cogvideox(g):
    return dict(hidden_states=_r(g, 1, 2, 4, 16, 16), encoder_hidden_states=_r(g, 1, 8, 32), return_dict=False)


def _hunyuan(g):
    return dict(hidden_states=_r(g, 1, 4, 2, 16, 16), encoder_hidden_states=_r(g, 1, 8, 32),
                encoder_attention_mask=torch.ones(1, 8), pooled_projections=_r(g, 1, 32),
                guidance=torch.tensor([3.5]), return_dict=False)


MODELS: dict[str, TinyModel] = {m.name: m for m in [
    TinyModel("flux", "FluxTransformer2DModel", dict(
        patch_size=1, in_channels=16, num_layers=2, num_single_layers=4, attention_head_dim=32, num_attention_heads=4,
        joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=False, axes_dims_rope=(8, 12, 12)),
        _flux, timestep_scale=1e-3, blocks=("transformer_blocks", "single_transformer_blocks"), pattern=1),
    TinyModel("sd3", "SD3Transformer2DModel", dict(
        sample_size=16, patch_size=2, in_channels=4, num_layers=4, attention_head_dim=32, num_attention_heads=4,
        joint_attention_dim=32, caption_projection_dim=128, pooled_projection_dim=32, out_channels=4,
        pos_embed_max_size=32), _sd3, pattern=1),
    TinyModel("pixart", "PixArtTransformer2DModel", dict(
        num_attention_heads=4, attention_head_dim=32, in_channels=4, out_channels=8, num_layers=4,
        cross_attention_dim=128, sample_size=16, patch_size=2, caption_channels=32, use_additional_conditions=False,
        norm_num_groups=32), _pixart, timestep_dtype=torch.int64, pattern=3),
    TinyModel("dit", "DiTTransformer2DModel", dict(
        num_attention_heads=4, attention_head_dim=32, in_channels=4, out_channels=8, num_layers=4, sample_size=16,
        patch_size=2, num_embeds_ada_norm=1000, norm_num_groups=32), _dit, timestep_dtype=torch.int64, pattern=3),
    TinyModel("qwenimage", "QwenImageTransformer2DModel", dict(
        patch_size=2, in_channels=16, out_channels=4, num_layers=4, attention_head_dim=32, num_attention_heads=4,
        joint_attention_dim=32, axes_dims_rope=(8, 12, 12)), _qwen, timestep_scale=1e-3, pattern=1),
    TinyModel("wan", "WanTransformer3DModel", dict(
        patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=32, in_channels=4, out_channels=4,
        text_dim=32, freq_dim=32, ffn_dim=256, num_layers=4, qk_norm="rms_norm_across_heads", rope_max_seq_len=32),
        _wan, timestep_dtype=torch.int64, blocks=("blocks",), pattern=2),
    TinyModel("cogvideox", "CogVideoXTransformer3DModel", dict(
        num_attention_heads=4, attention_head_dim=32, in_channels=4, out_channels=4, time_embed_dim=32,
        text_embed_dim=32, num_layers=4, sample_width=16, sample_height=16, sample_frames=5, patch_size=2,
        temporal_compression_ratio=4, max_text_seq_length=8), _cogvideox, timestep_dtype=torch.int64, pattern=0),
    TinyModel("hunyuanvideo", "HunyuanVideoTransformer3DModel", dict(
        in_channels=4, out_channels=4, num_attention_heads=4, attention_head_dim=32, num_layers=2,
        num_single_layers=2, num_refiner_layers=1, patch_size=2, patch_size_t=1, guidance_embeds=True,
        text_embed_dim=32, pooled_projection_dim=32, rope_axes_dim=(8, 12, 12)), _hunyuan,
        timestep_dtype=torch.int64, blocks=("transformer_blocks", "single_transformer_blocks"), pattern=0),
]}


def denoising_inputs(m: TinyModel, steps: int, seed: int = 0) -> tuple[dict[str, Any], list[torch.Tensor]]:
    """Fixed conditioning inputs and a decreasing timestep schedule for `steps` simulated steps."""
    g = torch.Generator().manual_seed(seed)
    inputs = m.make_inputs(g)
    ts = torch.linspace(999, 1, steps) * m.timestep_scale
    if m.timestep_dtype == torch.int64:
        ts = ts.round().to(torch.int64)
    return inputs, [t.reshape(1) for t in ts]


def run_loop(model: Callable, m: TinyModel, steps: int = 28, seed: int = 0, cfg: bool = False,
             on_step: Callable[[int], None] | None = None) -> list[torch.Tensor]:
    """A simulated Euler denoising loop: latents move along the model output, timesteps decrease.

    With `cfg`, the model is called twice per step (cond, then uncond with other conditioning), as
    pipelines with separate classifier-free guidance do.
    """
    inputs, ts = denoising_inputs(m, steps, seed)
    x = inputs.pop(m.latent_key)
    uncond = {k: (torch.zeros_like(v) if isinstance(v, torch.Tensor) and v.is_floating_point() and k != m.latent_key
                  else v) for k, v in inputs.items()}
    outs = []
    with torch.no_grad():
        for i, t in enumerate(ts):
            out = model(**{m.latent_key: x}, timestep=t, **inputs)[0]
            if cfg:
                out_u = model(**{m.latent_key: x}, timestep=t, **uncond)[0]
                out = out_u + 2.0 * (out - out_u)
            outs.append(out)
            v = out[:, : x.shape[1]] if out.shape != x.shape else out
            x = x - v.reshape(x.shape) / steps
            if on_step is not None:
                on_step(i)
    return outs
