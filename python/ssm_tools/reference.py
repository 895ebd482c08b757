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
                       return_last_state=False):
    """x_t = exp(delta_t A) x_{t-1} + delta_t B_t u_t;  y_t = <C_t, x_t> + D u_t;  out = y silu(z).

    u, delta, z: (batch, dim, seqlen); A: (dim, dstate); B, C: (dim, dstate), (batch, dstate, seqlen)
    or (batch, groups, dstate, seqlen); D, delta_bias: (dim,). Returns out (u's dtype) and, if
    ``return_last_state``, the final state (batch, dim, dstate) in the compute dtype.
    """
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


def causal_conv1d_ref(x, weight, bias=None, silu=False):
    """Causal depthwise conv1d through F.conv1d: x (batch, dim, seqlen), weight (dim, width), bias
    (dim,); out[t] = act(bias + sum_k weight[k] x[t - width + 1 + k]), act = SiLU if ``silu``."""
    dtype = _compute_dtype(x)
    width = weight.shape[1]
    out = F.conv1d(x.to(dtype), weight.to(dtype)[:, None, :], None if bias is None else bias.to(dtype),
                   padding=width - 1, groups=x.shape[1])[..., :x.shape[2]]
    return (F.silu(out) if silu else out).to(x.dtype)


def causal_conv1d_update_ref(conv_state, x, weight, bias=None, silu=False):
    """One decode position: conv_state (batch, dim, width) shifts left in place and takes x
    (batch, dim); returns the conv's output there (batch, dim)."""
    dtype = conv_state.dtype
    conv_state.copy_(torch.cat([conv_state[..., 1:], x.to(dtype)[..., None]], dim=-1))
    out = (conv_state * weight.to(dtype)).sum(-1)
    if bias is not None:
        out = out + bias.to(dtype)
    return (F.silu(out) if silu else out).to(x.dtype)


def mamba_state_update_ref(state, x, xdbl, dt_weight, dt_bias, A_log, D=None, z=None):
    """The Mamba block's SSM decode step from x_proj's output xdbl = [dt_low | B | C]."""
    dstate = A_log.shape[1]
    dt_low, B, C = xdbl.split([dt_weight.shape[1], dstate, dstate], dim=-1)
    dt = dt_low.to(state.dtype) @ dt_weight.to(state.dtype).t()
    return selective_state_update_ref(state, x, dt, -torch.exp(A_log.to(state.dtype)), B, C, D, z, dt_bias,
                                      dt_softplus=True)


def mamba_mixer_ref(mixer, h):
    """A ``models.mamba.MambaMixer``'s forward written plainly, token-major, with nn layers, F.conv1d
    and selective_scan_ref (autograd differentiates it): what the fused forward and backward are
    tested against, from the same parameters. h: (batch, seqlen, d_model)."""
    x, z = mixer.in_proj(h).transpose(1, 2).chunk(2, dim=1)
    x = causal_conv1d_ref(x, mixer.conv1d.weight[:, 0, :], mixer.conv1d.bias, silu=True)
    dt, B, C = mixer.x_proj(x.transpose(1, 2)).split([mixer.dt_rank, mixer.d_state, mixer.d_state], dim=-1)
    dt = F.linear(dt, mixer.dt_proj.weight)
    y = selective_scan_ref(x, dt.transpose(1, 2), -torch.exp(mixer.A_log), B.transpose(1, 2), C.transpose(1, 2),
                           mixer.D, z, delta_bias=mixer.dt_proj.bias, delta_softplus=True)
    return mixer.out_proj(y.transpose(1, 2))
