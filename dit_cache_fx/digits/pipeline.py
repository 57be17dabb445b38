"""`DigitsPipeline`: class-conditional sampling from the small pixel-space DiT shipped in `weights/`.

The model is a rectified-flow DiT (velocity prediction) sampled with `FlowMatchEulerDiscreteScheduler`.
Classifier-free guidance runs the transformer twice per step (cond, then uncond with the null class),
the way large DiT pipelines do it, so step caching sees two branches with the same timestep.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import torch
from diffusers import DiffusionPipeline, DiTTransformer2DModel, FlowMatchEulerDiscreteScheduler
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor

NUM_CLASSES = 10  # class id 10 is the null ("unconditional") label embedding


def weights_dir() -> Path:
    """The packaged weights folder (`transformer/`, `scheduler/`), resolved through importlib.resources."""
    res = files("dit_cache_fx.digits") / "weights"
    path = Path(str(res))
    if not (path / "transformer" / "config.json").is_file():
        raise FileNotFoundError(f"digits weights not found at {path}; run bench/train_digits.py")
    return path


class DigitsPipeline(DiffusionPipeline):
    model_cpu_offload_seq = "transformer"

    def __init__(self, transformer: DiTTransformer2DModel, scheduler: FlowMatchEulerDiscreteScheduler):
        super().__init__()
        self.register_modules(transformer=transformer, scheduler=scheduler)
        # geometry as plain ints: `self.transformer` may later be a compiled wrapper without `.config`
        cfg = transformer.config
        self.sample_size, self.in_channels = int(cfg.sample_size), int(cfg.in_channels)
        self.null_class = int(cfg.num_embeds_ada_norm)

    @torch.no_grad()
    def __call__(
        self,
        class_labels: int | list[int] | torch.Tensor,
        num_inference_steps: int = 28,
        guidance_scale: float = 3.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "np",
        return_dict: bool = True,
    ) -> ImagePipelineOutput | tuple:
        """Generate one 16×16 image per class label; images come back in [0, 1] as "np" (N, H, W, 1),
        "pt" (N, 1, H, W) or "pil" (grayscale). `guidance_scale <= 1` disables guidance (one call per step)."""
        param = next(self.transformer.parameters())
        device, dtype = param.device, param.dtype
        labels = torch.as_tensor(class_labels, dtype=torch.long, device=device).reshape(-1)
        n = labels.shape[0]
        null = torch.full_like(labels, self.null_class)
        shape = (n, self.in_channels, self.sample_size, self.sample_size)
        latents = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        for t in self.progress_bar(self.scheduler.timesteps):
            x = latents.to(dtype)
            timestep = t.expand(n).to(dtype)
            v = self.transformer(x, timestep=timestep, class_labels=labels, return_dict=False)[0].float()
            if guidance_scale > 1.0:
                v_u = self.transformer(x, timestep=timestep, class_labels=null, return_dict=False)[0].float()
                v = v_u + guidance_scale * (v - v_u)
            latents = self.scheduler.step(v, t, latents, return_dict=False)[0]

        images = (latents / 2 + 0.5).clamp(0, 1)
        if output_type == "pt":
            out = images
        elif output_type in ("np", "pil"):
            out = images.permute(0, 2, 3, 1).cpu().numpy()
            out = self.numpy_to_pil(out) if output_type == "pil" else out
        else:
            raise ValueError(f"output_type must be 'np', 'pil' or 'pt', got {output_type!r}")
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=out) if return_dict else (out,)


def load_pipeline(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                  path: str | Path | None = None) -> DigitsPipeline:
    """Load the shipped digits DiT (or one saved at `path`) with `from_pretrained`."""
    root = Path(path) if path is not None else weights_dir()
    transformer = DiTTransformer2DModel.from_pretrained(root, subfolder="transformer", torch_dtype=dtype,
                                                        low_cpu_mem_usage=False)
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(root, subfolder="scheduler")
    pipe = DigitsPipeline(transformer=transformer.eval(), scheduler=scheduler)
    return pipe.to(device)


__all__ = ["DigitsPipeline", "NUM_CLASSES", "load_pipeline", "weights_dir"]
