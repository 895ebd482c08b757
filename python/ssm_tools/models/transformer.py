"""Decoder-only Transformers: Pythia-style (RoPE, full causal attention, a KV cache that grows with
the episode) and Mistral-style (RoPE, sliding-window attention, a rolling cache of `window`
positions: a fixed-size state, hence a generalized SSM in the paper's sense).

Both are one class: `window=None` is Pythia-style. Keys are cached after RoPE, so the rolling cache
is a ring buffer (slot = position % window) and never shifts: attention is order-free once
positions are encoded in q and k.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import LanguageModel, check_positive

INITIAL_CACHE = 64  # positions; an unbounded cache doubles when full


def rope(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotary embedding of x (B, H, T, dh) at integer positions (T,), rotate-half convention."""
    dh = x.shape[-1]
    inv_freq = base ** (-torch.arange(0, dh, 2, dtype=torch.float64, device=x.device) / dh)
    angles = positions.to(torch.float64)[:, None] * inv_freq  # float64: the same angles for any T
    cos, sin = torch.cat([angles.cos()] * 2, -1).to(x.dtype), torch.cat([angles.sin()] * 2, -1).to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class Attention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, window: int | None):
        super().__init__()
        if d_model % n_heads or (d_model // n_heads) % 2:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads}) into even head sizes")
        self.n_heads, self.window = n_heads, window
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)

    def _qkv(self, x: torch.Tensor, positions: torch.Tensor):  # x (B, T, d)
        B, T, d = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        return rope(q, positions), rope(k, positions), v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, d = x.shape
        pos = torch.arange(T, device=x.device)
        q, k, v = self._qkv(x, pos)
        if self.window is None or self.window >= T:
            # Plain causal attention: is_causal lets SDPA use its fused kernels, whose memory grows
            # with T, not T^2 (an explicit T x T mask forces the one that materializes the scores).
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            lag = pos[:, None] - pos[None, :]  # query i sees key j iff 0 <= i - j < window
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=(lag >= 0) & (lag < self.window))
        return self.out(y.transpose(1, 2).reshape(B, T, d))

    def step(self, x: torch.Tensor, cache, pos: int):  # x (B, d); cache (k, v) (B, H, capacity, dh)
        B, d = x.shape
        q, k, v = self._qkv(x.unsqueeze(1), torch.tensor([pos], device=x.device))
        ck, cv = cache
        capacity = ck.shape[2]
        if self.window is None and pos == capacity:
            ck, cv = (torch.cat([c, torch.zeros_like(c)], dim=2) for c in (ck, cv))
            capacity *= 2
        slot = pos % capacity
        ck[:, :, slot], cv[:, :, slot] = k[:, :, 0], v[:, :, 0]
        valid = torch.arange(capacity, device=x.device) <= min(pos, capacity - 1)
        y = F.scaled_dot_product_attention(q, ck, cv, attn_mask=valid[None, :])
        return self.out(y.reshape(B, d)), (ck, cv)


class Block(nn.Module):
    def __init__(self, d_model: int, n_heads: int, window: int | None):
        super().__init__()
        self.norm1, self.norm2 = nn.RMSNorm(d_model), nn.RMSNorm(d_model)
        self.attn = Attention(d_model, n_heads, window)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))

    def step(self, x, cache, pos):
        h, cache = self.attn.step(self.norm1(x), cache, pos)
        x = x + h
        return x + self.mlp(self.norm2(x)), cache


class Transformer(LanguageModel):
    def __init__(self, vocab_size: int, d_model: int = 64, n_layers: int = 2, n_heads: int = 4,
                 window: int | None = None, tie_embeddings: bool = True):
        super().__init__(vocab_size, d_model, tie_embeddings)
        check_positive(n_layers=n_layers, n_heads=n_heads)
        if window is not None:
            check_positive(window=window)
        self.window, self.n_heads = window, n_heads
        self.blocks = nn.ModuleList(Block(d_model, n_heads, window) for _ in range(n_layers))

    def body(self, x):
        for block in self.blocks:
            x = block(x)
        return x

    def body_step(self, x, state):
        pos, caches = state
        caches = list(caches)
        for i, block in enumerate(self.blocks):
            x, caches[i] = block.step(x, caches[i], pos)
        return x, (pos + 1, caches)

    def init_state(self, batch_size: int, device=None):
        """(next position, per layer (k, v) caches of shape (B, n_heads, capacity, head_dim))."""
        check_positive(batch_size=batch_size)
        capacity = self.window or INITIAL_CACHE
        shape = (batch_size, self.n_heads, capacity, self.d_model // self.n_heads)
        return 0, [(self._state_tensor(*shape, device=device), self._state_tensor(*shape, device=device))
                   for _ in self.blocks]
