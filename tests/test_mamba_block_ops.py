"""The Mamba block's kernels other than the scan (causal conv1d forward/backward and decode update,
the block's SSM decode step, the decode step's residual add + RMSNorm, the training backward's norm
and its input gradient, the transposing concatenation) against the references of
ssm_tools.reference computed in float64 on the same, upcast inputs. Fresh random inputs per run (the
seed is printed). Every test runs on the CPU kernels and, where torch sees a GPU, on the CUDA ones
(the device machine runs this file with the other CUDA tests)."""
import re

import pytest
import torch

import ssm_tools.ops as ops
from conftest import packed_seq_idx
from ssm_tools.reference import (add_rms_norm_ref, causal_conv1d_ref, causal_conv1d_update_ref, mamba_state_update_ref,
                                 selective_state_update_ref)

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


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch, dim, dstate, dt_rank, xdbl_offset", [
    (1, 1536, 16, 48, 0), (100, 1536, 16, 48, 0), (1000, 1536, 16, 48, 0),  # the 24 x 768 Mamba's decode
    (3, 7, 32, 40, 0), (4, 9, 8, 4, 0), (2, 6, 12, 96, 0), (3, 5, 128, 8, 0),  # teams 8, 2, 4 (one idle), 32
    (2, 6, 16, 48, 1), (2, 6, 16, 48, 4)])  # xdbl one element off its runs (element loads), four (runs)
def test_mamba_state_update_contiguous_xdbl(gen, device, batch, dim, dstate, dt_rank, xdbl_offset):
    """xdbl as x_proj writes it (contiguous rows of dt_rank + 2 dstate, a multiple of 4 here): the CUDA
    kernel's one-load runs of dt_low, B and C and of dt_weight; offset by one element, its element loads."""
    for dtype in dtypes(device):
        if dtype == torch.float64:
            continue
        width = dt_rank + 2 * dstate
        xdbl = rnd(gen, batch * width + xdbl_offset, dtype=dtype, device=device)[xdbl_offset:].view(batch, width)
        z = rnd(gen, batch, 2 * dim, dtype=dtype, device=device)[:, dim:]
        x = rnd(gen, batch, dim, dtype=dtype, device=device)
        dt_w = rnd(gen, dim, dt_rank, device=device, scale=dt_rank ** -0.5)
        dt_b, A_log, D = rnd(gen, dim, device=device) - 2, rnd(gen, dim, dstate, device=device, scale=0.5), \
            rnd(gen, dim, device=device)
        state = rnd(gen, batch, dim, dstate, device=device)
        ref_state = state.double().cpu()
        y = ops.mamba_state_update(state, x, xdbl, dt_w, dt_b, A_log, D, z)
        ref = mamba_state_update_ref(ref_state, *(t.double().cpu() for t in (x, xdbl, dt_w, dt_b, A_log, D, z)))
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
@pytest.mark.parametrize("seqlen", [45, 216, 256])
@pytest.mark.parametrize("dims", [(33, 7, 130), (64, 8, 120)], ids=str)
def test_transpose_cat(gen, device, seqlen, dims):
    """Parts across the CUDA kernel's 64 x 64 tiles. Its 16-byte accesses need whole aligned vectors
    (4 float32, 8 bf16/fp16): 216 and 256 positions read in vectors (216: a part-full last tile), 45
    one element at a time; (64, 8, 120) rows write in vectors (192 columns, offsets 0, 64, 72; the 120
    rows' last tile part-full), (33, 7, 130) one element at a time (170 columns, odd offsets)."""
    for dtype in dtypes(device):
        parts = [rnd(gen, 3, d, seqlen, dtype=dtype, device=device) for d in dims]
        got = OPS.transpose_cat(parts)
        assert got.is_contiguous() and torch.equal(got, torch.cat([p.mT for p in parts], dim=-1))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape, rest, packed", [((2, 70, 45, 4), (70,), False), ((3, 64, 216, 4), (64, 8), True),
                                                 ((35, 10, 20, 8), (), False), ((2, 33, 100, 3), (5,), True)], ids=str)
def test_conv_bwd_cat_is_conv_bwd_then_transpose_cat(gen, device, shape, rest, packed):
    """The conv backward with dx written token-major beside the transposes of `rest`: dx_cat equals
    transpose_cat([dx, *rest]) of the channel-first backward exactly (the CUDA kernels share each
    chunk's arithmetic), dweight and dbias to float32 rounding (another grouping of the sums). CUDA
    tiles: 64 positions x 64 (16-bit types) / 32 (float32) channels, vectors along the channels where
    the columns allow (70 + 70, 64 + 72: yes; 33 + 5, 10: one element at a time); 35 batch rows loop
    over the 32 batch blocks; packed rows (seq_idx) included."""
    batch, dim, seqlen, width = shape
    seq_idx = packed_seq_idx(gen, seqlen, [3] * batch).to(device) if packed else None
    for dtype in dtypes(device):
        wdtype = torch.float64 if dtype == torch.float64 else torch.float32
        x = rnd(gen, batch, dim, seqlen, dtype=dtype, device=device)
        dout = rnd(gen, batch, dim, seqlen, dtype=dtype, device=device)
        w = rnd(gen, dim, width, dtype=wdtype, device=device, scale=0.5)
        b = rnd(gen, dim, dtype=wdtype, device=device)
        parts = [rnd(gen, batch, d, seqlen, dtype=dtype, device=device) for d in rest]
        dx_cat, dw, db = OPS.causal_conv1d_bwd_cat(dout, x, w, b, True, seq_idx, parts)
        dx, dw_want, db_want = OPS.causal_conv1d_bwd(dout, x, w, b, True, seq_idx)
        assert dx_cat.shape == (batch, seqlen, dim + sum(rest)) and dx_cat.is_contiguous()
        assert torch.equal(dx_cat, OPS.transpose_cat([dx, *parts]))
        tol = TOL[torch.float64 if dtype == torch.float64 else torch.float32]
        assert rel_err(dw, dw_want) <= tol and rel_err(db, db_want) <= tol


NORM_SHAPES = [(1, 1), (3, 5), (100, 768), (4096, 768), (7, 1000), (5, 4099), (300, 12)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("rows, dim", NORM_SHAPES, ids=str)
def test_rms_norm_matches_reference(gen, device, rows, dim):
    """The backward's recomputed norm: with a weight and without (the normalised x), every out dtype,
    against the float64 reference; on CUDA the add_rms_norm kernels without a residual or sum (from
    4096 rows the warp-a-row kernel)."""
    stream_dtypes = [torch.float64, torch.float32] if device == "cpu" else [torch.float32]
    for x_dtype in stream_dtypes:
        x = rnd(gen, rows, dim, dtype=x_dtype, device=device, scale=3.0)
        w = rnd(gen, dim, dtype=torch.float32, device=device)
        for out_dtype in [x_dtype] + [d for d in dtypes(device) if d not in (torch.float32, torch.float64)]:
            for weight in (w, None):
                out = ops.rms_norm(x, weight, None, out_dtype)
                ref = add_rms_norm_ref(x.double().cpu(), None, torch.ones(dim, dtype=torch.float64) if weight is None
                                       else w.double().cpu(), torch.finfo(x_dtype).eps)[1]
                assert out.dtype == out_dtype and out.shape == x.shape and out.device == x.device
                assert rel_err(out, ref) <= TOL[out_dtype]


def rms_norm_bwd_plain(grad, x, weight, eps, grad_sum):
    """rms_norm_bwd's plain formulation: autograd through F.rms_norm in float64, plus grad_sum. Also
    the scale its error is measured against: the norm of its terms (rstd grad weight, grad_sum), since
    the norm's input gradient alone cancels to 0 at dim 1."""
    x = x.detach().double().cpu().clone().requires_grad_()
    w = None if weight is None else weight.double().cpu()
    out = torch.nn.functional.rms_norm(x, x.shape[-1:], w, eps)
    dx, = torch.autograd.grad(out, x, grad.double().cpu())
    term = grad.double().cpu() * (1 if w is None else w) * torch.rsqrt(x.detach().pow(2).mean(-1, keepdim=True) + eps)
    if grad_sum is None:
        return dx, term.norm().item()
    return dx + grad_sum.double().cpu(), term.norm().item() + grad_sum.double().norm().item()


def err_against(got, want_and_scale):
    want, scale = want_and_scale
    return ((got.double().cpu() - want).norm() / max(scale, 1e-30)).item()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("rows, dim", NORM_SHAPES, ids=str)
def test_rms_norm_bwd_matches_autograd(gen, device, rows, dim):
    """The norm's input gradient plus the stream's other gradient, and its cast copy, against autograd
    of F.rms_norm in float64: every grad dtype, with and without weight, grad_sum and the copy. CUDA:
    16-byte vectors where dim % 4 == 0 (768: all of a row in registers; 1000: past them; 12: fewer
    vectors than lanes), one element at a time otherwise (4099, 5, 1)."""
    stream_dtypes = [torch.float64, torch.float32] if device == "cpu" else [torch.float32]
    for x_dtype in stream_dtypes:
        tol = TOL[x_dtype] * 10  # a difference of terms summed over the row: a few roundings more
        x = rnd(gen, rows, dim, dtype=x_dtype, device=device, scale=3.0)
        w = rnd(gen, dim, dtype=torch.float32, device=device)
        for grad_dtype in [x_dtype] + [d for d in dtypes(device) if d not in (torch.float32, torch.float64)]:
            grad = rnd(gen, rows, dim, dtype=grad_dtype, device=device)
            for weight, grad_sum, cast in ((w, rnd(gen, rows, dim, dtype=x_dtype, device=device), grad_dtype),
                                           (None, None, None), (w, None, None)):
                dx, dx_cast = ops.rms_norm_backward(grad, x, weight, None, grad_sum, cast)
                want = rms_norm_bwd_plain(grad, x, weight, torch.finfo(x_dtype).eps, grad_sum)
                assert dx.dtype == x_dtype and dx.shape == x.shape and dx.device == x.device
                assert torch.isfinite(dx).all() and err_against(dx, want) <= tol
                if cast is None:
                    assert dx_cast.numel() == 0
                else:
                    assert dx_cast.dtype == cast and torch.equal(dx_cast, dx.to(cast))


@pytest.mark.parametrize("device", DEVICES)
def test_rms_norm_bwd_misaligned_grad_equals_aligned(gen, device):
    """grad one element into its storage: CUDA cannot read it in 16-byte vectors and takes the
    one-element kernel; the same result as the aligned grad's (to float32 rounding: another
    summation order) and the plain formulation's."""
    rows, dim = 64, 768
    x, w = rnd(gen, rows, dim, device=device, scale=3.0), rnd(gen, dim, device=device)
    for dtype in dtypes(device):
        grad = rnd(gen, rows, dim, dtype=dtype, device=device)
        shifted = torch.empty(rows * dim + 1, dtype=dtype, device=device)[1:].view(rows, dim)
        shifted.copy_(grad)
        want = rms_norm_bwd_plain(grad, x, w, torch.finfo(x.dtype).eps, None)
        for g in (grad, shifted):
            assert err_against(ops.rms_norm_backward(g, x, w)[0], want) <= 10 * TOL[torch.float32]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("rows, dim", [(1, 1), (3, 5), (100, 768), (2, 1000), (1, 4099), (4096, 768), (5000, 12),
                                       (4100, 10)], ids=str)
def test_add_rms_norm_matches_reference(gen, device, rows, dim):
    """Every out dtype, with and without a residual; dims past one pass of the CUDA block (256) and
    not a multiple of it. From 4096 rows (training's batch x length) CUDA takes a warp a row with
    4-element vectors where dim allows (4096 x 768: many vectors a lane; 5000 x 12: fewer vectors than
    lanes), the block-a-row kernel otherwise (4100 x 10). The sum is exact (one add in x's dtype);
    the norm's output to its dtype."""
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
def test_add_rms_norm_misaligned_residual_at_training_rows(gen, device):
    """A residual one element past a vector boundary (a contiguous view at an odd offset): CUDA's
    warp-a-row kernel would misread it, so it takes the block-a-row kernel; same values as aligned."""
    rows, dim = 4096, 64
    x = rnd(gen, rows, dim, device=device, scale=3.0)
    w = rnd(gen, dim, device=device)
    for dtype in dtypes(device):
        residual = rnd(gen, rows, dim, dtype=dtype, device=device)
        shifted = torch.empty(rows * dim + 1, dtype=dtype, device=device)[1:].view(rows, dim)
        shifted.copy_(residual)
        want = ops.add_rms_norm(x, residual, w, None, dtype)
        got = ops.add_rms_norm(x, shifted, w, None, dtype)
        ref_total, ref_out = add_rms_norm_ref(x.double().cpu(), residual.double().cpu(), w.double().cpu(),
                                              torch.finfo(x.dtype).eps)
        assert torch.equal(got[0], want[0]) and rel_err(got[0], ref_total) <= TOL[torch.float32]
        tol = max(TOL[dtype], TOL[torch.float32])  # the norm runs on the float32 sum
        assert rel_err(got[1], ref_out) <= tol and rel_err(want[1], ref_out) <= tol


@pytest.mark.parametrize("device", DEVICES)
def test_add_rms_norm_residual_in_another_dtype(gen, device):
    """The last norm before the head: a bf16/fp16 residual (the last layer's output) added to the
    float32 stream, the norm's output in float32: the reference's, and torch's add then RMSNorm (the
    step's two kernels it replaces) to float32 rounding."""
    norm = torch.nn.RMSNorm(768).to(device)
    with torch.no_grad():
        norm.weight.copy_(rnd(gen, 768, device=device))
    for res_dtype in [d for d in dtypes(device) if d not in (torch.float32, torch.float64)]:
        for rows in (1, 100):
            x = rnd(gen, rows, 768, device=device, scale=3.0)
            residual = rnd(gen, rows, 768, dtype=res_dtype, device=device)
            total, out = ops.add_rms_norm(x, residual, norm.weight, None, torch.float32)
            ref_total, ref_out = add_rms_norm_ref(x.double().cpu(), residual.double().cpu(),
                                                  norm.weight.detach().double().cpu(), torch.finfo(torch.float32).eps)
            assert total.dtype == out.dtype == torch.float32
            assert rel_err(total, ref_total) <= TOL[torch.float32] and rel_err(out, ref_out) <= TOL[torch.float32]
            with torch.no_grad():
                torch.testing.assert_close(out, norm(x + residual), rtol=1e-5, atol=1e-5)


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
    torch.library.opcheck(OPS.causal_conv1d_bwd_cat, (rnd(gen, 2, 3, 7), x, w, b, True, None, [rnd(gen, 2, 5, 7)]))
    torch.library.opcheck(OPS.causal_conv1d_bwd_cat, (rnd(gen, 2, 3, 7), x, w, None, False, seq_idx, []))
    torch.library.opcheck(OPS.add_rms_norm, (rnd(gen, 3, 7), rnd(gen, 3, 7, dtype=torch.bfloat16), rnd(gen, 7), 1e-6,
                                             torch.bfloat16))
    torch.library.opcheck(OPS.add_rms_norm, (rnd(gen, 3, 7), None, rnd(gen, 7), 1e-6, torch.float32))
    torch.library.opcheck(OPS.rms_norm, (rnd(gen, 3, 7), rnd(gen, 7), 1e-6, torch.bfloat16))
    torch.library.opcheck(OPS.rms_norm, (rnd(gen, 3, 7), None, 1e-6, torch.float32))
    torch.library.opcheck(OPS.rms_norm_bwd, (rnd(gen, 3, 7, dtype=torch.bfloat16), rnd(gen, 3, 7), rnd(gen, 7), 1e-6,
                                             rnd(gen, 3, 7), torch.bfloat16))
    torch.library.opcheck(OPS.rms_norm_bwd, (rnd(gen, 3, 7), rnd(gen, 3, 7), None, 1e-6, None, None))
    torch.library.opcheck(OPS.rms_norm_bwd, (rnd(gen, 3, 7), rnd(gen, 3, 7), None, 1e-6, None, torch.float32))


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
    "ssm_state_shape": (lambda x, w, b: ops.mamba_state_update(torch.zeros(2, 3, 5), x[..., 0], torch.randn(2, 10),
                                                               torch.randn(3, 2), b, torch.randn(3, 4)),
                        "mamba_state_update: state must have shape (2, 3, 4), got (2, 3, 5)"),
    "dt_bias_device": (lambda x, w, b: ops.mamba_state_update(torch.zeros(2, 3, 4), x[..., 0], torch.randn(2, 10),
                                                              torch.randn(3, 2), b.to("meta"), torch.randn(3, 4)),
                       "mamba_state_update: dt_bias must be on cpu like x, got meta"),
    "conv_update_weight_wide": (lambda x, w, b: ops.causal_conv1d_update(torch.zeros(2, 3, 4), x[..., 0],
                                                                         torch.randn(3, 9), b),
                                "causal_conv1d_update: weight must be (dim=3, width) with width in [1, 8]"),
    "norm_weight_shape": (lambda x, w, b: ops.add_rms_norm(x[..., 0], None, w),
                          "add_rms_norm: weight must have shape (3,), got (3, 4)"),
    "norm_out_dtype": (lambda x, w, b: ops.add_rms_norm(x[..., 0], None, b, None, torch.int32),
                       "add_rms_norm: out_dtype must be a floating dtype, got Int"),
    "norm_weight_device": (lambda x, w, b: ops.add_rms_norm(x[..., 0], None, b.to("meta")),
                           "add_rms_norm: weight must be on cpu like x, got meta"),
    "conv_bwd_cat_rest_seqlen": (lambda x, w, b: OPS.causal_conv1d_bwd_cat(x, x, w, b, True, None, [x[..., :4]]),
                                 "causal_conv1d_bwd_cat: rest must be (batch, dim_i, seqlen) of one batch, seqlen, "
                                 "dtype and device, got (2, 3, 4) after (2, 3, 5)"),
    "conv_bwd_cat_rest_dtype": (lambda x, w, b: OPS.causal_conv1d_bwd_cat(x, x, w, b, True, None, [x.double()]),
                                "causal_conv1d_bwd_cat: rest must be (batch, dim_i, seqlen) of one batch"),
    "conv_bwd_cat_dout_shape": (lambda x, w, b: OPS.causal_conv1d_bwd_cat(x[:1], x, w, b, True, None, []),
                                "causal_conv1d: dout must have shape (2, 3, 5), got (1, 3, 5)"),
    "rms_norm_x_dtype": (lambda x, w, b: ops.rms_norm(x[..., 0].half(), None),
                         "rms_norm: x (the residual stream) must be float32 or float64, got Half"),
    "rms_norm_weight_shape": (lambda x, w, b: ops.rms_norm(x[..., 0], b[:2]),
                              "rms_norm: weight must have shape (3,), got (2,)"),
    "rms_norm_out_dtype": (lambda x, w, b: ops.rms_norm(x[..., 0], None, None, torch.int64),
                           "rms_norm: out_dtype must be a floating dtype, got Long"),
    "rms_norm_bwd_grad_shape": (lambda x, w, b: ops.rms_norm_backward(x[..., :2], x[..., 0], b),
                                "rms_norm_bwd: grad must have shape (2, 3), got (2, 3, 2)"),
    "rms_norm_bwd_grad_int": (lambda x, w, b: ops.rms_norm_backward(x[..., 0].int(), x[..., 0], b),
                              "rms_norm_bwd: grad must be float16, bfloat16, float32 or float64, got Int"),
    "rms_norm_bwd_x_rank": (lambda x, w, b: ops.rms_norm_backward(x, x, b),
                            "rms_norm_bwd: x must be a non-empty (rows, dim), got (2, 3, 5)"),
    "rms_norm_bwd_grad_sum_shape": (lambda x, w, b: ops.rms_norm_backward(x[..., 0], x[..., 0], b, None, x[0, :, :2]),
                                    "rms_norm_bwd: grad_sum must have shape (2, 3), got (3, 2)"),
    "rms_norm_bwd_weight_shape": (lambda x, w, b: ops.rms_norm_backward(x[..., 0], x[..., 0], w),
                                  "rms_norm_bwd: weight must have shape (3,), got (3, 4)"),
    "rms_norm_bwd_cast_dtype": (lambda x, w, b: ops.rms_norm_backward(x[..., 0], x[..., 0], b, None, None, torch.bool),
                                "rms_norm_bwd: cast_dtype must be a floating dtype, got Bool"),
    "rms_norm_bwd_grad_device": (lambda x, w, b: ops.rms_norm_backward(x[..., 0].to("meta"), x[..., 0], b),
                                 "rms_norm_bwd: grad must be on cpu like x, got meta"),
}


@pytest.mark.parametrize("case", BAD)
def test_rejects_bad_input(gen, case):
    call, message = BAD[case]
    with pytest.raises(ValueError, match=re.escape(message)):
        call(rnd(gen, 2, 3, 5), rnd(gen, 3, 4), rnd(gen, 3))
