"""Tiny random-weight diffusers *pipelines* (no hub downloads, no text encoders).

Each entry builds a real pipeline object around a tiny transformer from `tiny_models` / `extra_models`
and a scheduler configured like the released model's, with `None` for the VAE, text encoders and
tokenizers (the pipelines fall back to their default scale factors, and `output_type="latent"` never
decodes). `call_kwargs(steps)` gives the `pipe(**kwargs)` arguments: random `prompt_embeds` (and
negative / pooled embeds and masks where the pipeline takes them), a seeded generator, a tiny
resolution, `output_type="latent"`. So a test runs the pipeline's own `__call__`: its scheduler, its
CFG batching, its `cache_context` calls and its timestep conventions.

`record_calls(pipe)` records what the transformer receives on each call.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import diffusers
import torch
from diffusers import (
    CogVideoXDDIMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    FlowMatchHeunDiscreteScheduler,
    UniPCMultistepScheduler,
)

from extra_models import EXTRA_MODELS
from tiny_models import MODELS

# the pipeline classes are diffusers' dummies (ImportError on construction) without `transformers`, even though
# no transformers model is ever built here: tests should skip on this
HAVE_TRANSFORMERS = diffusers.utils.is_transformers_available()

TEXT_DIM = 32  # every tiny transformer takes 32-dim text features (and 32-dim pooled projections)
COND_LEN, UNCOND_LEN = 8, 5  # prompt tokens; negative prompts of another length where the pipeline allows it


@dataclass(frozen=True)
class TinyPipeline:
    name: str
    build: Callable[[], DiffusionPipeline]
    call_kwargs: Callable[[int], dict[str, Any]]  # steps -> pipe(**kwargs); fresh tensors and generator each call
    transformer_attrs: tuple[str, ...] = ("transformer",)
    cfg_calls_per_step: int = 1  # transformer calls per model evaluation: 2 = separate cond and uncond calls
    evals_per_step: int = 1  # model evaluations per step (scheduler order): 2 for Heun, whose first step has one
    increasing_timesteps: bool = False  # the transformer sees t = 1 - sigma (or 1000 - t): 0 is pure noise
    notes: str = ""

    def expected_calls(self, steps: int) -> int:
        return (steps * self.evals_per_step - (self.evals_per_step - 1)) * self.cfg_calls_per_step


def _r(g: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=g)


def _transformer(model: str, seed: int = 0) -> torch.nn.Module:
    return (MODELS.get(model) or EXTRA_MODELS[model]).build(seed)


def _builder(cls: str, scheduler: Callable[[], Any], transformers: dict[str, tuple[str, int]],
             **extra: Any) -> Callable[[], DiffusionPipeline]:
    """A pipeline with the given transformers ({attr: (tiny model name, seed)}) and None for every other
    required component (VAE, text encoders, tokenizers)."""
    def build() -> DiffusionPipeline:
        pipe_cls = getattr(diffusers, cls)
        params = inspect.signature(pipe_cls.__init__).parameters
        comps = {n: None for n, p in params.items() if n != "self" and p.default is inspect.Parameter.empty}
        comps.update({attr: _transformer(m, seed) for attr, (m, seed) in transformers.items()})
        pipe = pipe_cls(**{**comps, "scheduler": scheduler(), **extra})
        pipe.set_progress_bar_config(disable=True)
        return pipe
    return build


def _prompts(neg_len: int | None = None, mask: torch.dtype | None = None, pooled: bool = False,
             mask_name: str = "prompt_attention_mask") -> Callable[[torch.Generator], dict[str, Any]]:
    """prompt_embeds [1, COND_LEN, TEXT_DIM] and, with `neg_len`, negative_prompt_embeds of that length;
    optional all-ones masks (`<prefix><mask_name>`) and pooled embeds [1, TEXT_DIM]."""
    def make(g: torch.Generator) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for prefix, n in (("", COND_LEN), ("negative_", neg_len)):
            if n is None:
                continue
            out[f"{prefix}prompt_embeds"] = _r(g, 1, n, TEXT_DIM)
            if pooled:
                out[f"{prefix}pooled_prompt_embeds"] = _r(g, 1, TEXT_DIM)
            if mask is not None:
                out[prefix + mask_name] = torch.ones(1, n, dtype=mask)
        return out
    return make


def _zimage_prompts(g: torch.Generator) -> dict[str, Any]:  # Z-Image takes lists of per-sample [L, D] embeds
    return dict(prompt_embeds=[_r(g, COND_LEN, TEXT_DIM)], negative_prompt_embeds=[_r(g, UNCOND_LEN, TEXT_DIM)])


def _kwargs(size: int, prompts: Callable[[torch.Generator], dict[str, Any]], **static: Any):
    def call_kwargs(steps: int) -> dict[str, Any]:
        return dict(num_inference_steps=steps, output_type="latent", generator=torch.Generator().manual_seed(0),
                    height=size, width=size, **static, **prompts(torch.Generator().manual_seed(1)))
    return call_kwargs


# schedulers set up like the released models' scheduler configs (written from memory: no hub access to check)
def _flux_sched():
    return FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15)


def _sd3_sched():
    return FlowMatchEulerDiscreteScheduler(shift=3.0)


def _wan_sched():
    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)


_P = TinyPipeline
_FLOAT_MASK = torch.float32
PIPELINES: dict[str, TinyPipeline] = {p.name: p for p in [
    _P("flux", _builder("FluxPipeline", _flux_sched, {"transformer": ("flux", 0)}),
       _kwargs(128, _prompts(pooled=True)),
       notes="timestep = t / 1000 (sigmas in (0, 1]), all kwargs; no guidance embedding in the tiny model"),
    _P("flux_true_cfg", _builder("FluxPipeline", _flux_sched, {"transformer": ("flux", 0)}),
       _kwargs(128, _prompts(COND_LEN, pooled=True), true_cfg_scale=4.0), cfg_calls_per_step=2,
       notes="true CFG: separate cache_context('cond') / ('uncond') calls. The negative text has the *same* length: "
             "FluxPipeline raises ValueError when prompt_embeds and negative_prompt_embeds differ in shape (T5 pads "
             "both to max_sequence_length, so real Flux never sees different lengths); qwenimage covers that case"),
    _P("sd3", _builder("StableDiffusion3Pipeline", _sd3_sched, {"transformer": ("sd3", 0)}),
       _kwargs(128, _prompts(COND_LEN, pooled=True), guidance_scale=7.0),
       notes="CFG batched: one call on [uncond, cond] (batch 2); no cache_context"),
    _P("pixart_sigma", _builder("PixArtSigmaPipeline", DPMSolverMultistepScheduler, {"transformer": ("pixart", 0)}),
       _kwargs(128, _prompts(COND_LEN, mask=torch.int64), guidance_scale=4.5, use_resolution_binning=False,
               negative_prompt=None),
       notes="CFG batched; latents passed positionally; int64 timesteps; DPM-Solver++ (multistep: 1 call per step); "
             "epsilon prediction with random weights blows the latents up (std ~ 200), still finite"),
    _P("qwenimage", _builder("QwenImagePipeline", lambda: FlowMatchEulerDiscreteScheduler(
           use_dynamic_shifting=True, base_shift=0.5, max_shift=0.9, max_image_seq_len=8192, shift_terminal=0.02),
           {"transformer": ("qwenimage", 0)}),
       _kwargs(128, _prompts(UNCOND_LEN, mask=torch.int64, mask_name="prompt_embeds_mask"), true_cfg_scale=4.0),
       cfg_calls_per_step=2,
       notes="true CFG with cache_context cond/uncond; all-ones masks are dropped by the pipeline (passed as None)"),
    _P("wan21", _builder("WanPipeline", _wan_sched, {"transformer": ("wan", 0)}),
       _kwargs(128, _prompts(UNCOND_LEN), num_frames=5, guidance_scale=5.0), cfg_calls_per_step=2,
       notes="CFG as separate cond/uncond calls; cache_context gets step_index / sigma / num_inference_steps"),
    _P("wan22", _builder("WanPipeline", _wan_sched, {"transformer": ("wan", 0), "transformer_2": ("wan", 1)},
                         boundary_ratio=0.875),
       _kwargs(128, _prompts(UNCOND_LEN), num_frames=5, guidance_scale=4.0, guidance_scale_2=3.0),
       transformer_attrs=("transformer", "transformer_2"), cfg_calls_per_step=2,
       notes="two experts: `transformer` while t >= 875, then `transformer_2` (different random weights)"),
    _P("hunyuanvideo", _builder("HunyuanVideoPipeline", lambda: FlowMatchEulerDiscreteScheduler(shift=7.0),
                                {"transformer": ("hunyuanvideo", 0)}),
       _kwargs(128, _prompts(mask=_FLOAT_MASK, pooled=True), num_frames=5, guidance_scale=6.0),
       notes="guidance-distilled: no CFG call, guidance (x1000) goes in as an embedding"),
    _P("cogvideox", _builder("CogVideoXPipeline", lambda: CogVideoXDDIMScheduler(
           beta_end=0.012, beta_schedule="scaled_linear", beta_start=0.00085, clip_sample=False,
           prediction_type="v_prediction", rescale_betas_zero_snr=True, set_alpha_to_one=True,
           snr_shift_scale=3.0, timestep_spacing="trailing"), {"transformer": ("cogvideox", 0)}),
       _kwargs(128, _prompts(COND_LEN), num_frames=5, guidance_scale=6.0),
       notes="CFG batched under cache_context('cond_uncond'); text must be exactly max_text_seq_length=8 tokens "
             "(sincos positions over text + video)"),
    _P("ltx", _builder("LTXPipeline", lambda: FlowMatchEulerDiscreteScheduler(
           use_dynamic_shifting=True, base_image_seq_len=1024, base_shift=0.95, max_shift=2.05, shift_terminal=0.1),
           {"transformer": ("ltxvideo", 0)}),
       _kwargs(256, _prompts(COND_LEN, mask=torch.int64), num_frames=9, guidance_scale=3.0),
       notes="CFG batched under cache_context('cond_uncond'); latents are pre-patchified tokens [B, F*H*W, C]"),
    _P("mochi", _builder("MochiPipeline", FlowMatchEulerDiscreteScheduler, {"transformer": ("mochi", 0)}),
       _kwargs(128, _prompts(COND_LEN, mask=torch.bool), num_frames=7, guidance_scale=4.5),
       notes="default FlowMatchEuler scheduler: decreasing timesteps"),
    _P("mochi_inverted", _builder("MochiPipeline", lambda: FlowMatchEulerDiscreteScheduler(invert_sigmas=True),
                                  {"transformer": ("mochi", 0)}),
       _kwargs(128, _prompts(COND_LEN, mask=torch.bool), num_frames=7, guidance_scale=4.5),
       increasing_timesteps=True,
       notes="invert_sigmas=True as in genmo/mochi-1-preview: the transformer sees t = 1000 * (1 - sigma)"),
    _P("sana", _builder("SanaPipeline", lambda: DPMSolverMultistepScheduler(
           prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0), {"transformer": ("sana", 0)}),
       _kwargs(512, _prompts(COND_LEN, mask=torch.int64), guidance_scale=4.5, use_resolution_binning=False,
               negative_prompt=None),
       notes="CFG batched; latents passed positionally; VAE scale 32 -> 512 px gives 16x16 latents"),
    _P("chroma", _builder("ChromaPipeline", _flux_sched, {"transformer": ("chroma", 0)}),
       _kwargs(128, _prompts(UNCOND_LEN, mask=_FLOAT_MASK), guidance_scale=5.0), cfg_calls_per_step=2,
       notes="CFG as separate calls *without* cache_context; float masks as the pipeline's encode_prompt makes"),
    _P("cogview4", _builder("CogView4Pipeline", lambda: FlowMatchEulerDiscreteScheduler(
           use_dynamic_shifting=True, base_shift=0.25, max_shift=0.75, time_shift_type="linear"),
           {"transformer": ("cogview4", 0)}),
       _kwargs(128, _prompts(UNCOND_LEN), guidance_scale=5.0), cfg_calls_per_step=2,
       notes="CFG as separate cache_context cond/uncond calls; the transformer gets the *unshifted* integer "
             "timesteps linspace(1000, 1) while the scheduler steps along shifted sigmas"),
    _P("auraflow", _builder("AuraFlowPipeline", lambda: FlowMatchEulerDiscreteScheduler(shift=1.73),
                            {"transformer": ("auraflow", 0)}),
       _kwargs(128, _prompts(COND_LEN, mask=torch.int64), guidance_scale=3.5),
       notes="CFG batched; latents passed positionally; timestep = t / 1000"),
    _P("lumina2", _builder("Lumina2Pipeline", lambda: FlowMatchEulerDiscreteScheduler(shift=6.0),
                           {"transformer": ("lumina2", 0)}),
       _kwargs(128, _prompts(COND_LEN, mask=torch.bool), guidance_scale=4.0), cfg_calls_per_step=2,
       increasing_timesteps=True,
       notes="CFG as separate calls without cache_context; timestep = 1 - t / 1000 (increasing); negative text "
             "of the same length (the pipeline rejects other shapes)"),
    _P("zimage", _builder("ZImagePipeline", lambda: FlowMatchEulerDiscreteScheduler(shift=3.0),
                          {"transformer": ("zimage", 0)}),
       _kwargs(128, _zimage_prompts, guidance_scale=5.0), increasing_timesteps=True,
       notes="all inputs positional (x list, t, cap_feats list); CFG batched as lists of 2 samples with "
             "different caption lengths; t = (1000 - t) / 1000 (increasing)"),
    _P("heun", _builder("StableDiffusion3Pipeline", lambda: FlowMatchHeunDiscreteScheduler(shift=3.0),
                        {"transformer": ("sd3", 0)}),
       _kwargs(128, _prompts(COND_LEN, pooled=True), guidance_scale=7.0), evals_per_step=2,
       notes="SD3 with FlowMatchHeunDiscreteScheduler (order 2): 2 * steps - 1 calls, [t0, t1, t1, t2, t2, ...]; "
             "the two calls at one timestep see different latents. (Flux can't take it: Flux passes custom "
             "sigmas, which the Heun scheduler's set_timesteps rejects)"),
]}


# ---------------------------------------------------------------------------------------------- recording
_LATENT_KEYS = ("hidden_states", "x", "sample")
_TIMESTEP_KEYS = ("timestep", "timesteps", "t")
_TEXT_KEYS = ("encoder_hidden_states", "cap_feats", "encoder_hidden_states_t5")


@dataclass(frozen=True)
class TransformerCall:
    attr: str  # which pipeline attribute was called ("transformer" / "transformer_2")
    context: str | None  # the name of the enclosing `cache_context(...)`, None outside one
    n_args: int  # positional-argument count
    kwarg_names: tuple[str, ...]
    arg_names: tuple[str, ...]  # names of the positional arguments (from the forward signature)
    timestep: float | None  # first element
    timestep_dtype: torch.dtype | None
    timestep_shape: tuple[int, ...] | None
    latent_shape: Any  # tuple, or a list of tuples for list inputs (Z-Image)
    text_shape: Any


def _shape(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return tuple(v.shape)
    if isinstance(v, (list, tuple)):
        return [_shape(x) for x in v]
    return None


def _first(bound: dict[str, Any], keys: tuple[str, ...]) -> Any:
    return next((bound[k] for k in keys if k in bound), None)


@contextlib.contextmanager
def record_calls(pipe: DiffusionPipeline, attr: str | tuple[str, ...] = "transformer",
                 contexts: bool = True) -> Iterator[list[TransformerCall]]:
    """Record every call of `pipe.<attr>` (a name or several) into the yielded list, in call order.

    Uses a forward pre-hook (with kwargs); with `contexts`, also wraps the module's `cache_context` on the
    instance to note the context name each call runs under. Both are removed on exit.
    """
    calls: list[TransformerCall] = []
    undo: list[Callable[[], None]] = []
    for name in (attr,) if isinstance(attr, str) else attr:
        module = getattr(pipe, name, None)
        if module is None:
            continue
        params = list(inspect.signature(getattr(module, "_orig_mod", module).forward).parameters)
        current: list[str | None] = [None]

        def hook(mod, args, kwargs, name=name, params=params, current=current):
            bound = {**dict(zip(params, args)), **kwargs}
            t = _first(bound, _TIMESTEP_KEYS)
            tt = t if isinstance(t, torch.Tensor) else None
            calls.append(TransformerCall(
                attr=name, context=current[0], n_args=len(args), kwarg_names=tuple(kwargs),
                arg_names=tuple(params[: len(args)]),
                timestep=None if t is None else float(tt.flatten()[0]) if tt is not None else float(t),
                timestep_dtype=None if tt is None else tt.dtype, timestep_shape=None if tt is None else tuple(tt.shape),
                latent_shape=_shape(_first(bound, _LATENT_KEYS)), text_shape=_shape(_first(bound, _TEXT_KEYS))))

        undo.append(module.register_forward_pre_hook(hook, with_kwargs=True).remove)
        if contexts and hasattr(module, "cache_context"):
            undo.append(_wrap_cache_context(module, current))
    try:
        yield calls
    finally:
        for u in reversed(undo):
            u()


def _wrap_cache_context(module: torch.nn.Module, current: list[str | None]) -> Callable[[], None]:
    had, prev, orig = "cache_context" in module.__dict__, module.__dict__.get("cache_context"), module.cache_context

    @contextlib.contextmanager
    def cache_context(name, *args, **kwargs):
        outer, current[0] = current[0], name
        try:
            with orig(name, *args, **kwargs):
                yield
        finally:
            current[0] = outer

    module.__dict__["cache_context"] = cache_context

    def restore():
        if module.__dict__.get("cache_context") is cache_context:
            if had:
                module.__dict__["cache_context"] = prev
            else:
                del module.__dict__["cache_context"]
    return restore
