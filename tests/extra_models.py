"""More tiny random-weight diffusers transformers (beyond tiny_models.MODELS), in the same style.

Each entry is a `TinyModel` plus a few fields for models whose call differs from the usual
`model(hidden_states=..., timestep=..., **rest)[0]`: another timestep argument name (HiDream's
`timesteps`, Z-Image's `t`), list inputs/outputs (Z-Image), or an eager call needed before compiling.
Only the timestep and the latents change across steps (`run_loop`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from tiny_models import TinyModel, denoising_inputs


@dataclass(frozen=True)
class ExtraModel(TinyModel):
    timestep_key: str = "timestep"  # the forward argument carrying the timestep (CacheConfig.timestep_arg)
    list_latents: bool = False  # latents go in as a one-element list (per sample, no batch dim) and come back so
    eager_first: bool = False  # call the model eagerly once before compiling (lazily built state)
    fullgraph: bool = True  # False: the model graph-breaks; the cache goes into the graph holding the blocks
    rel_tol: float = 1e-5  # threshold 0 vs the uncompiled model (relative L2, max over steps)
    output_tail: bool = False  # the output holds more tokens than the latents; the prediction is its last ones
    unsupported: str = ""  # why dit_cache_fx.compile rejects it (kept here to retry after package changes)


def _r(g: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=g)


def _image_tokens(g):  # a 4 x 16 x 16 latent packed 2x2 as the Flux pipelines do: 64 tokens of 16
    return _r(g, 1, 64, 16)


def _ltx(g):  # pre-patchified: [B, F*H*W, C] for a 4 x 2 x 8 x 8 latent
    return dict(hidden_states=_r(g, 1, 2 * 8 * 8, 4), encoder_hidden_states=_r(g, 1, 8, 32),
                encoder_attention_mask=torch.ones(1, 8), num_frames=2, height=8, width=8, return_dict=False)


def _sana(g):
    return dict(hidden_states=_r(g, 1, 4, 16, 16), encoder_hidden_states=_r(g, 1, 8, 32), return_dict=False)


def _cogview(g):
    return dict(hidden_states=_r(g, 1, 4, 16, 16), encoder_hidden_states=_r(g, 1, 8, 32),
                original_size=torch.tensor([[16.0, 16.0]]), target_size=torch.tensor([[16.0, 16.0]]),
                crop_coords=torch.tensor([[0.0, 0.0]]), return_dict=False)


def _auraflow(g):
    return dict(hidden_states=_r(g, 1, 4, 16, 16), encoder_hidden_states=_r(g, 1, 8, 32), return_dict=False)


def _chroma(g):
    return dict(hidden_states=_image_tokens(g), encoder_hidden_states=_r(g, 1, 8, 32),
                img_ids=torch.rand(64, 3, generator=g), txt_ids=torch.zeros(8, 3), return_dict=False)


def _flux2(g):
    return dict(hidden_states=_image_tokens(g), encoder_hidden_states=_r(g, 1, 8, 32),
                img_ids=torch.rand(1, 64, 4, generator=g), txt_ids=torch.zeros(1, 8, 4), return_dict=False)


def _mochi(g):
    return dict(hidden_states=_r(g, 1, 4, 2, 16, 16), encoder_hidden_states=_r(g, 1, 8, 32),
                encoder_attention_mask=torch.ones(1, 8, dtype=torch.bool), return_dict=False)


def _allegro(g):
    return dict(hidden_states=_r(g, 1, 4, 2, 16, 16), encoder_hidden_states=_r(g, 1, 8, 32), return_dict=False)


def _lumina2(g):
    return dict(hidden_states=_r(g, 1, 4, 16, 16), encoder_hidden_states=_r(g, 1, 8, 32),
                encoder_attention_mask=torch.ones(1, 8, dtype=torch.bool), return_dict=False)


def _zimage(g):  # lists of per-sample tensors: latents [C, F, H, W], captions [L, D]
    return dict(x=_r(g, 4, 1, 16, 16), cap_feats=[_r(g, 8, 32)], return_dict=False)


def _skyreels(g):
    return dict(hidden_states=_r(g, 1, 4, 2, 16, 16), encoder_hidden_states=_r(g, 1, 8, 32), return_dict=False)


def _hidream(g):  # llama3 states: [num_llama_layers, B, L, D]
    return dict(hidden_states=_r(g, 1, 4, 16, 16), encoder_hidden_states_t5=_r(g, 1, 8, 32),
                encoder_hidden_states_llama3=_r(g, 4, 1, 8, 32), pooled_embeds=_r(g, 1, 32), return_dict=False)


def _stable_audio(g):  # [B, C, T] audio latents; RoPE over the T + 1 tokens (global token prepended)
    from diffusers.models.embeddings import get_1d_rotary_pos_embed

    rope = get_1d_rotary_pos_embed(16, 64 + 1, use_real=True, repeat_interleave_real=False)
    return dict(hidden_states=_r(g, 1, 4, 64), encoder_hidden_states=_r(g, 1, 8, 32),
                global_hidden_states=_r(g, 1, 1, 32), rotary_embedding=rope, return_dict=False)


def _hunyuandit(g):
    from diffusers.models.embeddings import get_2d_rotary_pos_embed

    rope = get_2d_rotary_pos_embed(32, ((0, 0), (8, 8)), (8, 8), use_real=True)  # head_dim 32 over the 8x8 patch grid
    return dict(hidden_states=_r(g, 1, 4, 16, 16), encoder_hidden_states=_r(g, 1, 8, 32),
                text_embedding_mask=torch.ones(1, 8, dtype=torch.int64), encoder_hidden_states_t5=_r(g, 1, 8, 32),
                text_embedding_mask_t5=torch.ones(1, 8, dtype=torch.int64),
                image_meta_size=torch.tensor([[16.0, 16.0, 16.0, 16.0, 0.0, 0.0]]),
                style=torch.zeros(1, dtype=torch.int64), image_rotary_emb=rope, return_dict=False)


def _easyanimate(g):
    return dict(hidden_states=_r(g, 1, 4, 2, 16, 16), encoder_hidden_states=_r(g, 1, 8, 32), return_dict=False)


def _cogview3(g):
    return _cogview(g)


def _qwenimage21(g):  # 8 text tokens, then one slot per 2x2 group of the 8 x 8 target latents (img_mask)
    slots = torch.cat([torch.zeros(1, 8, dtype=torch.bool), torch.ones(1, 16, dtype=torch.bool)], 1)
    return dict(hidden_states=_r(g, 1, 64, 16), encoder_hidden_states=_r(g, 1, 8, 32),
                encoder_hidden_states_mask=torch.ones(1, 8, dtype=torch.long), img_shapes=[[(1, 8, 8)]],
                img_mask=slots, return_dict=False)


def _hunyuanvideo15(g):  # text-to-video: zero image embeddings
    return dict(hidden_states=_r(g, 1, 4, 2, 8, 8), encoder_hidden_states=_r(g, 1, 8, 32),
                encoder_attention_mask=torch.ones(1, 8), encoder_hidden_states_2=_r(g, 1, 4, 32),
                encoder_attention_mask_2=torch.ones(1, 4), image_embeds=torch.zeros(1, 4, 32), return_dict=False)


_DUAL = ("transformer_blocks", "single_transformer_blocks")

EXTRA_MODELS: dict[str, ExtraModel] = {m.name: m for m in [
    ExtraModel("ltxvideo", "LTXVideoTransformer3DModel", dict(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=32, cross_attention_dim=64,
        num_layers=4, caption_channels=32), _ltx, pattern=2,
        # inductor alone (cache=None) deviates by the same 4.5e-5: LTX's RoPE takes cos/sin of fp32 angles up
        # to theta * pi / 2 ~ 1.6e4, where 1-ulp differences in the fused `theta ** linspace` matter
        rel_tol=1e-4),
    ExtraModel("sana", "SanaTransformer2DModel", dict(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=32, num_layers=4,
        num_cross_attention_heads=2, cross_attention_head_dim=32, cross_attention_dim=64, caption_channels=32,
        sample_size=16, patch_size=2, norm_elementwise_affine=False), _sana, pattern=2),
    ExtraModel("cogview4", "CogView4Transformer2DModel", dict(
        patch_size=2, in_channels=4, out_channels=4, num_layers=4, attention_head_dim=32, num_attention_heads=2,
        text_embed_dim=32, time_embed_dim=32, condition_dim=16, pos_embed_max_size=32, sample_size=16,
        rope_axes_dim=(16, 16)), _cogview, pattern=0),
    ExtraModel("auraflow", "AuraFlowTransformer2DModel", dict(
        sample_size=16, patch_size=2, in_channels=4, num_mmdit_layers=2, num_single_dit_layers=4,
        attention_head_dim=32, num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=64,
        out_channels=4, pos_embed_max_size=64), _auraflow, timestep_scale=1e-3,
        blocks=("joint_transformer_blocks", "single_transformer_blocks"), pattern=3),
    ExtraModel("chroma", "ChromaTransformer2DModel", dict(
        patch_size=1, in_channels=16, num_layers=2, num_single_layers=4, attention_head_dim=32,
        num_attention_heads=2, joint_attention_dim=32, axes_dims_rope=(8, 12, 12), approximator_num_channels=16,
        approximator_hidden_dim=32, approximator_layers=1), _chroma, timestep_scale=1e-3, blocks=_DUAL, pattern=1),
    ExtraModel("flux2", "Flux2Transformer2DModel", dict(
        patch_size=1, in_channels=16, num_layers=2, num_single_layers=4, attention_head_dim=32,
        num_attention_heads=2, joint_attention_dim=32, timestep_guidance_channels=32, axes_dims_rope=(8, 8, 8, 8),
        guidance_embeds=False), _flux2, timestep_scale=1e-3, blocks=_DUAL, pattern=1),
    ExtraModel("mochi", "MochiTransformer3DModel", dict(
        patch_size=2, num_attention_heads=2, attention_head_dim=32, num_layers=4, pooled_projection_dim=32,
        in_channels=4, text_embed_dim=32, time_embed_dim=32, max_sequence_length=8), _mochi, pattern=0),
    ExtraModel("allegro", "AllegroTransformer3DModel", dict(
        patch_size=2, patch_size_t=1, num_attention_heads=2, attention_head_dim=32, in_channels=4, out_channels=4,
        num_layers=4, cross_attention_dim=64, sample_height=16, sample_width=16, sample_frames=2,
        caption_channels=32), _allegro, timestep_dtype=torch.int64, pattern=2),
    ExtraModel("cogview3plus", "CogView3PlusTransformer2DModel", dict(
        patch_size=2, in_channels=4, num_layers=4, attention_head_dim=32, num_attention_heads=2, out_channels=4,
        text_embed_dim=32, time_embed_dim=32, condition_dim=16, pos_embed_max_size=32, sample_size=16),
        _cogview3, timestep_dtype=torch.int64, pattern=0),
    ExtraModel("lumina2", "Lumina2Transformer2DModel", dict(
        sample_size=16, patch_size=2, in_channels=4, hidden_size=64, num_layers=4, num_refiner_layers=1,
        num_attention_heads=2, num_kv_heads=2, multiple_of=16, axes_dim_rope=(8, 12, 12), axes_lens=(64, 32, 32),
        cap_feat_dim=32), _lumina2, timestep_scale=1e-3, blocks=("layers",), pattern=3,
        fullgraph=False),  # graph-breaks on data-dependent sequence lengths: the blocks sit in the second graph
    ExtraModel("zimage", "ZImageTransformer2DModel", dict(
        all_patch_size=(2,), all_f_patch_size=(1,), in_channels=4, dim=64, n_layers=4, n_refiner_layers=1,
        n_heads=2, n_kv_heads=2, cap_feat_dim=32, axes_dims=[8, 12, 12], axes_lens=[64, 32, 32]), _zimage,
        latent_key="x", timestep_key="t", timestep_scale=1e-3, list_latents=True, eager_first=True,
        blocks=("layers",), pattern=3),
    ExtraModel("skyreelsv2", "SkyReelsV2Transformer3DModel", dict(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=32, in_channels=4, out_channels=4,
        text_dim=32, freq_dim=32, ffn_dim=128, num_layers=4, rope_max_seq_len=32), _skyreels,
        timestep_dtype=torch.int64, blocks=("blocks",), pattern=2),
    ExtraModel("hidream", "HiDreamImageTransformer2DModel", dict(
        patch_size=2, in_channels=4, out_channels=4, num_layers=2, num_single_layers=2, attention_head_dim=32,
        num_attention_heads=2, caption_channels=[32, 32], text_emb_dim=32, num_routed_experts=2,
        num_activated_experts=1, axes_dims_rope=(8, 12, 12), max_resolution=(16, 16), llama_layers=[0, 1, 2, 3]),
        _hidream, timestep_key="timesteps", timestep_dtype=torch.int64,
        blocks=("double_stream_blocks", "single_stream_blocks"), pattern=0, fullgraph=False, unsupported=(
            "the MoE feed-forward routes tokens with data-dependent Python (bincount().cpu().numpy()): Dynamo graph-"
            "breaks inside every block, so no graph holds a run of blocks (NoBlockRunError says so)")),
    ExtraModel("stableaudio", "StableAudioDiTModel", dict(
        sample_size=64, in_channels=4, num_layers=4, attention_head_dim=32, num_attention_heads=2,
        num_key_value_attention_heads=1, out_channels=4, cross_attention_dim=64, time_proj_dim=32,
        global_states_input_dim=32, cross_attention_input_dim=32), _stable_audio, pattern=2),
    ExtraModel("hunyuandit", "HunyuanDiT2DModel", dict(
        num_attention_heads=2, attention_head_dim=32, in_channels=4, patch_size=2, sample_size=16, hidden_size=64,
        num_layers=6, cross_attention_dim=32, cross_attention_dim_t5=32, pooled_projection_dim=32, text_len=8,
        text_len_t5=8), _hunyuandit, blocks=("blocks",), pattern=2),
    ExtraModel("easyanimate", "EasyAnimateTransformer3DModel", dict(
        num_attention_heads=2, attention_head_dim=32, in_channels=4, out_channels=4, patch_size=2, sample_width=16,
        sample_height=16, num_layers=4, mmdit_layers=4, time_embed_dim=32, text_embed_dim=32),
        _easyanimate, pattern=0),
    ExtraModel("qwenimage21", "QwenImage21Transformer2DModel", dict(
        in_channels=16, out_channels=16, num_layers=4, attention_head_dim=32, num_attention_heads=2,
        context_in_dim=32, axes_dims_rope=(8, 12, 12)), _qwenimage21, timestep_scale=1e-3, pattern=1,
        output_tail=True,
        # `.tolist()` of a mask-derived length feeds Python control flow: with Dynamo's data-dependent captures
        # on, tracing fails on a guard, so the frame is traced again without them and graph-breaks there
        fullgraph=False),
    ExtraModel("hunyuanvideo15", "HunyuanVideo15Transformer3DModel", dict(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=32, num_layers=4,
        num_refiner_layers=1, text_embed_dim=32, text_embed_2_dim=32, image_embed_dim=32, rope_axes_dim=(8, 12, 12),
        task_type="t2v"), _hunyuanvideo15, pattern=0,
        # the text length comes from boolean-mask indexing: an unbacked size in the blocks' graph (the region's
        # cond gets its symbols as operands); `if is_t2v` on a tensor graph-breaks before the blocks
        fullgraph=False),
]}


def call(model, m: ExtraModel, x: torch.Tensor, t: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
    """One forward; the prediction as a tensor shaped like the latents' model output."""
    lat = [x] if m.list_latents else x
    out = model(**{m.latent_key: lat, m.timestep_key: t}, **inputs)[0]
    return out[0] if m.list_latents else out


def run_loop(model, m: ExtraModel, steps: int = 6, seed: int = 0) -> list[torch.Tensor]:
    """tiny_models.run_loop for these models: Euler steps along the output, decreasing timesteps."""
    inputs, ts = denoising_inputs(m, steps, seed)
    x = inputs.pop(m.latent_key)
    outs = []
    with torch.no_grad():
        for t in ts:
            out = call(model, m, x, t, inputs)
            outs.append(out)
            if out.shape != x.shape:
                out = out[:, -x.shape[1]:] if m.output_tail else out[:, : x.shape[1]]
            x = x - out.reshape(x.shape) / steps
    return outs


def cache_config(m: ExtraModel, spec: str):
    from dit_cache_fx.config import as_config

    base = as_config(spec)
    return base if m.timestep_key in ("timestep", "timesteps") else base.replace(timestep_arg=m.timestep_key)


def example_inputs(m: ExtraModel, seed: int = 0) -> dict[str, Any]:
    """The first step's full call kwargs (for `explain` and the eager-first call)."""
    inputs, ts = denoising_inputs(m, 6, seed)
    if m.list_latents:
        inputs[m.latent_key] = [inputs[m.latent_key]]
    return {**inputs, m.timestep_key: ts[0]}
