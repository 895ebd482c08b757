"""Mamba (Gu & Dao 2023) as in mamba_ssm's `Mamba` block, on the ssm_tools selective-scan ops.

Block: in_proj -> (x, z); x -> causal depthwise conv1d (kernel d_conv) -> SiLU -> x_proj -> (dt, B, C);
dt -> dt_proj (its bias is the scan's delta_bias, softplus inside the op); selective scan with D and
z gating -> out_proj. Layers are RMSNorm pre-norm residual. The parallel forward uses
`ssm_tools.selective_scan`, decoding uses `ssm_tools.selective_state_update` (the same recurrence one
position at a time), so a tool-augmented episode costs O(1) per token whatever its length.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from .base import LanguageModel, check_positive


def _autocast(*tensors: torch.Tensor):
    """The tensors in the dtype autocast would run a matmul in (unchanged outside autocast, and
    float64 ones never cast, as autocast does). Done by hand where a weight is expanded over the
    batch (autocast would cast the expanded, B-times larger tensor) and inside the autograd
    Functions below."""
    device = tensors[0].device.type
    if not torch.is_autocast_enabled(device):
        return tensors
    dtype = torch.get_autocast_dtype(device)
    return tuple(t if t.dtype == torch.float64 else t.to(dtype) for t in tensors)


def _shared_bmm(weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """weight (O, I) @ x[b] (I, T) for every b -> (B, O, T), contiguous: one batched GEMM over the
    weight expanded with batch stride 0, reading x where it is (x may be a transposed view).
    (torch.matmul would fold the batch into the rows when x requires grad, copying x transposed and
    the output back.)"""
    return torch.bmm(weight.expand(x.shape[0], -1, -1), x)


def _weight_times(weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """_shared_bmm under autocast, with autograd's own backward: x's gradient comes back contiguous;
    the weight's is a (B, O, I) batched product summed over the batch, fine for x_proj and dt_proj,
    where O or I is small (less than the (B, I, T) copy it saves), not for in/out_proj."""
    (weight,) = _autocast(weight)
    return _shared_bmm(weight, x)


class _InProj(torch.autograd.Function):
    """x, z = in_proj(h) (h (B, T, d_model)), each a contiguous (B, d_inner, T), the layout the conv
    and the scan read. Forward: one batched GEMM per half, W_half (batch stride 0) @ h[b]^T, no copy.
    Backward: the weight's gradient sums over batch and time, which the channel-first gradients do
    not hold at one stride, so they are transposed once into a token-major (B*T, 2 d_inner) matrix
    (what autograd's cat + transposed reshape copy did in the old layout, in one pass) that feeds
    both plain GEMMs."""

    @staticmethod
    def forward(ctx, h, weight):
        ctx.dtypes = h.dtype, weight.dtype
        h, weight = _autocast(h, weight)
        ctx.save_for_backward(h, weight)
        return tuple(_shared_bmm(w, h.mT) for w in weight.chunk(2))

    @staticmethod
    def backward(ctx, dx, dz):
        h, weight = ctx.saved_tensors
        batch, T, d_model = h.shape
        g = torch.cat([dx.mT, dz.mT], dim=-1).to(weight.dtype).reshape(batch * T, -1)  # (B*T, 2 d_inner)
        dh = (g @ weight).view(batch, T, d_model) if ctx.needs_input_grad[0] else None
        dw = g.t() @ h.reshape(batch * T, d_model) if ctx.needs_input_grad[1] else None
        return tuple(None if t is None else t.to(dtype) for t, dtype in zip((dh, dw), ctx.dtypes))


class _OutProj(torch.autograd.Function):
    """out_proj(y) for the scan's channel-first y (B, d_inner, T) -> (B, T, d_model). Forward: y is
    transposed once to token-major, which both the forward GEMM and the weight's gradient (saved)
    want, as F.linear(y.mT) does. Backward: y's gradient is computed channel-first, W^T (batch
    stride 0) @ grad[b]^T, so it reaches the scan's backward contiguous; autograd would hand it a
    transposed view, which the op copies."""

    @staticmethod
    def forward(ctx, y, weight):
        ctx.dtypes = y.dtype, weight.dtype
        y, weight = _autocast(y, weight)
        y_t = y.mT.contiguous()  # (B, T, d_inner)
        ctx.save_for_backward(y_t, weight)
        return F.linear(y_t, weight)

    @staticmethod
    def backward(ctx, g):
        y_t, weight = ctx.saved_tensors
        g = g.to(weight.dtype)
        dy = _shared_bmm(weight.t(), g.mT) if ctx.needs_input_grad[0] else None
        dw = g.reshape(-1, g.shape[-1]).t() @ y_t.reshape(-1, y_t.shape[-1]) if ctx.needs_input_grad[1] else None
        return tuple(None if t is None else t.to(dtype) for t, dtype in zip((dy, dw), ctx.dtypes))


class MambaMixer(nn.Module):
    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 dt_rank: int | None = None, dt_min: float = 1e-3, dt_max: float = 0.1):
        super().__init__()
        dt_rank = math.ceil(d_model / 16) if dt_rank is None else dt_rank
        check_positive(d_state=d_state, d_conv=d_conv, expand=expand, dt_rank=dt_rank)
        self.d_inner, self.d_state, self.d_conv, self.dt_rank = expand * d_model, d_state, d_conv, dt_rank
        d_inner = self.d_inner
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=False)
        self.conv1d = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1)
        self.x_proj = nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, d_inner)
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)
        # mamba_ssm's initialisation: dt log-uniform in [dt_min, dt_max] through the softplus, so the
        # initial time scales span fast and slow memories; S4D-real A = -(1..d_state).
        dt = torch.exp(torch.rand(d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
            nn.init.uniform_(self.dt_proj.weight, -dt_rank ** -0.5, dt_rank ** -0.5)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(d_inner, 1))
        self.D = nn.Parameter(torch.ones(d_inner))
        self.A_log._no_weight_decay = self.D._no_weight_decay = True

    def _A(self) -> torch.Tensor:
        return -torch.exp(self.A_log)

    def _dt_B_C(self, x: torch.Tensor):
        dt, B, C = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        return F.linear(dt, self.dt_proj.weight), B, C

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # (B, T, d_model)
        # Channel-first throughout: the conv and the scan take (B, d_inner, T) contiguous, and the
        # GEMMs around them write and read that layout (batched over stride-0 weights), so no
        # activation or gradient is copied into or out of the op's layout, which the old
        # token-major formulation did 10 times per layer. What copies remain: out_proj's input and
        # in_proj's gradient are transposed once each (their weight gradients sum over batch and
        # time, which needs token-major), and the conv's output slice copies its gradient.
        T = h.shape[1]
        x, z = _InProj.apply(h, self.in_proj.weight)  # (B, d_inner, T) each, contiguous
        x = F.silu(self.conv1d(x)[..., :T])
        dt, B, C = _weight_times(self.x_proj.weight, x).split([self.dt_rank, self.d_state, self.d_state], dim=1)
        y = ops.selective_scan(x, _weight_times(self.dt_proj.weight, dt), self._A(), B, C, self.D, z,
                               delta_bias=self.dt_proj.bias, delta_softplus=True)
        return _OutProj.apply(y, self.out_proj.weight)

    def forward_token_major(self, h: torch.Tensor) -> torch.Tensor:
        """The same block written plainly in the token-major layout (forward before the channel-first
        one; autograd copies its transposes): what tests and benchmarks/profile_train_step_gpu.py
        compare forward against, from the same parameters."""
        T = h.shape[1]
        x, z = self.in_proj(h).transpose(1, 2).chunk(2, dim=1)
        x = F.silu(self.conv1d(x)[..., :T])
        dt, B, C = self._dt_B_C(x.transpose(1, 2))
        y = ops.selective_scan(x, dt.transpose(1, 2), self._A(), B.transpose(1, 2), C.transpose(1, 2),
                               self.D, z, delta_bias=self.dt_proj.bias, delta_softplus=True)
        return self.out_proj(y.transpose(1, 2))

    def step(self, h: torch.Tensor, state):  # h (B, d_model); state (conv (B, d_inner, d_conv), ssm)
        conv_state, ssm_state = state
        x, z = self.in_proj(h).chunk(2, dim=-1)
        conv_state = torch.cat([conv_state[..., 1:], x.unsqueeze(-1)], dim=-1)
        x = F.silu((conv_state * self.conv1d.weight[:, 0, :]).sum(-1) + self.conv1d.bias)
        dt, B, C = self._dt_B_C(x)
        y = ops.selective_state_update(ssm_state, x, dt, self._A(), B, C, self.D, z,
                                       dt_bias=self.dt_proj.bias, dt_softplus=True)
        return self.out_proj(y), (conv_state, ssm_state)


class Mamba(LanguageModel):
    fixed_size_state = True

    def __init__(self, vocab_size: int, d_model: int = 64, n_layers: int = 2, d_state: int = 16,
                 d_conv: int = 4, expand: int = 2, dt_rank: int | None = None, tie_embeddings: bool = True):
        super().__init__(vocab_size, d_model, tie_embeddings)
        check_positive(n_layers=n_layers)
        self.norms = nn.ModuleList(nn.RMSNorm(d_model) for _ in range(n_layers))
        self.mixers = nn.ModuleList(MambaMixer(d_model, d_state, d_conv, expand, dt_rank) for _ in range(n_layers))

    def body(self, x):
        for norm, mixer in zip(self.norms, self.mixers):
            x = x + mixer(norm(x))
        return x

    def body_step(self, x, state):
        new_state = []
        for norm, mixer, layer_state in zip(self.norms, self.mixers, state):
            out, layer_state = mixer.step(norm(x), layer_state)
            x = x + out
            new_state.append(layer_state)
        return x, new_state

    def init_state(self, batch_size: int, device=None):
        check_positive(batch_size=batch_size)
        # Parameters (and so states) stay float32/float64; bf16 only appears inside autocast.
        return [(self._state_tensor(batch_size, m.d_inner, m.d_conv, device=device),
                 self._state_tensor(batch_size, m.d_inner, m.d_state, device=device))
                for m in self.mixers]
