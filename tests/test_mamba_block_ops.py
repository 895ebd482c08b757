"""The Mamba block's kernels other than the scan (causal conv1d forward/backward and decode update,
the block's SSM decode step, the decode step's residual add + RMSNorm, the transposing concatenation) against the references of
ssm_tools.reference computed in float64 on the same, upcast inputs. Fresh random inputs per run (the
seed is printed). Every test runs on the CPU kernels and, where torch sees a GPU, on the CUDA ones
(the device machine runs this file with the other CUDA tests)."""
import re

import pytest
import torch

import ssm_tools.ops as ops
from conftest import packed_seq_idx
from ssm_tools.reference import (add_rms_norm_ref, causal_conv1d_ref, causal_conv1d_update_ref,
                                 mamba_state_update_ref, selective_state_update_ref)

OPS = torch.ops.ssm_tools
CUDA = pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(),
                                                                        reason="needs a CUDA GPU")])
DEVICES = ["cpu", CUDA]
MAX_CONV_WIDTH = 8  # kMaxConvWidth of csrc/kernels/mamba_block_params.h
TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 1e-2}


@pytest.fixture
def gen():
    seed = torch.randint(0, 2**31, ()).item()
    print(f"torch seed {seed}")
    return torch.Generator().manual_seed(seed)


def rnd(gen, *shape, dtype=torch.float32, device="cpu", scale=1.0):
    return (torch.randn(*shape, generator=gen) * scale).to(dtype=dtype, device=device)


def rel_err(got, ref):
    got, ref = got.double().cpu(), ref.double().cpu()
    assert got.shape == ref.shape, (got.shape, ref.shape)
    assert torch.isfinite(got).all()
    return ((got - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def dtypes(device):
    return [torch.float64, torch.float32, torch.bfloat16] if device == "cpu" else \
        [torch.float32, torch.bfloat16, torch.float16]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(2, 3, 1, 4), (3, 5, 17, 4), (1, 130, 300, 4), (2, 7, 40, 2), (2, 4, 9, 8)], ids=str)
@pytest.mark.parametrize("silu, bias", [(True, True), (False, False)])
def test_conv_matches_reference(gen, device, shape, silu, bias):
    """Forward and all three gradients; 300 positions span many of the CUDA kernels' chunks."""
    batch, dim, seqlen, width = shape
    for dtype in dtypes(device):
        wdtype = torch.float64 if dtype == torch.float64 else torch.float32
        x = rnd(gen, batch, dim, seqlen, dtype=dtype, device=device).requires_grad_()
        w = rnd(gen, dim, width, dtype=wdtype, device=device, scale=0.5).requires_grad_()
        b = rnd(gen, dim, dtype=wdtype, device=device).requires_grad_() if bias else None
        g = rnd(gen, batch, dim, seqlen, dtype=dtype, device=device)
        leaves = [t for t in (x, w, b) if t is not None]
        out = ops.causal_conv1d(x, w, b, silu)
        grads = torch.autograd.grad(out, leaves, g)
        up = [t.detach().double().cpu().requires_grad_() for t in leaves]
        ref = causal_conv1d_ref(up[0], up[1], up[2] if bias else None, silu)
        ref_grads = torch.autograd.grad(ref, up, g.double().cpu())
        assert out.dtype == dtype and out.device.type == device
        assert rel_err(out, ref) < TOL[dtype], dtype
        for got, want, leaf, name in zip(grads, ref_grads, leaves, ("x", "weight", "bias")):
            assert got.dtype == leaf.dtype, name
            assert rel_err(got, want) < TOL[dtype] * 3, (dtype, name)


def conv_case(gen, shape, dtype, device, bias):
    batch, dim, seqlen, width = shape
    wdtype = torch.float64 if dtype == torch.float64 else torch.float32
    x = rnd(gen, batch, dim, seqlen, dtype=dtype, device=device).requires_grad_()
    w = rnd(gen, dim, width, dtype=wdtype, device=device, scale=0.5).requires_grad_()
    b = rnd(gen, dim, dtype=wdtype, device=device).requires_grad_() if bias else None
    return [t for t in (x, w, b) if t is not None]


# Packed rows of 300 positions: sequences of 1, 2, 3 positions (shorter than the taps), starts at and
# around the CUDA kernels' chunk boundaries (multiples of 8 and 16), random starts, and a row of one
# sequence.
PACKED_CONV_ROWS = [[1, 2, 4, 7, 127, 128, 130, 256, 299], 40, []]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("width", [2, 4, 8])
@pytest.mark.parametrize("silu, bias", [(True, True), (False, False)])
def test_conv_packed_rows_match_reference_sequence_by_sequence(gen, device, width, silu, bias):
    """seq_idx: forward and all three gradients against the float64 reference convolving every
    sequence as its own row (no tap reads the previous sequence, forward or backward)."""
    shape = (len(PACKED_CONV_ROWS), 6, 300, width)
    seq_idx = packed_seq_idx(gen, shape[2], PACKED_CONV_ROWS).to(device)
    for dtype in dtypes(device):
        leaves = conv_case(gen, shape, dtype, device, bias)
        g = rnd(gen, *shape[:3], dtype=dtype, device=device)
        out = ops.causal_conv1d(*leaves[:2], leaves[2] if bias else None, silu, seq_idx=seq_idx)
        grads = torch.autograd.grad(out, leaves, g)
        up = [t.detach().double().cpu().requires_grad_() for t in leaves]
        ref = causal_conv1d_ref(up[0], up[1], up[2] if bias else None, silu, seq_idx=seq_idx.cpu())
        ref_grads = torch.autograd.grad(ref, up, g.double().cpu())
        assert rel_err(out, ref) < TOL[dtype], dtype
        for got, want, name in zip(grads, ref_grads, ("x", "weight", "bias")):
            assert rel_err(got, want) < TOL[dtype] * 3, (dtype, name)


@pytest.mark.parametrize("device", DEVICES)
def test_conv_packed_rows_equal_separate_rows(gen, device):
    """Three sequences packed into one row give each sequence's own conv (float32, to rounding)."""
    lengths, dim, width = [5, 1, 9], 4, 4
    w, b = rnd(gen, dim, width, device=device), rnd(gen, dim, device=device)
    parts = [rnd(gen, 1, dim, n, device=device) for n in lengths]
    seq_idx = torch.repeat_interleave(torch.arange(3, dtype=torch.int32), torch.tensor(lengths))[None].to(device)
    packed = ops.causal_conv1d(torch.cat(parts, dim=-1), w, b, True, seq_idx)
    torch.testing.assert_close(packed, torch.cat([ops.causal_conv1d(p, w, b, True) for p in parts], dim=-1),
                               rtol=1e-6, atol=1e-6)


def offset_rnd(gen, shape, dtype, device, offset):
    """Random (batch, dim, seqlen) values starting `offset` elements into their storage: with offset
    1 no row is 16-byte aligned (the CUDA kernels' scalar loads)."""
    n = torch.Size(shape).numel()
    buf = torch.empty(n + offset, dtype=dtype, device=device)
    buf[offset:] = rnd(gen, n, dtype=dtype, device=device)
    return buf[offset:].view(shape)


# Lengths below, at and across the CUDA kernels' chunks (two 16-byte vectors: 16 positions in
# bf16/fp16, 8 in fp32), the paper's 216 and a long 1000; odd channel counts; width 4 and, over the
# dtypes, every width from 1 to MAX_CONV_WIDTH; packed rows with sequences shorter than the taps.
CHUNK_SHAPES = [(3, 5, 1), (2, 7, 7), (2, 3, 216), (1, 3, 1000), (4, 9, 33)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", CHUNK_SHAPES, ids=str)
@pytest.mark.parametrize("packed", [False, True], ids=["one_sequence", "packed"])
@pytest.mark.parametrize("offset", [0, 1], ids=["aligned", "unaligned"])
def test_conv_chunks_match_reference(gen, device, shape, packed, offset):
    """Forward and all three gradients on fresh inputs against the float64 reference, for every
    dtype and widths (and x, dout that start off a 16-byte boundary)."""
    batch, dim, seqlen = shape
    rows = [[1, 2, 3, 17, 18], seqlen // 5, 0, seqlen // 20][:batch]
    seq_idx = packed_seq_idx(gen, seqlen, [[s for s in r if s < seqlen] if isinstance(r, list) else r
                                           for r in rows]).to(device) if packed else None
    for i, dtype in enumerate(dtypes(device)):
        for width in sorted({4, *range(1 + i, MAX_CONV_WIDTH + 1, len(dtypes(device)))}):
            silu = bool(width % 2)
            x = offset_rnd(gen, shape, dtype, device, offset).requires_grad_()
            w = rnd(gen, dim, width, dtype=x.dtype if dtype == torch.float64 else torch.float32, device=device,
                    scale=0.5).requires_grad_()
            b = rnd(gen, dim, dtype=w.dtype, device=device).requires_grad_()
            g = offset_rnd(gen, shape, dtype, device, offset)
            out = ops.causal_conv1d(x, w, b, silu, seq_idx=seq_idx)
            grads = torch.autograd.grad(out, (x, w, b), g)
            up = [t.detach().double().cpu().requires_grad_() for t in (x, w, b)]
            ref = causal_conv1d_ref(*up, silu, seq_idx=None if seq_idx is None else seq_idx.cpu())
            ref_grads = torch.autograd.grad(ref, up, g.double().cpu())
            assert rel_err(out, ref) < TOL[dtype], (dtype, width)
            for got, want, name in zip(grads, ref_grads, ("x", "weight", "bias")):
                assert rel_err(got, want) < TOL[dtype] * 3, (dtype, width, name)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_conv_cuda_long_rows_and_deterministic_weight_grads(gen, dtype):
    """Rows long enough that every channel's blocks loop over several chunks a thread (more than
    1024 blocks' worth), against the reference; dweight and dbias (per-block sums added in a fixed
    order) come out bitwise equal on a second call."""
    shape = (2, 3, 1_100_000)
    x, g = rnd(gen, *shape, dtype=dtype, device="cuda"), rnd(gen, *shape, dtype=dtype, device="cuda")
    w, b = rnd(gen, 3, 4, device="cuda", scale=0.5), rnd(gen, 3, device="cuda")
    got = OPS.causal_conv1d_bwd(g, x, w, b, True)
    assert all(torch.equal(a, c) for a, c in zip(got, OPS.causal_conv1d_bwd(g, x, w, b, True)))
    up = [t.double().cpu().requires_grad_() for t in (x, w, b)]
    ref = causal_conv1d_ref(*up, True)
    assert rel_err(OPS.causal_conv1d_fwd(x, w, b, True), ref) < TOL[dtype]
    for got_t, want in zip(got, torch.autograd.grad(ref, up, g.double().cpu())):
        assert rel_err(got_t, want) < TOL[dtype] * 3


def test_conv_packed_gradcheck(gen):
    leaves = [t.detach().requires_grad_() for t in conv_case(gen, (2, 3, 11, 4), torch.float64, "cpu", True)]
    seq_idx = packed_seq_idx(gen, 11, [[1, 3, 6], 2])
    assert torch.autograd.gradcheck(lambda *a: ops.causal_conv1d(*a, silu=True, seq_idx=seq_idx), leaves)


def test_conv_gradcheck(gen):
    x = rnd(gen, 2, 3, 11, dtype=torch.float64).requires_grad_()
    w = rnd(gen, 3, 4, dtype=torch.float64).requires_grad_()
    b = rnd(gen, 3, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda *a: ops.causal_conv1d(*a, silu=True), (x, w, b))


@pytest.mark.parametrize("device", DEVICES)
def test_conv_update_steps_equal_conv(gen, device):
    """Stepping the decode update through a sequence (x read from a row-strided view, as the decode
    step passes in_proj's output) gives the parallel conv's outputs, and moves the state as the
    reference does."""
    batch, dim, seqlen, width = 3, 6, 9, 4
    xz = rnd(gen, batch, 2 * dim, seqlen, device=device)
    x = xz[:, :dim]
    w, b = rnd(gen, dim, width, device=device), rnd(gen, dim, device=device)
    state = torch.zeros(batch, dim, width, device=device)
    ref_state = state.clone()
    want = ops.causal_conv1d(x.contiguous(), w, b, silu=True)
    for t in range(seqlen):
        out = ops.causal_conv1d_update(state, xz[..., t][:, :dim], w, b, silu=True)
        ref = causal_conv1d_update_ref(ref_state, x[..., t], w, b, silu=True)
        assert rel_err(out, want[..., t]) < 1e-5
        assert rel_err(out, ref) < 1e-5
        assert rel_err(state, ref_state) == 0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dstate, dt_rank", [(16, 48), (4, 3), (7, 5)])
def test_mamba_state_update_matches_reference(gen, device, dstate, dt_rank):
    """From x_proj's output read in place (a row-strided view) and z a strided half of in_proj's
    output; equals the reference and selective_state_update with dt computed apart."""
    batch, dim = 5, 12
    for dtype in dtypes(device):
        if dtype == torch.float64:
            continue  # float64: test_mamba_state_update_float64_equals_selective_state_update
        sdtype = torch.float32
        xdbl = rnd(gen, batch, dt_rank + 2 * dstate + 3, dtype=dtype, device=device)[:, :dt_rank + 2 * dstate]
        z = rnd(gen, batch, 2 * dim, dtype=dtype, device=device)[:, dim:]
        x = rnd(gen, batch, dim, dtype=dtype, device=device)
        dt_w = rnd(gen, dim, dt_rank, device=device, scale=dt_rank ** -0.5)
        dt_b, A_log, D = rnd(gen, dim, device=device) - 2, rnd(gen, dim, dstate, device=device, scale=0.5), \
            rnd(gen, dim, device=device)
        state = rnd(gen, batch, dim, dstate, dtype=sdtype, device=device)
        ref_state = state.double().cpu()
        y = ops.mamba_state_update(state, x, xdbl, dt_w, dt_b, A_log, D, z)
        ref = mamba_state_update_ref(ref_state, *(t.double().cpu() for t in (x, xdbl, dt_w, dt_b, A_log, D, z)))
        assert y.dtype == dtype
        assert rel_err(y, ref) < TOL[dtype]
        assert rel_err(state, ref_state) < 1e-5


def test_mamba_state_update_float64_equals_selective_state_update(gen):
    """In float64 (the CPU accuracy path), the fused step is selective_state_update with dt computed
    apart, to rounding."""
    state = torch.randn(2, 3, 4, dtype=torch.float64, generator=gen)
    x, xdbl, dt_w, dt_b, A_log, D = (torch.randn(*s, dtype=torch.float64, generator=gen)
                                     for s in ((2, 3), (2, 2 + 8), (3, 2), (3,), (3, 4), (3,)))
    state2 = state.clone()
    want = selective_state_update_ref(state2, x, xdbl[:, :2] @ dt_w.t(), -A_log.exp(), xdbl[:, 2:6], xdbl[:, 6:], D,
                                      None, dt_b, True)
    torch.testing.assert_close(ops.mamba_state_update(state, x, xdbl, dt_w, dt_b, A_log, D), want, rtol=1e-12,
                               atol=1e-12)
    torch.testing.assert_close(state, state2, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seqlen", [45, 216])
def test_transpose_cat(gen, device, seqlen):
    """Parts across the CUDA kernel's 64 x 64 tiles; odd lengths and an odd column offset (the part
    after 33 rows) take its element-by-element accesses, the others its paired ones."""
    for dtype in dtypes(device):
        parts = [rnd(gen, 3, d, seqlen, dtype=dtype, device=device) for d in (33, 7, 130)]
        got = OPS.transpose_cat(parts)
        assert got.is_contiguous() and torch.equal(got, torch.cat([p.mT for p in parts], dim=-1))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("rows, dim", [(1, 1), (3, 5), (100, 768), (2, 1000), (1, 4099)], ids=str)
def test_add_rms_norm_matches_reference(gen, device, rows, dim):
    """Every out dtype, with and without a residual; dims past one pass of the CUDA block (256) and
    not a multiple of it. The sum is exact (one add in x's dtype); the norm's output to its dtype."""
    stream_dtypes = [torch.float64, torch.float32] if device == "cpu" else [torch.float32]
    for x_dtype in stream_dtypes:
        for out_dtype in [x_dtype] + [d for d in dtypes(device) if d not in (torch.float32, torch.float64)]:
            x = rnd(gen, rows, dim, dtype=x_dtype, device=device, scale=3.0)
            w = rnd(gen, dim, dtype=torch.float32, device=device)
            for residual in (None, rnd(gen, rows, dim, dtype=out_dtype, device=device)):
                total, out = ops.add_rms_norm(x, residual, w, None, out_dtype)
                ref_total, ref_out = add_rms_norm_ref(x.double().cpu(), None if residual is None else
                                                      residual.double().cpu(), w.double().cpu(), torch.finfo(x_dtype).eps)
                assert total.dtype == x_dtype and out.dtype == out_dtype and total.device == x.device
                assert rel_err(total, ref_total) <= TOL[x_dtype]
                assert rel_err(out, ref_out) <= TOL[out_dtype]
                assert x.shape == total.shape == out.shape


@pytest.mark.parametrize("device", DEVICES)
def test_add_rms_norm_is_torch_rms_norm(gen, device):
    """The decode step's norm is nn.RMSNorm's (eps None: the dtype's machine epsilon), bar rounding."""
    norm = torch.nn.RMSNorm(64).to(device)
    with torch.no_grad():
        norm.weight.copy_(rnd(gen, 64, device=device))
        x = rnd(gen, 4, 64, device=device, scale=1e-3)  # small: eps matters
        torch.testing.assert_close(ops.add_rms_norm(x, None, norm.weight)[1], norm(x), rtol=1e-5, atol=1e-6)


def test_opcheck(gen):
    x, w, b = rnd(gen, 2, 3, 7), rnd(gen, 3, 4), rnd(gen, 3)
    torch.library.opcheck(OPS.causal_conv1d_fwd, (x, w, b, True))
    torch.library.opcheck(OPS.causal_conv1d_fwd, (x, w, None, False))
    torch.library.opcheck(OPS.causal_conv1d_bwd, (rnd(gen, 2, 3, 7), x, w, b, True))
    seq_idx = packed_seq_idx(gen, 7, [[2, 3], 2])
    torch.library.opcheck(OPS.causal_conv1d_fwd, (x, w, b, True, seq_idx))
    torch.library.opcheck(OPS.causal_conv1d_bwd, (rnd(gen, 2, 3, 7), x, w, b, True, seq_idx))
    torch.library.opcheck(OPS.causal_conv1d_update, (torch.zeros(2, 3, 4), x[..., 0], w, b, True))
    torch.library.opcheck(OPS.mamba_state_update, (torch.zeros(2, 3, 4), x[..., 0], rnd(gen, 2, 10), rnd(gen, 2, 3),
                                                   rnd(gen, 3, 2), rnd(gen, 3), rnd(gen, 3, 4), rnd(gen, 3)))
    torch.library.opcheck(OPS.transpose_cat, ([x, rnd(gen, 2, 5, 7)],))
    torch.library.opcheck(OPS.add_rms_norm, (rnd(gen, 3, 7), rnd(gen, 3, 7, dtype=torch.bfloat16), rnd(gen, 7), 1e-6,
                                             torch.bfloat16))
    torch.library.opcheck(OPS.add_rms_norm, (rnd(gen, 3, 7), None, rnd(gen, 7), 1e-6, torch.float32))


BAD = {
    "x_rank": (lambda x, w, b: ops.causal_conv1d(x[0], w, b), "x must be a non-empty (batch, dim, seqlen)"),
    "x_int": (lambda x, w, b: ops.causal_conv1d(x.long(), w, b), "x must be float16, bfloat16, float32 or float64"),
    "weight_dim": (lambda x, w, b: ops.causal_conv1d(x, w[:2], b), "weight must be (dim=3, width)"),
    "weight_wide": (lambda x, w, b: ops.causal_conv1d(x, torch.randn(3, 9), b), "width in [1, 8]"),
    "bias_shape": (lambda x, w, b: ops.causal_conv1d(x, w, b[:2]), "bias must have shape (3,)"),
    "weight_device": (lambda x, w, b: ops.causal_conv1d(x, w.to("meta"), b), "causal_conv1d: weight must be on cpu like x, got meta"),
    "seq_idx_dtype": (lambda x, w, b: ops.causal_conv1d(x, w, b, seq_idx=torch.zeros(2, 5, dtype=torch.int64)),
                      "causal_conv1d: seq_idx must be int32, got Long"),
    "seq_idx_shape": (lambda x, w, b: ops.causal_conv1d(x, w, b, seq_idx=torch.zeros(2, 4, dtype=torch.int32)),
                      "causal_conv1d: seq_idx must have shape (2, 5), got (2, 4)"),
    "seq_idx_device": (lambda x, w, b: ops.causal_conv1d(x, w, b, seq_idx=torch.zeros(2, 5, dtype=torch.int32,
                                                                                       device="meta")),
                       "causal_conv1d: seq_idx must be on cpu like x, got meta"),
    "seq_idx_bwd_shape": (lambda x, w, b: OPS.causal_conv1d_bwd(x, x, w, b, True, torch.zeros(1, 5, dtype=torch.int32)),
                          "causal_conv1d: seq_idx must have shape (2, 5), got (1, 5)"),
    "state_shape": (lambda x, w, b: ops.causal_conv1d_update(torch.zeros(2, 3, 3), x[..., 0], w, b),
                    "conv_state must have shape (2, 3, 4)"),
    "state_dtype": (lambda x, w, b: ops.causal_conv1d_update(torch.zeros(2, 3, 4, dtype=torch.bfloat16), x[..., 0], w, b),
                    "conv_state must be float32 or float64"),
    "xdbl_shape": (lambda x, w, b: ops.mamba_state_update(torch.zeros(2, 3, 4), x[..., 0], torch.randn(2, 9),
                                                          torch.randn(3, 2), b, torch.randn(3, 4)),
                   "xdbl must have shape (2, 10)"),
    "A_log_shape": (lambda x, w, b: ops.mamba_state_update(torch.zeros(2, 3, 4), x[..., 0], torch.randn(2, 10),
                                                           torch.randn(3, 2), b, torch.randn(4, 4)),
                    "A_log must be (dim=3, dstate)"),
    "norm_x_rank": (lambda x, w, b: ops.add_rms_norm(x, None, b), "add_rms_norm: x must be a non-empty (rows, dim)"),
    "norm_x_dtype": (lambda x, w, b: ops.add_rms_norm(x[..., 0].bfloat16(), None, b),
                     "add_rms_norm: x (the residual stream) must be float32 or float64, got BFloat16"),
    "norm_residual_shape": (lambda x, w, b: ops.add_rms_norm(x[..., 0], x[0], b),
                            "add_rms_norm: residual must have shape (2, 3), got (3, 5)"),
    "norm_residual_dtype": (lambda x, w, b: ops.add_rms_norm(x[..., 0], x[..., 0].half(), b, None, torch.bfloat16),
                            "add_rms_norm: residual must have out_dtype BFloat16, got Half"),
    "norm_weight_shape": (lambda x, w, b: ops.add_rms_norm(x[..., 0], None, w),
                          "add_rms_norm: weight must have shape (3,), got (3, 4)"),
    "norm_out_dtype": (lambda x, w, b: ops.add_rms_norm(x[..., 0], None, b, None, torch.int32),
                       "add_rms_norm: out_dtype must be a floating dtype, got Int"),
    "norm_weight_device": (lambda x, w, b: ops.add_rms_norm(x[..., 0], None, b.to("meta")),
                           "add_rms_norm: weight must be on cpu like x, got meta"),
}


@pytest.mark.parametrize("case", BAD)
def test_rejects_bad_input(gen, case):
    call, message = BAD[case]
    with pytest.raises(ValueError, match=re.escape(message)):
        call(rnd(gen, 2, 3, 5), rnd(gen, 3, 4), rnd(gen, 3))
