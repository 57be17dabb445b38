"""What the demo and the fidelity benchmark share: sampling, PSNR, one-line error descriptions."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from dit_cache_fx.digits.pipeline import DigitsPipeline
from dit_cache_fx.metrics import psnr as _psnr


def generate(pipe: DigitsPipeline, labels: Sequence[int], steps: int, guidance: float, seed: int) -> torch.Tensor:
    """(N, 1, 16, 16) images in [0, 1] for `labels`, seeded."""
    g = torch.Generator().manual_seed(seed)
    return pipe(list(labels), num_inference_steps=steps, guidance_scale=guidance, generator=g, output_type="pt").images


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of images in [0, 1] (one MSE over the whole batch, in float64): `dit_cache_fx.metrics.psnr`."""
    return _psnr(a, b, data_range=1.0)


def describe_error(e: BaseException) -> str:
    """One line naming the root cause (Dynamo wraps other backend errors in BackendCompilerFailed)."""
    inner = getattr(e, "inner_exception", None) or e.__cause__ or e
    lines = [ln for ln in str(inner).splitlines() if ln.strip()]
    return f"{type(inner).__name__}: {lines[0] if lines else ''}"
