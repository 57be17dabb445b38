"""The README's region picture: a FLUX.1-shaped model (19 double + 38 single blocks, tiny widths, random
weights) compiled with cache-dit's default F8B0 and with a per-list mapping, drawn by `ExplainReport.save`.

    python bench/regions_picture.py            # writes bench/regions.png and bench/regions.svg
"""

from pathlib import Path

import torch
from diffusers import FluxTransformer2DModel

import dit_cache_fx


def main() -> None:
    torch.manual_seed(0)
    model = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=19, num_single_layers=38,
                                   attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                   pooled_projection_dim=32, guidance_embeds=False, axes_dims_rope=(4, 6, 6)).eval()
    inputs = dict(hidden_states=torch.randn(1, 16, 16), encoder_hidden_states=torch.randn(1, 4, 32),
                  pooled_projections=torch.randn(1, 32), timestep=torch.tensor([1.0]), img_ids=torch.rand(16, 3),
                  txt_ids=torch.zeros(4, 3), return_dict=False)
    compiled = dit_cache_fx.compile(model, cache={"transformer_blocks+single_transformer_blocks": "F8B0",
                                                  "*": None})
    with torch.no_grad():
        compiled(**inputs)
    report = dit_cache_fx.explain(compiled)
    print(report)
    here = Path(__file__).parent
    for suffix in (".png", ".svg"):
        print("wrote", report.save(here / f"regions{suffix}"))


if __name__ == "__main__":
    main()
