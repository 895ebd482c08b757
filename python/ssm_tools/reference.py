"""Plain-PyTorch references of the kernels in ``ssm_tools.ops``, one per kernel.

Readable rather than fast: they loop over time and keep every state, so tests (and the benchmark's
baseline) can compare the C++/CUDA kernels against them, gradients included via autograd. Same
signatures and return values as the ops. They compute in float32 (float64 for float64 ``u``/state),
like the kernels.
"""
import torch
import torch.nn.functional as F


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _per_channel(BC: torch.Tensor, dim: int, seqlen: int) -> torch.Tensor:
    """B or C per channel and position: (dim, seqlen, dstate) if constant, else (batch, dim, seqlen,
    dstate) with the groups expanded."""
    if BC.dim() == 2:
        return BC[:, None, :].expand(dim, seqlen, BC.shape[1])
    if BC.dim() == 3:  # (batch, dstate, seqlen): one group
        BC = BC.unsqueeze(1)
    return BC.repeat_interleave(dim // BC.shape[1], dim=1).transpose(-1, -2)


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_last_state=False, seq_idx=None):
    """x_t = exp(delta_t A) x_{t-1} + delta_t B_t u_t;  y_t = <C_t, x_t> + D u_t;  out = y silu(z).

    u, delta, z: (batch, dim, seqlen); A: (dim, dstate); B, C: (dim, dstate), (batch, dstate, seqlen)
    or (batch, groups, dstate, seqlen); D, delta_bias: (dim,). Returns out (u's dtype) and, if
    ``return_last_state``, the final state (batch, dim, dstate) in the compute dtype. Packed rows
    (``seq_idx``, (batch, seqlen)) run sequence by sequence, each as its own one-row scan.
    """
    if seq_idx is not None:
        return _packed_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, seq_idx)
    out_dtype, dtype = u.dtype, _compute_dtype(u)
    u, delta, A = u.to(dtype), delta.to(dtype), A.to(dtype)
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    batch, dim, seqlen = u.shape
    B, C = _per_channel(B.to(dtype), dim, seqlen), _per_channel(C.to(dtype), dim, seqlen)
    decay = torch.exp(delta[..., None] * A[:, None, :])  # (batch, dim, seqlen, dstate)
    inject = (delta * u)[..., None] * B
    x = u.new_zeros(batch, dim, A.shape[1])
    ys = []
    # unbind, not indexing per step: the backward of unbind is one stack, that of x[:, :, t] a
    # full-size scatter per step.
    for decay_t, inject_t, C_t in zip(decay.unbind(2), inject.unbind(2), C.unbind(-2)):
        x = decay_t * x + inject_t
        ys.append((x * C_t).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + D.to(dtype)[:, None] * u
    if z is not None:
        y = y * F.silu(z.to(dtype))
    out = y.to(out_dtype)
    return (out, x) if return_last_state else out


def _packed_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, seq_idx):
    """selective_scan_ref of every sequence (run of equal seq_idx values) of every row separately."""
    def piece(t, b, s0, s1):  # a per-position tensor's slice of one sequence, kept as one row
        return t if t is None or t.dim() == 2 else t[b:b + 1, ..., s0:s1]

    outs, lasts = [], []
    for b in range(u.shape[0]):
        ids = seq_idx[b].tolist()
        starts = [0] + [t for t in range(1, len(ids)) if ids[t] != ids[t - 1]] + [len(ids)]
        row = [selective_scan_ref(piece(u, b, s0, s1), piece(delta, b, s0, s1), A, piece(B, b, s0, s1),
                                  piece(C, b, s0, s1), D, piece(z, b, s0, s1), delta_bias, delta_softplus,
                                  return_last_state=True)
               for s0, s1 in zip(starts, starts[1:])]
        outs.append(torch.cat([out for out, _ in row], dim=-1))
        lasts.append(row[-1][1])
    out = torch.cat(outs)
    return (out, torch.cat(lasts)) if return_last_state else out


def selective_state_update_ref(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    """One decode step: updates ``state`` (batch, dim, dstate) in place, returns y (batch, dim).

    x, dt, z: (batch, dim); B, C: (batch, dstate) or (batch, groups, dstate); A: (dim, dstate);
    D, dt_bias: (dim,). Computes in the state's dtype.
    """
    dtype = state.dtype
    dim = x.shape[1]
    dt = dt.to(dtype)
    if dt_bias is not None:
        dt = dt + dt_bias.to(dtype)
    if dt_softplus:
        dt = F.softplus(dt)
    B, C = (t.to(dtype).reshape(t.shape[0], -1, t.shape[-1]) for t in (B, C))
    B, C = (t.repeat_interleave(dim // t.shape[1], dim=1) for t in (B, C))
    x_ = x.to(dtype)
    new_state = torch.exp(dt[..., None] * A.to(dtype)) * state + (dt * x_)[..., None] * B
    state.copy_(new_state)
    y = (new_state * C).sum(-1)
    if D is not None:
        y = y + D.to(dtype) * x_
    if z is not None:
        y = y * F.silu(z.to(dtype))
    return y.to(x.dtype)
