"""Mamba (Gu & Dao 2023) as in mamba_ssm's `Mamba` block, on the ssm_tools selective-scan ops.

Block: in_proj -> (x, z); x -> causal depthwise conv1d (kernel d_conv) -> SiLU -> x_proj -> (dt, B, C);
dt -> dt_proj (its bias is the scan's delta_bias, softplus inside the op); selective scan with D and
z gating -> out_proj. Layers are RMSNorm pre-norm residual. The parallel forward is one autograd
node per layer (`_MambaLayer`: the residual add and norm in one kernel, projections, the fused conv1d
+ SiLU kernel, the selective scan) that recomputes its cheap parts in the backward instead of saving
them; decoding runs the same recurrence one position at a time (`ops.add_rms_norm`, in_proj,
`ops.causal_conv1d_update`, x_proj, `ops.mamba_state_update`, out_proj: six kernels a layer on
CUDA), so a tool-augmented episode costs O(1) per token whatever its length.
On CUDA, short rows are folded into longer packed rows for the layers (`fold_factor`).
`reference.mamba_mixer_ref` is the plain formulation the tests compare against.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from .base import LanguageModel, check_positive


_ops = torch.ops.ssm_tools
MAX_CONV_WIDTH = 8  # kMaxConvWidth in csrc/kernels/mamba_block_params.h

# Folding short rows (fold_factor). The CUDA scan kernels walk a row in whole chunks of
# ops.SCAN_CHUNK positions, computing every position of its last chunk; a packed row costs them a
# few percent more per position (seq_idx: results/train_step_notes.md, session 11), so folding must
# cut the padded positions by more than that. Where two k cut the same padding, the longer rows won on
# an H200 as long as enough rows were left to fill it (at (128, 216): 16 over 8; 32, leaving 46 rows of
# channels an SM, lost) and the rows stayed within about a dozen chunks (at (128, 640): 2 and 4 alike,
# 8 at 20 chunks lost): FOLD_MIN_ROWS_PER_SM and FOLD_MAX_CHUNKS bound the search.
FOLD_MIN_GAIN = 1.06
FOLD_MIN_ROWS_PER_SM = 64
FOLD_MAX_CHUNKS = 16


def fold_factor(batch: int, seqlen: int, d_inner: int, sms: int) -> int:
    """How many rows of a (batch, seqlen) batch the layers run as one packed row of k * seqlen
    positions on CUDA (k divides batch; 1: no folding). A row of 216 positions costs the scan a
    whole chunk of 256 (1.185x); 16 rows folded cost 14 chunks for 13.5 (1.037x). The k with the
    least padding, once it beats no folding by FOLD_MIN_GAIN; among equal cuts the largest; k stays
    within FOLD_MIN_ROWS_PER_SM rows of d_inner channels an SM and FOLD_MAX_CHUNKS chunks a row."""
    chunk = ops.SCAN_CHUNK

    def chunks(k):
        return -(-k * seqlen // chunk)

    def padding(k):  # positions computed per real position
        return chunks(k) * chunk / (k * seqlen)

    best = 1
    for k in range(2, batch + 1):
        if batch % k:
            continue
        if batch // k * d_inner < FOLD_MIN_ROWS_PER_SM * sms or chunks(k) > FOLD_MAX_CHUNKS:
            break
        if padding(best) / padding(k) > FOLD_MIN_GAIN or (best > 1 and padding(k) <= padding(best)):
            best = k
    return best


def fold_seq_idx(seq_idx: torch.Tensor | None, batch: int, seqlen: int, k: int, device) -> torch.Tensor:
    """The (batch / k, k * seqlen) int32 sequence index of the folded rows: a new sequence at every
    original row's start, and within a row wherever the caller's seq_idx (batch, seqlen) changes
    (row b's sequences numbered b * seqlen + 0, 1, ...)."""
    ids = torch.arange(batch, dtype=torch.int32, device=device).mul_(seqlen).unsqueeze(1)
    if seq_idx is None:
        ids = ids.expand(batch, seqlen)
    else:
        ids = ids + F.pad((seq_idx[:, 1:] != seq_idx[:, :-1]).cumsum(1, dtype=torch.int32), (1, 0))
    return ids.reshape(batch // k, k * seqlen)


def _split_rows(t: torch.Tensor, split: int) -> torch.Tensor:
    """(B, C, split * T) channel-first -> (B, C * split, T), a view: the split pieces of each row
    (the original rows of a folded one) as channels of their own, channel c * split + j."""
    b, c, n = t.shape
    return t.view(b, c * split, n // split)


def _conv_weights(conv_w, conv_b, split):
    """The conv kernels' (weight (channels, width), bias) for rows split `split` ways (_split_rows):
    each channel's repeated for its split channels."""
    w = conv_w[:, 0]
    if split == 1:
        return w, conv_b
    return w.repeat_interleave(split, 0), None if conv_b is None else conv_b.repeat_interleave(split)


def _conv_fwd(x, w, b, seq_idx, split):
    """The conv + SiLU of x (B, d_inner, T), (w, b) from _conv_weights. split > 1: each row is
    `split` rows of T / split positions folded together, run as channels of their own without
    seq_idx: the conv kernels with seq_idx cost more per position than the reset saves."""
    if split == 1:
        return _ops.causal_conv1d_fwd(x, w, b, True, seq_idx)
    return _ops.causal_conv1d_fwd(_split_rows(x, split), w, b, True, None).view(x.shape)


def _split_conv_bwd(du, x, w, b, split):
    """_conv_fwd's backward for split > 1: (dx channel-first (B, d_inner, T), dweight, dbias), the
    channel-first kernel (the token-major one would lay the split channels out token-major too), the
    repeated weights' gradients summed."""
    dx, dw, db = _ops.causal_conv1d_bwd(_split_rows(du, split), _split_rows(x, split), w, b, True, None)
    return dx.view(x.shape), dw.view(-1, split, dw.shape[-1]).sum(1), db if b is None else db.view(-1, split).sum(1)


def _conv_bwd_cat(du, x, w, b, seq_idx, split, dz):
    """_conv_fwd's backward: ([dx, dz] token-major (B, T, 2 d_inner), dweight, dbias). split > 1:
    _split_conv_bwd, then dx's transpose beside dz's."""
    if split == 1:
        return _ops.causal_conv1d_bwd_cat(du, x, w, b, True, seq_idx, [dz])
    dx, dw, db = _split_conv_bwd(du, x, w, b, split)
    return _ops.transpose_cat([dx, dz]), dw, db


def _channel_first_gemms(t: torch.Tensor) -> bool:
    """Whether a layer on t's device runs out_proj and in_proj's gradient GEMMs on channel-first
    tensors (the scan's y, the conv backward's dx and dz) through transposed views: on CUDA, where
    cuBLAS reads the views as they are and a tiled transpose to token-major is a full memory pass
    (out_proj's weight gradient and in_proj's then sum per-row products over the batch). The CPU keeps
    the token-major GEMMs, whose bits the CPU runs that reproduce recorded results depend on."""
    return t.is_cuda


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    """The dtype autocast would run a matmul in (t's own dtype outside autocast; float64 is never
    cast, as autocast does)."""
    device = t.device.type
    if t.dtype == torch.float64 or not torch.is_autocast_enabled(device):
        return t.dtype
    return torch.get_autocast_dtype(device)


def _shared_bmm(weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """weight (O, I) @ x[b] (I, T) for every b -> (B, O, T), contiguous: one batched GEMM over the
    weight expanded with batch stride 0, reading x where it is (x may be a transposed view).
    (torch.matmul would fold the batch into the rows, copying x transposed and the output back.)"""
    return torch.bmm(weight.expand(x.shape[0], -1, -1), x)


def _summed_dtype(t: torch.Tensor) -> torch.dtype:
    """The dtype products of t's dtype are summed over the batch in: float32 at least."""
    return torch.promote_types(t.dtype, torch.float32)


def _batch_summed_bmm(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """sum_b a[b] @ b[b]^T, summed in float32 at least (_summed_dtype; into out if given): the
    gradient of a weight shared over the batch by _shared_bmm (one (O, I) product per row; a or b may
    be transposed views)."""
    return torch.sum(torch.bmm(a, b.mT), 0, dtype=_summed_dtype(a), out=out)


def _in_proj_grads(dx, dz, W_in, h):
    """in_proj's input gradient dh (B, T, d_model) and weight gradient M = sum_b [dx; dz][b] h[b]
    (2 d_inner, d_model, in _summed_dtype) from dx and dz channel-first (B, d_inner, T) and in_proj's
    input h (B, T, d_model): two GEMMs each, reading dx and dz through transposed views, M's halves
    summed straight into place."""
    d_inner = dx.shape[1]
    W_x, W_z = (w.expand(dx.shape[0], -1, -1) for w in W_in.split(d_inner))
    dh = torch.bmm(dx.mT, W_x).baddbmm_(dz.mT, W_z)
    M = torch.empty(W_in.shape, dtype=_summed_dtype(dx), device=dx.device)
    for d, half in zip((dx, dz), M.split(d_inner)):
        _batch_summed_bmm(d, h.mT, out=half)
    return dh, M


def _residual_norm(x, res, norm_weight, eps, cd):
    """(r, h): the residual stream r = x + res (x alone without res) and h = rms_norm(r) in the
    compute dtype cd (r itself without a norm). One kernel (ops.add_rms_norm) where it takes the
    dtypes (a float32 stream, also float64 on the CPU, the weight in the stream's dtype), instead of
    the add, the norm and the cast to cd."""
    fused = (norm_weight is not None and norm_weight.dtype == x.dtype
             and (x.dtype == torch.float32 or (x.dtype == torch.float64 and x.device.type == "cpu")))
    if fused:
        d = x.shape[-1]
        r, h = ops.add_rms_norm(x.reshape(-1, d), None if res is None else res.reshape(-1, d), norm_weight, eps, cd)
        return r.view(x.shape), h.view(x.shape)
    r = x if res is None else x + res
    return r, (r if norm_weight is None else F.rms_norm(r, r.shape[-1:], norm_weight, eps)).to(cd)


def _norm_grad_via_in_proj(cd: torch.dtype, stream_dtype: torch.dtype) -> bool:
    """Whether a layer's backward takes the norm weight's gradient from in_proj's (M below) and the
    stream's gradient from ops.rms_norm_backward (one kernel for the norm's input gradient, the next
    layer's gradient added and the cast for the previous output): where its GEMMs run in a lower
    precision than a float32 residual stream (autocast), whose rounding dominates the difference.
    Full-precision runs keep torch's norm backward, so that their gradients, and the CPU runs that
    reproduce recorded results, keep the bits of the unfused formulation."""
    return cd != stream_dtype and stream_dtype == torch.float32


class _MambaLayer(torch.autograd.Function):
    """One layer: the residual add before its pre-norm, the norm and the mixer. For the residual
    stream x (B, T, d_model) and the previous layer's output res (None for the first layer): r = x +
    res and out = mixer(rms_norm(r)), returned as (r, out), in one autograd node that saves only r, the
    weights in the compute dtype, in_proj's outputs x and z, x_proj's small output and the scan's input
    to out_proj (plus the scan's chunk states), and recomputes the rest in the backward: the norm, the
    conv + SiLU (one fused kernel) and dt_proj, all cheap next to the scan (mamba_ssm's mamba_inner_fn
    recomputes the same). The add, the norm and the cast to the compute dtype are one kernel
    (_residual_norm). Layout: channel-first (B, d_inner, T) from in_proj to the scan, as the conv and
    scan kernels read it; the GEMMs write and read that layout through weights expanded with batch
    stride 0. On CUDA (_channel_first_gemms) out_proj and in_proj's gradient GEMMs also read y, dx
    and dz channel-first through transposed views, and the weight gradients that sum over batch and
    time sum per-row products over the batch in float32; only the unsplit conv's backward writes dx
    token-major beside dz's transpose (its kernel's layout). The CPU transposes y and in_proj's
    gradient token-major (one GEMM each over batch and time): the bits its recorded runs reproduce.
    Under autocast the GEMMs, the conv and the scan's inputs run in the autocast dtype (the weights
    cast once a step, kept for the backward); the norm, the states and every parameter gradient stay
    in float32."""

    @staticmethod
    def forward(ctx, x_in, res, seq_idx, conv_split, norm_weight, eps, dims, in_w, conv_w, conv_b, x_w, dt_w, dt_b, A_log,
                D, out_w):
        d_inner, dt_rank, d_state = dims
        cd = _compute_dtype(x_in)
        with torch.autocast(x_in.device.type, enabled=False):
            r, h = _residual_norm(x_in, res, norm_weight, eps, cd)
            W_in, W_x, W_dt, W_out = (w.to(cd) for w in (in_w, x_w, dt_w, out_w))
            x, z = (_shared_bmm(w, h.mT) for w in W_in.split(d_inner))  # (B, d_inner, T) each
            conv_ws = _conv_weights(conv_w, conv_b, conv_split)  # kept for the backward
            u = _conv_fwd(x, *conv_ws, seq_idx, conv_split)
            x_dbl = _shared_bmm(W_x, u)  # (B, dt_rank + 2 d_state, T)
            delta = _shared_bmm(W_dt, x_dbl[:, :dt_rank])
            B, C = (t.unsqueeze(1) for t in x_dbl[:, dt_rank:].split(d_state, dim=1))
            y, _, saved = _ops.selective_scan_fwd(u, delta, -torch.exp(A_log), B, C, D, z, dt_b, True, seq_idx)
            channel_first = _channel_first_gemms(y)
            if channel_first:
                out = torch.bmm(y.mT, W_out.t().expand(y.shape[0], -1, -1))  # (B, T, d_model)
            else:
                y = _ops.transpose_cat([y])  # (B, T, d_inner), by the tiled transpose
                out = F.linear(y, W_out)
        ctx.save_for_backward(r, seq_idx, norm_weight, W_in, conv_w, *conv_ws, W_x, W_dt, dt_b, A_log, D, W_out, x, z,
                              x_dbl, y, saved)
        ctx.eps, ctx.dims, ctx.cd, ctx.conv_split, ctx.channel_first = eps, dims, cd, conv_split, channel_first
        ctx.param_dtypes = tuple(p.dtype for p in (in_w, conv_w, conv_b, x_w, dt_w, dt_b, A_log, D, out_w))
        ctx.x_dtype, ctx.res_dtype = x_in.dtype, None if res is None else res.dtype
        # An r or out that nothing used gets None, not a tensor of zeros (MambaMixer.forward drops r).
        ctx.set_materialize_grads(False)
        return r, out

    @staticmethod
    def backward(ctx, g_r, g):
        r, seq_idx, norm_weight, W_in, conv_w, cw, cb, W_x, W_dt, dt_b, A_log, D, W_out, x, z, x_dbl, y, saved = \
            ctx.saved_tensors
        d_inner, dt_rank, d_state = ctx.dims
        cd = ctx.cd
        batch, T, d_model = r.shape
        via_in_proj = norm_weight is not None and _norm_grad_via_in_proj(cd, r.dtype)
        g = torch.zeros(r.shape, dtype=cd, device=r.device) if g is None else g.to(cd)
        dy = _shared_bmm(W_out.t(), g.mT)  # (B, d_inner, T)
        if ctx.channel_first:  # y channel-first (B, d_inner, T)
            d_out_w = _batch_summed_bmm(g.mT, y)
        else:  # y token-major (B, T, d_inner)
            d_out_w = g.reshape(-1, d_model).t() @ y.reshape(-1, d_inner)
        # Recompute the conv and dt_proj (cheap), then the scan's backward.
        u = _conv_fwd(x, cw, cb, seq_idx, ctx.conv_split)
        dt_low = x_dbl[:, :dt_rank]
        delta = _shared_bmm(W_dt, dt_low)
        A = -torch.exp(A_log)
        B, C = (t.unsqueeze(1) for t in x_dbl[:, dt_rank:].split(d_state, dim=1))
        du, ddelta, dA, dB, dC, dD, dz, d_dt_b = _ops.selective_scan_bwd(dy, None, u, delta, A, B, C, D, z, dt_b,
                                                                          True, saved, seq_idx)
        ddelta = ddelta.to(cd)
        d_dt_w = _batch_summed_bmm(ddelta, dt_low)
        dx_dbl = torch.cat([_shared_bmm(W_dt.t(), ddelta), dB[:, 0].to(cd), dC[:, 0].to(cd)], dim=1)
        d_x_w = _batch_summed_bmm(dx_dbl, u)
        # In place: du is the scan backward's own output (or its fresh cast).
        du = du.to(cd).baddbmm_(W_x.t().expand(batch, -1, -1), dx_dbl)
        rows = r.view(batch * T, d_model)
        # The recomputed norm in the compute dtype: without its weight (xhat, one kernel) where the
        # weight's gradient comes from in_proj's (below); else differentiated by autograd.
        if via_in_proj:
            h = ops.rms_norm(rows, None, ctx.eps, cd)
        else:
            with torch.enable_grad():
                r_ = r.detach().requires_grad_()
                norm_w = None if norm_weight is None else norm_weight.detach().requires_grad_()
                h_full = r_ if norm_weight is None else F.rms_norm(r_, (d_model,), norm_w, ctx.eps)
            h = h_full.detach().to(cd)
        # in_proj's input gradient dh and weight gradient M = dxz^T h (dxz^T xhat via_in_proj), dxz = [dx, dz].
        if ctx.channel_first and ctx.conv_split > 1:
            dx, d_conv_w, d_conv_b = _split_conv_bwd(du, x, cw, cb, ctx.conv_split)
            dh, M = _in_proj_grads(dx, dz.to(cd), W_in, h.view(batch, T, d_model))
            dh = dh.view(batch * T, d_model)
        else:  # dx written token-major beside dz's transpose, as the GEMMs over batch and time read it
            dxz, d_conv_w, d_conv_b = _conv_bwd_cat(du, x, cw, cb, seq_idx, ctx.conv_split, dz.to(cd))
            dxz = dxz.view(batch * T, 2 * d_inner)
            dh, M = dxz @ W_in, dxz.t() @ h.view(batch * T, d_model)
        # The residual stream's gradient dr (the norm's input gradient plus g_r, r's other use: the next
        # layer's residual add or the final norm) and its copy for the previous layer's output.
        d_res = None
        if via_in_proj:
            # h = xhat * w, so in_proj's weight gradient dxz^T h is M = dxz^T xhat with its columns
            # scaled by w, and the norm weight's, sum over rows of dh * xhat with dh = dxz W_in, is
            # sum_k W_in[k, j] M[k, j]: two products of (2 d_inner, d_model) instead of a reduction over
            # all batch * T rows of dh * xhat (torch's rms_norm backward, GammaBetaBackward on CUDA).
            # dr and its copy in one kernel reading dh (the cast dtype's), r and g_r once.
            M = M.to(norm_weight.dtype)
            d_in_w, d_norm_w = M * norm_weight, (M * W_in).sum(0)
            cast = None if ctx.res_dtype in (None, r.dtype) else ctx.res_dtype
            dr, dr_cast = ops.rms_norm_backward(dh, rows, norm_weight, ctx.eps,
                                                None if g_r is None else g_r.reshape(rows.shape), cast)
            dr = dr.view(r.shape)
            d_res = None if ctx.res_dtype is None else dr if cast is None else dr_cast.view(r.shape)
        else:
            dh = dh.view(batch, T, d_model)
            if norm_weight is None:
                d_in_w, dr, d_norm_w = M, dh.to(r.dtype), None
            else:
                d_in_w = M
                dr, d_norm_w = torch.autograd.grad(h_full, (r_, norm_w), dh.to(h_full.dtype))
            if g_r is not None:
                dr = dr.add_(g_r) if dr.dtype == g_r.dtype else dr + g_r
            d_res = None if ctx.res_dtype is None else dr.to(ctx.res_dtype)
        grads = (d_in_w, d_conv_w.view_as(conv_w), d_conv_b, d_x_w, d_dt_w, d_dt_b, dA * A, dD, d_out_w)
        grads = tuple(gr.to(dt) for gr, dt in zip(grads, ctx.param_dtypes))
        return (dr.to(ctx.x_dtype), d_res, None, None, d_norm_w, None, None, *grads)


class _FinalNorm(torch.autograd.Function):
    """The last layer's residual add and the final norm, norm_f(x + res), in the compute dtype (the
    head's matmul dtype under autocast), the add, the norm and the cast in one kernel
    (_residual_norm), as the decode step does (Mamba.step_unchecked). The backward recomputes the norm
    and differentiates it with autograd (its weight's gradient is a reduction over all rows, as
    torch's), so that it gives the separate add and nn.RMSNorm's gradients to the bit."""

    @staticmethod
    def forward(ctx, x, res, weight, eps):
        with torch.autocast(x.device.type, enabled=False):
            r, h = _residual_norm(x, res, weight, eps, _compute_dtype(x))
        ctx.save_for_backward(r, weight)
        ctx.eps, ctx.res_dtype = eps, res.dtype
        return h

    @staticmethod
    def backward(ctx, g):
        r, weight = ctx.saved_tensors
        with torch.enable_grad():
            r_, w_ = r.detach().requires_grad_(), weight.detach().requires_grad_()
            h = F.rms_norm(r_, r.shape[-1:], w_, ctx.eps)
        dr, dw = torch.autograd.grad(h, (r_, w_), g.to(h.dtype))
        return dr, dr.to(ctx.res_dtype), dw, None


class MambaMixer(nn.Module):
    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 dt_rank: int | None = None, dt_min: float = 1e-3, dt_max: float = 0.1):
        super().__init__()
        dt_rank = math.ceil(d_model / 16) if dt_rank is None else dt_rank
        check_positive(d_state=d_state, d_conv=d_conv, expand=expand, dt_rank=dt_rank)
        if d_conv > MAX_CONV_WIDTH:
            raise ValueError(f"d_conv must be at most {MAX_CONV_WIDTH} (the conv kernels' widest), got {d_conv}")
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

    def forward(self, h: torch.Tensor, norm: nn.RMSNorm | None = None, seq_idx: torch.Tensor | None = None) -> torch.Tensor:
        """mixer(norm(h)) for h (B, T, d_model) (the norm recomputed in the backward); packed rows
        (seq_idx (B, T) int32): the conv and the scan restart at every sequence's start."""
        return self.residual_forward(h, None, norm, seq_idx)[1]

    def residual_forward(self, x: torch.Tensor, res: torch.Tensor | None, norm: nn.RMSNorm | None = None,
                         seq_idx: torch.Tensor | None = None, conv_split: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """(r, mixer(norm(r))) for r = x + res, the residual add before the layer in the norm's
        kernel (res: the previous layer's output, None for the first layer). conv_split > 1: folded
        rows (Mamba._layers), each of conv_split rows of equal length, which the conv takes apart
        instead of reading seq_idx (the scan's)."""
        return _MambaLayer.apply(x, res, seq_idx, conv_split, None if norm is None else norm.weight,
                                 None if norm is None else norm.eps, (self.d_inner, self.dt_rank, self.d_state),
                                 self.in_proj.weight, self.conv1d.weight, self.conv1d.bias, self.x_proj.weight,
                                 self.dt_proj.weight, self.dt_proj.bias, self.A_log, self.D, self.out_proj.weight)

    def step(self, h: torch.Tensor, state):
        """h (B, d_model) in in_proj's weight dtype; state (conv (B, d_inner, d_conv), ssm), float,
        updated in place. Returns out_proj's output (B, d_model) in the same dtype as h."""
        conv_state, ssm_state = state
        x, z = F.linear(h, self.in_proj.weight).split(self.d_inner, dim=-1)  # row-strided views
        # The conv update, x_proj (a GEMM) and the SSM step as separate kernels, each spread over the
        # GPU at every batch: the fused variants were slower (results/train_step_notes.md, sessions 8, 11).
        x = ops.causal_conv1d_update(conv_state, x, self.conv1d.weight[:, 0], self.conv1d.bias, silu=True)
        y = ops.mamba_state_update(ssm_state, x, F.linear(x, self.x_proj.weight), self.dt_proj.weight,
                                   self.dt_proj.bias, self.A_log, self.D, z)
        return self.out_proj(y), (conv_state, ssm_state)


class Mamba(LanguageModel):
    fixed_size_state = True
    packs_rows = True
    # Short rows folded into packed rows for the layers: True, by fold_factor on CUDA (the CPU
    # kernels compute no padding: CPU runs keep their bits); False, never; an int k, by k on any
    # device (k must divide the batch). Decoding is not affected.
    fold_rows: bool | int = True

    def __init__(self, vocab_size: int, d_model: int = 64, n_layers: int = 2, d_state: int = 16,
                 d_conv: int = 4, expand: int = 2, dt_rank: int | None = None, tie_embeddings: bool = True):
        super().__init__(vocab_size, d_model, tie_embeddings)
        check_positive(n_layers=n_layers)
        self.norms = nn.ModuleList(nn.RMSNorm(d_model) for _ in range(n_layers))
        self.mixers = nn.ModuleList(MambaMixer(d_model, d_state, d_conv, expand, dt_rank) for _ in range(n_layers))

    def fold_for(self, batch: int, seqlen: int, device) -> int:
        """How many rows of a (batch, seqlen) input on `device` the layers run as one (fold_rows)."""
        k, device = self.fold_rows, torch.device(device)
        if isinstance(k, bool):
            if not k or device.type != "cuda":
                return 1
            sms = torch.cuda.get_device_properties(device).multi_processor_count
            return fold_factor(batch, seqlen, self.mixers[0].d_inner, sms)
        if not isinstance(k, int) or k < 1 or batch % k:
            raise ValueError(f"fold_rows must be a bool or a positive int dividing the batch ({batch}), got {k!r}")
        return k

    def _layers(self, x, seq_idx=None):
        """(x, out): the residual stream before the last layer's residual add, and that layer's
        output (body = x + out). The layers run on rows folded k at a time (fold_for): (B, T, d)
        -> (B / k, k T, d) is a view (every op but the conv and the scan is per position), and
        fold_seq_idx restarts the conv and the scan at each original row's start."""
        batch, seqlen, d = x.shape
        k, conv_split = self.fold_for(batch, seqlen, x.device), 1
        if k > 1:
            # Without the caller's seq_idx, the conv takes the folded rows apart itself (_conv_fwd).
            conv_split = k if seq_idx is None else 1
            x, seq_idx = x.reshape(batch // k, k * seqlen, d), fold_seq_idx(seq_idx, batch, seqlen, k, x.device)
        out = None  # each layer adds the previous layer's output inside its norm's kernel
        for norm, mixer in zip(self.norms, self.mixers):
            x, out = mixer.residual_forward(x, out, norm, seq_idx, conv_split)
        if k > 1:
            x, out = x.reshape(batch, seqlen, d), out.reshape(batch, seqlen, d)
        return x, out

    def body(self, x, seq_idx=None):
        x, out = self._layers(x, seq_idx)
        return x + out

    def head_input(self, x, seq_idx=None):
        # The last residual add inside the final norm's kernel, as in step_unchecked.
        return _FinalNorm.apply(*self._layers(x, seq_idx), self.norm_f.weight, self.norm_f.eps)

    def layers_step(self, x, state):
        """The layers' decode step without the last residual add: returns (x, out, new state), the
        body's output being x + out (body_step), which step_unchecked adds inside the final norm."""
        new_state, out = [], None
        for norm, mixer, layer_state in zip(self.norms, self.mixers, state):
            # The previous layer's residual add and this layer's norm in one kernel, the norm's output
            # in the dtype of the layer's matmuls (bfloat16 in a decode_copy).
            x, h = ops.add_rms_norm(x, out, norm.weight, norm.eps, mixer.in_proj.weight.dtype)
            out, layer_state = mixer.step(h, layer_state)
            new_state.append(layer_state)
        return x, out, new_state

    def body_step(self, x, state):
        x, out, state = self.layers_step(x, state)
        return x + out, state

    def step_unchecked(self, tokens, state):
        # The last layer's residual add inside the final norm (one kernel instead of two); the head
        # reads the norm's output in the residual stream's dtype, as LanguageModel.step_unchecked's.
        x, out, state = self.layers_step(self.embedding(tokens.long()), state)
        _, h = ops.add_rms_norm(x, out, self.norm_f.weight, self.norm_f.eps, x.dtype)
        return self.lm_head(h), state

    def matmul_layers(self):
        # dt_proj stays: mamba_state_update reads its weight in float32.
        return [layer for m in self.mixers for layer in (m.in_proj, m.x_proj, m.out_proj)]

    def init_state(self, batch_size: int, device=None):
        check_positive(batch_size=batch_size)
        # Parameters (and so states) stay float32/float64; bf16 only appears inside autocast.
        return [(self._state_tensor(batch_size, m.d_inner, m.d_conv, device=device),
                 self._state_tensor(batch_size, m.d_inner, m.d_state, device=device))
                for m in self.mixers]
