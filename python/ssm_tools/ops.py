"""The one Python face of the ssm_tools kernels.

``selective_scan`` and ``selective_state_update`` have the semantics and shapes of mamba_ssm's
``selective_scan_fn`` and ``selective_state_update``, so either can stand in for the other;
``selective_scan`` also takes packed rows of several sequences (``seq_idx``). The Mamba block's
conv1d (``causal_conv1d``, as causal_conv1d_fn) and decode steps follow them. They call the ops
declared in csrc/ops/registration.cpp, which check their arguments (csrc/ops/checks.h: a ValueError
naming the argument) and dispatch to the CPU or CUDA kernels by device. This module also gives the
ops autograd (the backward recomputes states from the forward's per-chunk checkpoints) and fake
kernels, so meta tensors and ``torch.compile(fullgraph=True)`` work.
"""
import torch

from . import _C  # loading the library registers the ops and their kernels

_ops = torch.ops.ssm_tools

# Positions per checkpoint of the forward's `saved` output (kScanChunk in the kernels).
SCAN_CHUNK = _C.SCAN_CHUNK


def _state_dtype(u: torch.Tensor) -> torch.dtype:
    return torch.float64 if u.dtype == torch.float64 else torch.float32


def _check_finite_A(op, A):
    """The one check C++ does not make: A's values (a host read). Skipped while tracing
    (torch.compile), on meta/fake tensors and while a CUDA graph is being captured."""
    if (not isinstance(A, torch.Tensor) or torch.compiler.is_compiling() or A.device.type == "meta"
            or isinstance(A, torch._subclasses.FakeTensor) or (A.is_cuda and torch.cuda.is_current_stream_capturing())):
        return
    if A.is_floating_point() and not bool(torch.isfinite(A).all()):
        raise ValueError(f"{op}: A must be finite, got non-finite values")


# ----------------------------------------------------------------------------- public functions

def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, seq_idx=None):
    """Selective scan (Mamba's S6), as mamba_ssm's selective_scan_fn.

    x_t = exp(delta_t A) x_{t-1} + delta_t B_t u_t;  y_t = <C_t, x_t> + D u_t;  out = y * silu(z),
    with delta = softplus(delta + delta_bias) if ``delta_softplus`` else delta + delta_bias.

    u, delta, z: (batch, dim, seqlen); A: (dim, dstate); B, C: (dim, dstate) or input-dependent
    (batch, groups, dstate, seqlen) / (batch, dstate, seqlen), groups dividing dim; D, delta_bias:
    (dim,). Returns out (batch, dim, seqlen) in u's dtype and, with ``return_last_state``, the last
    state (batch, dim, dstate) in float32 (float64 for float64 u). Differentiable in every tensor,
    the last state included.

    Packed rows: ``seq_idx`` (batch, seqlen) int32 gives each position's sequence; every sequence
    (a run of equal values) starts from the zero state, as if it had its own row, and the last state
    is that of each row's last sequence.
    """
    _check_finite_A("selective_scan", A)
    out, last_state, _ = _ops.selective_scan_fwd(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus), seq_idx)
    return (out, last_state) if return_last_state else out


def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    """One decode step of the selective scan, as mamba_ssm's selective_state_update.

    state: (batch, dim, dstate), float32/float64, updated in place; x, dt, z: (batch, dim); B, C:
    (batch, dstate) or (batch, groups, dstate); A: (dim, dstate); D, dt_bias: (dim,). Returns y
    (batch, dim) in x's dtype. Not differentiable (inference only).
    """
    _check_finite_A("selective_state_update", A)
    return _ops.selective_state_update(state, x, dt, A, B, C, D, z, dt_bias, bool(dt_softplus))


def _contiguous(t):
    return None if t is None else t.contiguous()


# ----------------------------------------------------------------------------- autograd

def _scan_setup_context(ctx, inputs, output):
    u, delta, A, B, C, D, z, delta_bias, delta_softplus, seq_idx = inputs
    saved = output[2]
    ctx.mark_non_differentiable(saved)
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, saved, seq_idx)
    ctx.delta_softplus = delta_softplus


def _scan_backward(ctx, dout, dlast_state, _dsaved):
    # Autograd materialises the grads of unused outputs as zeros, so dout and dlast_state are tensors.
    u, delta, A, B, C, D, z, delta_bias, saved, seq_idx = ctx.saved_tensors
    grads = _ops.selective_scan_bwd(dout.contiguous(), _contiguous(dlast_state), u, delta, A, B, C, D, z,
                                    delta_bias, ctx.delta_softplus, saved, seq_idx)
    inputs = (u, delta, A, B, C, D, z, delta_bias)
    # Kernels may accumulate in float32; hand each gradient back in its input's dtype.
    return tuple(None if x is None else g.to(x.dtype) for g, x in zip(grads, inputs)) + (None, None)


torch.library.register_autograd("ssm_tools::selective_scan_fwd", _scan_backward, setup_context=_scan_setup_context)


# ----------------------------------------------------------------------------- fake (meta) kernels

@torch.library.register_fake("ssm_tools::selective_scan_fwd")
def _scan_fwd_fake(u, delta, A, B, C, D, z, delta_bias, delta_softplus, seq_idx=None):
    batch, dim, seqlen = u.shape
    dstate = A.shape[1]
    state_dtype = _state_dtype(u)
    n_chunks = (seqlen + SCAN_CHUNK - 1) // SCAN_CHUNK
    return (u.new_empty(u.shape), u.new_empty((batch, dim, dstate), dtype=state_dtype),
            u.new_empty((batch, dim, n_chunks, dstate), dtype=state_dtype))


@torch.library.register_fake("ssm_tools::selective_scan_bwd")
def _scan_bwd_fake(dout, dlast_state, u, delta, A, B, C, D, z, delta_bias, delta_softplus, saved, seq_idx=None):
    def like(t):
        return u.new_empty(0) if t is None else torch.empty_like(t, memory_format=torch.contiguous_format)
    return tuple(like(t) for t in (u, delta, A, B, C, D, z, delta_bias))


@torch.library.register_fake("ssm_tools::selective_state_update")
def _state_update_fake(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus):
    return x.new_empty(x.shape)


# ----------------------------------------------------------------------------- the rest of the Mamba block
# Arguments are checked by the kernels (csrc/ops/mamba_block_checks.h), for both backends; here only
# that every tensor is on x's device (mixed with a meta tensor, the dispatcher would otherwise pick
# the fake kernel and return garbage shapes silently).

def _on_device_of_x(op, x, **tensors):
    for name, t in tensors.items():
        if isinstance(t, torch.Tensor) and isinstance(x, torch.Tensor) and t.device != x.device:
            raise ValueError(f"{op}: {name} must be on {x.device} like x, got {t.device}")


def causal_conv1d(x, weight, bias=None, silu=False, seq_idx=None):
    """Causal depthwise conv1d, as mamba_ssm's causal_conv1d_fn: out[b, d, t] = act(bias[d] +
    sum_k weight[d, k] x[b, d, t - width + 1 + k]), x = 0 before t = 0, act = SiLU if ``silu``.

    x: (batch, dim, seqlen); weight: (dim, width), width <= 8; bias: (dim,). Returns out like x.
    Differentiable in x, weight and bias (the backward recomputes the pre-activation from x).

    Packed rows: ``seq_idx`` (batch, seqlen) int32, as selective_scan's; x = 0 before each
    sequence's start too, so no output reads another sequence's inputs."""
    _on_device_of_x("causal_conv1d", x, weight=weight, bias=bias, seq_idx=seq_idx)
    return _ops.causal_conv1d_fwd(x, weight, bias, bool(silu), seq_idx)


def causal_conv1d_update(conv_state, x, weight, bias=None, silu=False):
    """One decode position of causal_conv1d: conv_state (batch, dim, width), float32/float64,
    holds the last width inputs; it shifts left in place and takes x (batch, dim). Returns the
    output (batch, dim) in x's dtype. Not differentiable (inference only)."""
    _on_device_of_x("causal_conv1d_update", x, conv_state=conv_state, weight=weight, bias=bias)
    return _ops.causal_conv1d_update(conv_state, x, weight, bias, bool(silu))


def mamba_state_update(state, x, xdbl, dt_weight, dt_bias, A_log, D=None, z=None):
    """The SSM decode step of a Mamba block from x_proj's output xdbl = [dt_low | B | C] (batch,
    dt_rank + 2 dstate): selective_state_update(state, x, dt_low @ dt_weight^T, -exp(A_log), B, C,
    D, z, dt_bias, dt_softplus=True) in one kernel, xdbl and z read where they are (row-strided
    views are fine). state: (batch, dim, dstate), updated in place. Returns y (batch, dim)."""
    _on_device_of_x("mamba_state_update", x, state=state, xdbl=xdbl, dt_weight=dt_weight, dt_bias=dt_bias,
                    A_log=A_log, D=D, z=z)
    return _ops.mamba_state_update(state, x, xdbl, z, dt_weight, dt_bias, A_log, D)


def add_rms_norm(x, residual, weight, eps=None, out_dtype=None):
    """A layer's pre-norm with the residual add before it, in one kernel: returns (sum, out), sum = x
    + residual (x alone if residual is None) and out = rms_norm(sum, weight, eps) cast to out_dtype
    (default x's dtype). x (rows, dim): the float32 (CPU also float64) residual stream; residual
    (rows, dim): the previous layer's output (in its matmul dtype); weight (dim,). eps None: as
    torch.nn.RMSNorm, the machine epsilon of x's dtype. Not differentiable itself (decode; the
    training layers' autograd nodes in models/mamba.py call it in their forwards)."""
    _on_device_of_x("add_rms_norm", x, residual=residual, weight=weight)
    return _ops.add_rms_norm(x, residual, weight, _stream_eps("add_rms_norm", x, eps), out_dtype or x.dtype)


def _stream_eps(op, x, eps):
    """eps None: as torch.nn.RMSNorm, the machine epsilon of the residual stream x's dtype."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{op}: x must be a torch.Tensor, got {type(x).__name__}")
    eps = torch.finfo(x.dtype).eps if eps is None and x.is_floating_point() else eps
    return 0.0 if eps is None else float(eps)


def rms_norm(x, weight=None, eps=None, out_dtype=None):
    """The training backward's recomputed pre-norm, cast in the same kernel: rms_norm(x) * weight
    (weight None: the normalised x alone) in out_dtype (default x's dtype). x (rows, dim): the float32
    (CPU also float64) residual stream; weight (dim,). Not differentiable (it serves backwards)."""
    _on_device_of_x("rms_norm", x, weight=weight)
    return _ops.rms_norm(x, weight, _stream_eps("rms_norm", x, eps), out_dtype or x.dtype)


def rms_norm_backward(grad, x, weight=None, eps=None, grad_sum=None, cast_dtype=None):
    """The backward of rms_norm(x, weight, eps) for x, with the residual stream's other gradient
    added, in one kernel on CUDA: returns (dx, dx_cast), dx = d(rms_norm(x) * weight)/dx applied to
    grad, plus grad_sum, in x's dtype, and dx_cast a copy of dx in cast_dtype (None: an empty tensor).
    x (rows, dim): the float32 (CPU also float64) residual stream; grad and grad_sum (rows, dim) of
    any floating dtype; weight (dim,). The weight's own gradient is not computed (the layer gets it
    from in_proj's, models/mamba.py)."""
    _on_device_of_x("rms_norm_bwd", x, grad=grad, weight=weight, grad_sum=grad_sum)
    return _ops.rms_norm_bwd(grad, x, weight, _stream_eps("rms_norm_bwd", x, eps), grad_sum, cast_dtype)


def _conv_setup_context(ctx, inputs, output):
    x, weight, bias, silu, seq_idx = inputs
    ctx.save_for_backward(x, weight, bias, seq_idx)
    ctx.silu = silu


def _conv_backward(ctx, dout):
    x, weight, bias, seq_idx = ctx.saved_tensors
    dx, dweight, dbias = _ops.causal_conv1d_bwd(dout, x, weight, bias, ctx.silu, seq_idx)
    return dx, dweight.to(weight.dtype), None if bias is None else dbias.to(bias.dtype), None, None


torch.library.register_autograd("ssm_tools::causal_conv1d_fwd", _conv_backward, setup_context=_conv_setup_context)


@torch.library.register_fake("ssm_tools::causal_conv1d_fwd")
def _conv_fwd_fake(x, weight, bias, silu, seq_idx=None):
    return x.new_empty(x.shape)


@torch.library.register_fake("ssm_tools::causal_conv1d_bwd")
def _conv_bwd_fake(dout, x, weight, bias, silu, seq_idx=None):
    dtype = _state_dtype(x)
    return (x.new_empty(x.shape), x.new_empty(weight.shape, dtype=dtype),
            x.new_empty(0 if bias is None else bias.shape, dtype=dtype))


@torch.library.register_fake("ssm_tools::causal_conv1d_bwd_cat")
def _conv_bwd_cat_fake(dout, x, weight, bias, silu, seq_idx, rest):
    batch, dim, seqlen = x.shape
    dx, dweight, dbias = _conv_bwd_fake(dout, x, weight, bias, silu, seq_idx)
    return x.new_empty((batch, seqlen, dim + sum(p.shape[1] for p in rest))), dweight, dbias


@torch.library.register_fake("ssm_tools::causal_conv1d_update")
def _conv_update_fake(conv_state, x, weight, bias, silu):
    return x.new_empty(x.shape)


@torch.library.register_fake("ssm_tools::mamba_state_update")
def _mamba_state_update_fake(state, x, xdbl, z, dt_weight, dt_bias, A_log, D):
    return x.new_empty(x.shape)


@torch.library.register_fake("ssm_tools::add_rms_norm")
def _add_rms_norm_fake(x, residual, weight, eps, out_dtype):
    return x.new_empty(x.shape), x.new_empty(x.shape, dtype=out_dtype)


@torch.library.register_fake("ssm_tools::rms_norm")
def _rms_norm_fake(x, weight, eps, out_dtype):
    return x.new_empty(x.shape, dtype=out_dtype)


@torch.library.register_fake("ssm_tools::rms_norm_bwd")
def _rms_norm_bwd_fake(grad, x, weight, eps, grad_sum, cast_dtype):
    return x.new_empty(x.shape), x.new_empty(x.shape if cast_dtype is not None else (0,), dtype=cast_dtype or x.dtype)


@torch.library.register_fake("ssm_tools::transpose_cat")
def _transpose_cat_fake(parts):
    batch, _, seqlen = parts[0].shape
    return parts[0].new_empty((batch, seqlen, sum(p.shape[1] for p in parts)))
