"""Context parallelism (diffusers' own `enable_parallelism`, Ulysses and Ring; Ulysses also in regional mode)
on 2 CPU processes over gloo: the threshold sits between the two ranks' *local* diffs at a consulted step —
deciding on them, one rank would cache and the other compute, and the computing one would wait forever in
the skipped blocks' all-to-all. With the diff sums all-reduced in the graph every rank caches the same steps,
and those steps and the latents equal a single-process run on the full sequence."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from dit_cache_fx import _compat

from ranks import run_ranks

STEPS = 3  # step 0 computed (W1), step 1 decided on the diff, step 2 computed again (MC1)
SPEC = "F1B0_W1MC1"
TIMEOUT_S = 420

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")


def _patch_for_cpu(ring: bool) -> None:
    """Tests only: diffusers' mesh setup divides by torch.accelerator.device_count(), 0 on a CPU build; and its
    native attention cannot return the log-sum-exp Ring attention asks for, so a math SDPA stands in."""
    torch.accelerator.device_count = lambda: 1
    if not ring:
        return
    import diffusers.models.attention_dispatch as ad

    native = ad._native_attention_forward_op

    def forward_op(ctx, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                   enable_gqa=False, return_lse=False, _save_ctx=True, _parallel_config=None):
        if not return_lse:
            return native(ctx, query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, False,
                          _save_ctx=_save_ctx, _parallel_config=_parallel_config)
        q, k, v = (x.permute(0, 2, 1, 3) for x in (query, key, value))  # B, H, S, D
        scores = (q @ k.transpose(-1, -2)) * (scale if scale is not None else q.shape[-1] ** -0.5)
        if attn_mask is not None:
            scores = scores + attn_mask
        out = torch.softmax(scores.float(), -1).to(v.dtype) @ v
        return out.permute(0, 2, 1, 3), torch.logsumexp(scores.float(), -1).permute(0, 2, 1).contiguous()

    ad._native_attention_forward_op = forward_op


def _model(name: str):
    from tiny_models import MODELS

    return MODELS[name].build()


def _loop(model, name: str, cfg: bool, steps: int = STEPS):
    """A simulated denoising loop; Wan with separate CFG (cond, then uncond with zero text)."""
    from tiny_models import MODELS, denoising_inputs

    m = MODELS[name]
    inputs, ts = denoising_inputs(m, steps)
    x = inputs.pop(m.latent_key)
    uncond = {k: torch.zeros_like(v) if k == "encoder_hidden_states" else v for k, v in inputs.items()}
    with torch.no_grad():
        for t in ts:
            out = model(**{m.latent_key: x}, timestep=t, **inputs)[0]
            if cfg:
                out_u = model(**{m.latent_key: x}, timestep=t, **uncond)[0]
                out = out_u + 2.0 * (out - out_u)
            x = x - out.reshape(x.shape) / steps
    return x


def _local_diffs(model, name: str) -> tuple[float, float]:
    """(Σ|prev − cur|, Σ|prev|) of this rank's Fn residual at step 1 against step 0, uncompiled."""
    from tiny_models import MODELS

    m = MODELS[name]
    blocks = [b for lst in m.blocks for b in model.get_submodule(lst)]
    seen = []

    def pre(mod, args, kwargs):
        seen.append(["in", (kwargs.get("hidden_states", args[0] if args else None))])

    def post(mod, args, kwargs, out):
        h = out if isinstance(out, torch.Tensor) else (out[1] if m.pattern == 1 else out[0])
        seen[-1].append(h)

    handles = [blocks[0].register_forward_pre_hook(pre, with_kwargs=True),
               blocks[0].register_forward_hook(post, with_kwargs=True)]
    _loop(model, name, cfg=name == "wan")
    for h in handles:
        h.remove()
    calls = seen[:: 2 if name == "wan" else 1]  # branch 0
    r0, r1 = (c[2] - (c[1] if c[1].shape == c[2].shape else c[1].chunk(2, 1)[dist.get_rank()]) for c in calls[:2])
    return float((r0.double() - r1.double()).abs().sum()), float(r0.double().abs().sum())


def _ranks_decide(rank: int, world: int, mode: str) -> dict:
    """One rank: Flux and Wan under context parallelism, compiled at a threshold where the ranks' local diffs
    would disagree (see the module docstring)."""
    mode, _, regional = mode.partition("-")
    from diffusers import ContextParallelConfig, WanTransformer3DModel
    from torch._dynamo.utils import counters

    import dit_cache_fx
    from dit_cache_fx.reference import EagerDBCache

    from tiny_models import MODELS

    _patch_for_cpu(ring=mode == "ring")
    result = {}
    for name in ("flux", "wan"):
        cp = _model(name)
        cp.set_attention_backend("native")
        plan = {k: v for k, v in WanTransformer3DModel._cp_plan.items() if k != ""} if name == "wan" else None
        degree = {"ulysses_degree": world} if mode == "ulysses" else {"ring_degree": world}
        cp.enable_parallelism(config=ContextParallelConfig(**degree), cp_plan=plan)
        # the ranks' local diffs at step 1 (this eager run is also the warm-up Wan's CP hooks need)
        sums = [None] * world
        dist.all_gather_object(sums, _local_diffs(cp, name))
        local = [a / b for a, b in sums]
        overall = sum(a for a, _ in sums) / sum(b for _, b in sums)
        thr = (overall + max(local)) / 2  # the rank at max(local) alone would compute, the other cache
        config = dit_cache_fx.CacheConfig.parse(f"{SPEC}_R{thr}")

        single = _model(name)  # single process, full sequence: the eager oracle at the same threshold
        ora = EagerDBCache.single(single, config, MODELS[name].blocks, MODELS[name].pattern)
        want = _loop(single, name, cfg=name == "wan")
        ora.remove()

        counters.clear()
        compiled = dit_cache_fx.compile(cp, cache=config, regional=bool(regional))
        got = _loop(compiled, name, cfg=name == "wan")
        s = dit_cache_fx.summary(compiled)
        result[name] = dict(local=local, overall=overall, thr=thr, cached=s.cached_steps,
                            cached_uncond=s.branches[1].cached_steps if 1 in s.branches else None,
                            oracle=ora.cached_steps(), oracle_uncond=ora.cached_steps(1),
                            err=float((got - want).norm() / want.norm()), breaks=len(counters["graph_break"]),
                            group=dit_cache_fx.api.handle_of(compiled).group,
                            outer=[g.outer for g in dit_cache_fx.api.handle_of(compiled).graphs])
    return result


@pytest.mark.skipif(_compat.context_parallel_unsupported() is not None,
                    reason="torch < 2.13: compile() raises UnsupportedTorchError (tests/test_errors.py)")
@pytest.mark.parametrize("mode", ["ulysses", "ring", "ulysses-regional"])
def test_context_parallel_ranks_decide_together(mode, tmp_path):
    ranks = run_ranks(_ranks_decide, tmp_path, mode, timeout_s=TIMEOUT_S)
    for name in ("flux", "wan"):
        r0, r1 = ranks[0][name], ranks[1][name]
        lo, hi = sorted(r0["local"])
        assert lo < r0["overall"] < r0["thr"] < hi  # deciding locally, the ranks would disagree at step 1
        assert r0["group"] is not None and r0["breaks"] == r1["breaks"] == 0
        assert r0["cached"] == r1["cached"] == r0["oracle"] == [1], name  # all ranks: step 1, as one process
        assert r0["cached_uncond"] == r1["cached_uncond"] == (r0["oracle_uncond"] if name == "wan" else None)
        assert r0["err"] <= 1e-4 and r1["err"] <= 1e-4, name
        assert set(r0["outer"]) == {"python" if mode.endswith("regional") else "inductor"}
