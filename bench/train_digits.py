"""Train the small DiT shipped in dit_cache_fx/digits/weights (≤ 12 minutes + ~30 s of checks, on CPU).

A class-conditional diffusers `DiTTransformer2DModel` (pixel space, 16×16×1, patch 2, 6 blocks,
hidden 128, ~2.1 M parameters) on scikit-learn's digits upsampled to 16×16, trained as a rectified
flow (velocity prediction, sampled with `FlowMatchEulerDiscreteScheduler`). Labels are dropped to the
null class id 10 with probability 0.1 so classifier-free guidance works. The weights are saved in fp16
(4.3 MB) with an EMA of the training weights.

The cosine LR schedule runs over --steps or over the --max-minutes budget, whichever ends first, so a
run on busy shared cores still finishes in time with a decayed LR (the shipped run: 939 of 1400 steps in
12 min on 1 thread, final loss 0.151). --max-minutes 0 makes a run depend on --seed only.

    python bench/train_digits.py                      # writes dit_cache_fx/digits/weights/
    python bench/train_digits.py --steps 50 --out /tmp/w   # smoke run
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DiTTransformer2DModel, FlowMatchEulerDiscreteScheduler

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from dit_cache_fx.digits import NUM_CLASSES, accuracy, digits_16x16, load_pipeline  # noqa: E402

MODEL_CONFIG = dict(
    sample_size=16, in_channels=1, out_channels=1, patch_size=2, num_layers=6, num_attention_heads=4,
    attention_head_dim=32, num_embeds_ada_norm=NUM_CLASSES, norm_num_groups=32,
)
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "dit_cache_fx" / "digits" / "weights"


def make_model() -> DiTTransformer2DModel:
    model = DiTTransformer2DModel(**MODEL_CONFIG)
    # Each block's LabelEmbedding drops labels on its own in train mode; we drop once per sample
    # instead (below), so every block sees the same label. Its table keeps the null row (id 10).
    for m in model.modules():
        if hasattr(m, "dropout_prob") and hasattr(m, "embedding_table"):
            m.dropout_prob = 0.0
    return model


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random ±1 px shifts at 16×16 (half a pixel of the original 8×8), background-padded."""
    pad = F.pad(x, (1, 1, 1, 1), value=-1.0)
    dx, dy = torch.randint(0, 3, (2, x.shape[0]), generator=g).tolist()
    return torch.stack([pad[i, :, dy[i]:dy[i] + 16, dx[i]:dx[i] + 16] for i in range(x.shape[0])])


def train(steps: int, batch: int, lr: float, seed: int, max_minutes: float, p_uncond: float,
          ema_decay: float, shift_aug: float) -> DiTTransformer2DModel:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    data, labels = digits_16x16()
    model = make_model().train()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params / 1e6:.2f} M parameters, {len(model.transformer_blocks)} blocks; "
          f"data: {len(data)} digits; {steps} steps × batch {batch}", flush=True)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warmup, budget = max(1, steps // 20), max_minutes * 60 if max_minutes > 0 else math.inf

    t0, avg, step = time.time(), None, 0
    while True:
        # cosine decay over `steps`, or over the time budget if that runs out first (shared CPUs)
        progress = max(step / steps, (time.time() - t0) / budget)
        if progress >= 1:
            break
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / warmup) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))
        idx = torch.randint(0, len(data), (batch,), generator=g)
        x0, y = data[idx], labels[idx]
        if shift_aug > 0:
            mask = torch.rand(batch, generator=g) < shift_aug
            if mask.any():
                x0 = x0.clone()
                x0[mask] = augment(x0[mask], g)
        y = torch.where(torch.rand(batch, generator=g) < p_uncond, NUM_CLASSES, y)
        noise = torch.randn(x0.shape, generator=g)
        sigma = torch.rand(batch, generator=g)
        s = sigma[:, None, None, None]
        xt = (1 - s) * x0 + s * noise
        pred = model(xt, timestep=sigma * 1000, class_labels=y, return_dict=False)[0]
        loss = F.mse_loss(pred, noise - x0)

        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        decay = min(ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), model.parameters()):
                pe.lerp_(p, 1 - decay)

        avg = loss.item() if avg is None else 0.98 * avg + 0.02 * loss.item()
        if step % 50 == 0:
            elapsed = time.time() - t0
            print(f"step {step:5d}/{steps}  loss {avg:.4f}  lr {opt.param_groups[0]['lr']:.2e}  "
                  f"{elapsed / 60:5.1f} min  progress {progress:.0%}", flush=True)
        step += 1
    note = "" if step >= steps else f" (time budget of {max_minutes} min reached: {step} of {steps} steps)"
    print(f"training: {step} steps in {(time.time() - t0) / 60:.1f} min{note}, "
          f"final loss (running mean over batches) {avg:.4f}", flush=True)
    return ema


def save(model: DiTTransformer2DModel, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model.to(torch.float16).save_pretrained(out / "transformer", safe_serialization=True)
    FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0).save_pretrained(out / "scheduler")
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"saved to {out} ({size / 1e6:.1f} MB)", flush=True)


def check(out: Path, steps: int = 28, guidance: float = 3.0, n_per_class: int = 2) -> float:
    pipe = load_pipeline(path=out)
    pipe.set_progress_bar_config(disable=True)
    labels = [c for c in range(NUM_CLASSES) for _ in range(n_per_class)]
    images = pipe(labels, num_inference_steps=steps, guidance_scale=guidance,
                  generator=torch.Generator().manual_seed(0)).images
    acc = accuracy(images, labels)
    print(f"judge accuracy on {len(labels)} samples ({steps} steps, guidance {guidance}): {acc:.0%}", flush=True)
    return acc


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=1400)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--p-uncond", type=float, default=0.1, help="label dropout to the null class")
    p.add_argument("--ema", type=float, default=0.995)
    p.add_argument("--shift-aug", type=float, default=0.0, help="probability of a ±1 px shift")
    p.add_argument("--max-minutes", type=float, default=12.0,
                   help="wall-time budget: the LR schedule ends at whichever of --steps / budget comes first "
                        "(0 = no budget, fully deterministic)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads; 1 is robust when the cores are shared (2 threads thrash under load)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    ema = train(a.steps, a.batch, a.lr, a.seed, a.max_minutes, a.p_uncond, a.ema, a.shift_aug)
    save(ema, a.out)
    check(a.out)


if __name__ == "__main__":
    main()
