"""A toy DiT whose first block's residual is exactly `timestep * w`, so residual diffs are known by hand."""

import torch
from torch import nn


class LinearBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.linspace(0.5, 1.5, dim))
        self.lin = nn.Linear(dim, dim)
        self.mix = nn.Parameter(torch.zeros(()))  # 0: residual = temb * w exactly

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        return hidden_states + temb * self.w + self.mix * torch.tanh(self.lin(hidden_states))


class ToyDiT(nn.Module):
    def __init__(self, dim: int = 16, num_layers: int = 4) -> None:
        super().__init__()
        self.proj_in = nn.Linear(dim, dim)
        self.transformer_blocks = nn.ModuleList(LinearBlock(dim) for _ in range(num_layers))
        self.proj_out = nn.Linear(dim, dim)
        for b in self.transformer_blocks[1:]:
            nn.init.constant_(b.mix, 0.5)

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        h = self.proj_in(hidden_states)
        temb = timestep.float().view(-1, 1, 1) / 1000
        for block in self.transformer_blocks:
            h = block(h, temb)
        return self.proj_out(h)


class NoBlocks(nn.Module):
    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.a = nn.Linear(dim, dim)
        self.b = nn.Linear(dim, dim)

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(hidden_states))) * timestep.float().view(-1, 1, 1)


class DualBlock(nn.Module):
    """A dual-stream block returning (encoder, hidden) — cache-dit's pattern 1 — whose streams have the same
    shape, so only the wiring tells them apart."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.to_h = nn.Linear(2 * dim, dim)
        self.to_e = nn.Linear(2 * dim, dim)

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor, temb: torch.Tensor):
        mix = torch.cat([encoder_hidden_states, hidden_states], dim=-1)
        hidden_states = hidden_states + temb * torch.tanh(self.to_h(mix))
        encoder_hidden_states = encoder_hidden_states + 0.5 * torch.tanh(self.to_e(mix))
        return encoder_hidden_states, hidden_states


class DualToyDiT(nn.Module):
    def __init__(self, dim: int = 16, num_layers: int = 4) -> None:
        super().__init__()
        self.proj_in = nn.Linear(dim, dim)
        self.context_in = nn.Linear(dim, dim)
        self.transformer_blocks = nn.ModuleList(DualBlock(dim) for _ in range(num_layers))
        self.proj_out = nn.Linear(dim, dim)

    def forward(self, hidden_states, encoder_hidden_states, timestep):
        h, e = self.proj_in(hidden_states), self.context_in(encoder_hidden_states)
        temb = timestep.float().view(-1, 1, 1) / 1000
        for block in self.transformer_blocks:
            e, h = block(h, e, temb)
        return self.proj_out(h)


class MixedSequential(nn.Module):
    """An `nn.Sequential` of mixed modules ahead of the real blocks: not a block run."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.t_embedder = nn.Sequential(nn.Linear(1, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.inner = ToyDiT(dim)

    def forward(self, hidden_states, timestep):
        temb = self.t_embedder(timestep.float().view(-1, 1, 1) / 1000)
        return self.inner(hidden_states + temb, timestep)
