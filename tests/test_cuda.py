"""CUDA kernels of selective_scan_fwd / selective_scan_bwd / selective_state_update against the
PyTorch reference (ssm_tools.reference) computed in float64 on the same, upcast inputs.

Every output the kernels must write in full is allocated NaN-filled (SSM_TOOLS_CUDA_POISON=1), so an
element a kernel never writes shows up as NaN and fails the comparison. Inputs are fresh random draws.
Runs on the device machine (benchmarks/run_gpu.sh); skipped where torch sees no GPU.
"""
import pytest
import torch

import ssm_tools
import ssm_tools._C  # noqa: F401  (registers the ops and their CUDA kernels)
from ssm_tools.ops import SCAN_CHUNK
from ssm_tools.reference import selective_scan_ref, selective_state_update_ref

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

OPS = torch.ops.ssm_tools
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 1e-2}
GRAD_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


@pytest.fixture(autouse=True)
def poison_outputs(monkeypatch):
    monkeypatch.setenv("SSM_TOOLS_CUDA_POISON", "1")


def rel_err(got, ref):
    got, ref = got.double(), ref.double()
    assert got.shape == ref.shape, (got.shape, ref.shape)
    assert torch.isfinite(got).all(), "non-finite values (unwritten or overflowed elements)"
    return ((got - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def make_inputs(batch, dim, seqlen, dstate, dtype, *, variable_B=True, variable_C=True, groups=1, D=True,
                z=True, delta_bias=True, softplus=True, A_scale=1.0):
    """Fresh random inputs in mamba's ranges: negative real A (times A_scale), small positive step sizes."""
    dev = "cuda"
    g = torch.Generator(device=dev).manual_seed(torch.randint(0, 2**31, ()).item())

    def rnd(*shape, dt=dtype, scale=1.0, shift=0.0):
        return (torch.randn(*shape, device=dev, generator=g) * scale + shift).to(dt)

    def state_input(variable):
        return rnd(batch, groups, dstate, seqlen) if variable else rnd(dim, dstate, dt=torch.float32)

    delta = rnd(batch, dim, seqlen, scale=0.5, shift=-1.0) if softplus else \
        (torch.rand(batch, dim, seqlen, device=dev, generator=g) * 0.2 + 0.01).to(dtype)
    return dict(
        u=rnd(batch, dim, seqlen),
        delta=delta,
        A=-(torch.rand(dim, dstate, device=dev, generator=g) + 0.5) * A_scale,
        B=state_input(variable_B),
        C=state_input(variable_C),
        D=rnd(dim, dt=torch.float32) if D else None,
        z=rnd(batch, dim, seqlen) if z else None,
        # Without softplus the step must stay positive (else states grow without bound).
        delta_bias=(rnd(dim, dt=torch.float32, scale=0.3) if softplus else
                    torch.rand(dim, device=dev, generator=g) * 0.1) if delta_bias else None,
        delta_softplus=softplus,
    )


def upcast(inputs, requires_grad=True):
    """float64 copies of the floating inputs (seq_idx as it is)."""
    return {k: (v.detach().double().requires_grad_(requires_grad) if torch.is_tensor(v) and v.is_floating_point()
                else v)
            for k, v in inputs.items()}


def reference(inputs):
    """float64 out and last state, with autograd on the upcast inputs."""
    ref_in = upcast(inputs)
    out, last = selective_scan_ref(ref_in["u"], ref_in["delta"], ref_in["A"], ref_in["B"], ref_in["C"],
                                   D=ref_in["D"], z=ref_in["z"], delta_bias=ref_in["delta_bias"],
                                   delta_softplus=ref_in["delta_softplus"], return_last_state=True,
                                   seq_idx=ref_in.get("seq_idx"))
    return ref_in, out, last


def fwd(inputs):
    i = inputs
    return OPS.selective_scan_fwd(i["u"], i["delta"], i["A"], i["B"], i["C"], i["D"], i["z"], i["delta_bias"],
                                  i["delta_softplus"], i.get("seq_idx"))


def bwd(inputs, dout, dlast, saved):
    i = inputs
    return OPS.selective_scan_bwd(dout, dlast, i["u"], i["delta"], i["A"], i["B"], i["C"], i["D"], i["z"],
                                  i["delta_bias"], i["delta_softplus"], saved, i.get("seq_idx"))


def check_against_reference(inputs, tol):
    """Out, last state, saved's shape and every gradient (of a random linear loss on out and the last
    state) against the float64 reference."""
    batch, dim, seqlen = inputs["u"].shape
    dstate = inputs["A"].shape[1]
    ref_in, ref_out, ref_last = reference(inputs)
    out, last, saved = fwd(inputs)
    assert out.dtype == inputs["u"].dtype and last.dtype == torch.float32
    assert saved.shape == (batch, dim, (seqlen + SCAN_CHUNK - 1) // SCAN_CHUNK, dstate)
    assert rel_err(out, ref_out) < tol
    assert rel_err(last, ref_last) < tol

    dout = torch.randn_like(out)
    dlast = torch.randn_like(last)
    ref_grads = torch.autograd.grad(
        (ref_out * dout.double()).sum() + (ref_last * dlast.double()).sum(),
        [ref_in[k] for k in GRAD_NAMES if ref_in[k] is not None])
    grads = bwd(inputs, dout, dlast, saved)
    present = [(name, got) for name, got in zip(GRAD_NAMES, grads) if inputs[name] is not None]
    for name, got in zip(GRAD_NAMES, grads):
        if inputs[name] is None:
            assert got.numel() == 0, f"grad of absent {name} must be empty"
    for (name, got), want in zip(present, ref_grads):
        assert got.dtype == inputs[name].dtype, name
        assert rel_err(got, want) < tol, f"d{name}: {rel_err(got, want):.2e}"


# (batch, dim, seqlen, dstate, options): odd shapes, chunk boundaries (SCAN_CHUNK = 256) and every option.
CASES = [
    (2, 3, 1, 16, dict()),
    (1, 3, 7, 5, dict(variable_B=False, variable_C=False, z=False)),
    (2, 130, 7, 16, dict(groups=2, D=False, delta_bias=False, softplus=False)),
    (1, 130, 2049, 16, dict(variable_B=False, groups=5)),
    (2, 3, 2049, 4, dict(variable_C=False, z=False, softplus=False)),
    (1, 6, 8193, 8, dict(groups=3)),
    (1, 4, 100, 256, dict()),
    # The backward's blocks hold 8 dims of one group (here 8 and 32 per group, and 13: a partial block).
    (2, 16, 2049, 16, dict(groups=2)),
    (2, 26, 300, 16, dict(groups=2)),
    (1, 32, 300, 8, dict(variable_C=False, z=False)),
    # At and just past a chunk's end (one warp covers one chunk of 256 positions in the backward).
    (2, 16, 256, 16, dict(groups=2)),
    (3, 8, 257, 16, dict()),
    (2, 16, 512, 4, dict(variable_B=False)),
    (1, 24, 1000, 16, dict(groups=3)),
    (2, 8, 2048, 16, dict()),
    # Lengths 2 past a multiple of 4: the backward's last quad of dB/dC sums is added by two scalar
    # atomics (1 and 3 past are in the cases above and in PACKED_CASES).
    (2, 16, 214, 16, dict(groups=2)),
    # The forward reduces y over groups of 16 positions and its passes cover 16 states: a last tile
    # ending inside a group (77 = 64 + 13) and a second pass of 4 states (threads without states).
    (2, 16, 77, 20, dict(groups=2)),
    # The training step's one-chunk rows: 215 (unaligned) and 216 (the length it aligns to), 20 dims (a
    # partial block of 4): the backward's first tile, per-row values and rows' loads in one round trip,
    # and no saved state read for chunk 0.
    (2, 20, 215, 16, dict()),
    (2, 20, 216, 16, dict()),
]
CASE_IDS = [f"b{b}-d{d}-l{l}-n{n}-" + ("-".join(f"{k}={v}" for k, v in o.items()) or "all")
            for b, d, l, n, o in CASES]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_forward_and_backward_match_float64_reference(case, dtype):
    batch, dim, seqlen, dstate, options = case
    check_against_reference(make_inputs(batch, dim, seqlen, dstate, dtype, **options), TOL[dtype])


def packed_seq_idx(batch, seqlen, starts):
    """(batch, seqlen) int32 on the GPU: row 0 starts sequences at `starts`, the other rows at random
    positions (a new label at each start; labels may repeat once another came between)."""
    seq_idx = torch.zeros(batch, seqlen, dtype=torch.int32)
    for b in range(batch):
        row = starts if b == 0 else torch.randint(1, seqlen, (max(1, seqlen // 97),)).tolist()
        for t in sorted(t for t in set(row) if t < seqlen):
            seq_idx[b, t:] = (seq_idx[b, t - 1] + 1) % 3
    return seq_idx.cuda()


# (batch, dim, seqlen, dstate, row 0's sequence starts, options): starts at, next to and inside the
# forward's 64-position tiles and the 256-position chunks, one-position sequences, the last position.
PACKED_CASES = [
    (3, 16, 2 * SCAN_CHUNK + 37, 16, [1, 63, 64, 65, 255, 256, 257, 300, 2 * SCAN_CHUNK + 36], dict(groups=2)),
    (2, 8, 700, 40, [5, 128, 512], dict(variable_B=False)),
    (2, 24, 129, 8, [64, 100], dict(z=False, softplus=False, groups=3)),
    # The benchmark's training length (one chunk, rows not 16-byte aligned), sequences of 1 and 2
    # positions at its ends.
    (2, 16, 215, 16, [1, 3, 213, 214], dict(groups=2)),
    # Starts at each 4-position step of the forward's 16-position groups and at their edges, a last
    # tile ending inside a group, two passes of states.
    (2, 16, 77, 20, [4, 8, 12, 15, 16, 17, 31, 32, 47, 48, 66, 76], dict(groups=2)),
    # The step's aligned length packed: a sequence of 1 position first, starts at the 8-position items'
    # edges, a last sequence of 1 position.
    (2, 20, 216, 16, [1, 8, 9, 108, 215], dict()),
    # The training step's folded rows: sequences of 216 positions packed into one row (fold_factor), so
    # every boundary after the first falls inside a 256-position chunk, at a different lane and item
    # in each chunk; 4 sequences, 4 chunks.
    (2, 16, 4 * 216, 16, [216, 432, 648], dict()),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("case", PACKED_CASES, ids=[f"b{c[0]}-d{c[1]}-l{c[2]}-n{c[3]}" for c in PACKED_CASES])
def test_packed_rows_match_reference_sequence_by_sequence(case, dtype):
    """seq_idx: every sequence of a packed row against the float64 reference run on it alone."""
    batch, dim, seqlen, dstate, starts, options = case
    inputs = make_inputs(batch, dim, seqlen, dstate, dtype, **options)
    inputs["seq_idx"] = packed_seq_idx(batch, seqlen, starts)
    check_against_reference(inputs, TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("packed", [False, True], ids=["rows", "packed"])
@pytest.mark.parametrize("segment,case", [
    (SCAN_CHUNK, (1, 130, 2049, 16, dict(variable_B=False, groups=5))),
    (SCAN_CHUNK, (2, 16, 2 * SCAN_CHUNK + 37, 16, dict(groups=2))),
    (SCAN_CHUNK, (2, 8, 700, 40, dict(variable_B=False))),
    (2 * SCAN_CHUNK, (1, 6, 8193, 8, dict(groups=3))),
    (SCAN_CHUNK, (3, 8, 257, 16, dict(z=False))),
    # Slow decay (|delta A| ~ 1e-3): a segment's decay product stays near 1, so the state folded into
    # the next segment matters (above, it underflows to 0 within a segment).
    (SCAN_CHUNK, (2, 16, 4 * SCAN_CHUNK + 5, 16, dict(groups=2, softplus=False, A_scale=0.01))),
], ids=["l2049", "l549", "l700-n40", "l8193-seg512", "l257", "l1029-slow-decay"])
def test_forward_split_into_segments_matches_reference(segment, case, packed, dtype, monkeypatch):
    """The forward with every row split into segments (forced here; the launcher splits when
    batch * dim is too small to fill the GPU): out, last state, saved and the gradients from it."""
    monkeypatch.setenv("SSM_TOOLS_SCAN_SEGMENT", str(segment))
    batch, dim, seqlen, dstate, options = case
    inputs = make_inputs(batch, dim, seqlen, dstate, dtype, **options)
    if packed:
        inputs["seq_idx"] = packed_seq_idx(batch, seqlen, [1, 63, 64, 255, 256, 300, seqlen - 1])
    check_against_reference(inputs, TOL[dtype])


def test_saved_holds_the_state_entering_each_chunk():
    """saved[:, :, c] is the state after the first c * SCAN_CHUNK positions (zeros for c = 0)."""
    inputs = make_inputs(2, 6, 2 * SCAN_CHUNK + 4, 8, torch.float32, groups=3)
    _, _, saved = fwd(inputs)
    assert saved.shape == (2, 6, 3, 8)
    assert torch.equal(saved[:, :, 0], torch.zeros_like(saved[:, :, 0]))
    for c in (1, 2):
        n = c * SCAN_CHUNK
        prefix = {k: (v[..., :n] if k in ("u", "delta", "z", "B", "C") and v is not None else v)
                  for k, v in inputs.items()}
        _, _, ref_last = reference(prefix)
        assert rel_err(saved[:, :, c], ref_last) < 1e-5, c


def test_backward_without_dlast_state_matches_reference():
    inputs = make_inputs(2, 5, 300, 16, torch.float32, groups=5)
    ref_in, ref_out, _ = reference(inputs)
    out, _, saved = fwd(inputs)
    dout = torch.randn_like(out)
    ref_grads = torch.autograd.grad((ref_out * dout.double()).sum(), [ref_in[k] for k in GRAD_NAMES])
    i = inputs
    grads = bwd(i, dout, None, saved)
    for name, got, want in zip(GRAD_NAMES, grads, ref_grads):
        assert rel_err(got, want) < 1e-5, name


def test_autograd_through_python_face_matches_reference():
    inputs = make_inputs(2, 8, 2500, 16, torch.float32)
    ref_in, ref_out, ref_last = reference(inputs)
    leaves = {k: (v.detach().clone().requires_grad_() if torch.is_tensor(v) else v) for k, v in inputs.items()}
    out, last = ssm_tools.selective_scan(leaves["u"], leaves["delta"], leaves["A"], leaves["B"], leaves["C"],
                                         D=leaves["D"], z=leaves["z"], delta_bias=leaves["delta_bias"],
                                         delta_softplus=True, return_last_state=True)
    dout, dlast = torch.randn_like(out), torch.randn_like(last)
    got = torch.autograd.grad((out * dout).sum() + (last * dlast).sum(), [leaves[k] for k in GRAD_NAMES])
    want = torch.autograd.grad((ref_out * dout.double()).sum() + (ref_last * dlast.double()).sum(),
                               [ref_in[k] for k in GRAD_NAMES])
    for name, g, w in zip(GRAD_NAMES, got, want):
        assert rel_err(g, w) < 1e-5, name


def decode_inputs(batch, dim, dstate, dtype, groups):
    i = make_inputs(batch, dim, 1, dstate, dtype, groups=groups)
    return dict(x=i["u"][..., 0], dt=i["delta"][..., 0], A=i["A"], B=i["B"][..., 0], C=i["C"][..., 0], D=i["D"],
                z=i["z"][..., 0], dt_bias=i["delta_bias"], dt_softplus=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("batch,dim,dstate,groups", [(1, 3, 16, 1), (7, 130, 5, 2), (8192, 64, 16, 4),
                                                     (3, 8, 256, 1), (2, 4, 40, 1)])
def test_decode_step_matches_reference(batch, dim, dstate, groups, dtype):
    inputs = decode_inputs(batch, dim, dstate, dtype, groups)
    state = torch.randn(batch, dim, dstate, device="cuda")
    ref_state = state.double()
    ref_y = selective_state_update_ref(ref_state, **upcast(inputs, requires_grad=False))
    y = OPS.selective_state_update(state, inputs["x"], inputs["dt"], inputs["A"], inputs["B"], inputs["C"],
                                   inputs["D"], inputs["z"], inputs["dt_bias"], True)
    assert y.dtype == dtype
    assert rel_err(y, ref_y) < TOL[dtype]
    assert rel_err(state, ref_state) < 1e-5  # the state is float32 whatever the input type


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_decode_steps_over_a_sequence_equal_the_scan(dtype):
    batch, dim, seqlen, dstate, groups = 3, 10, 37, 16, 2
    i = make_inputs(batch, dim, seqlen, dstate, dtype, groups=groups)
    out, last, _ = fwd(i)
    state = torch.zeros(batch, dim, dstate, device="cuda")  # the scan starts from the zero state
    ys = [OPS.selective_state_update(state, i["u"][..., t], i["delta"][..., t], i["A"], i["B"][..., t],
                                     i["C"][..., t], i["D"], i["z"][..., t], i["delta_bias"], True)
          for t in range(seqlen)]
    assert rel_err(torch.stack(ys, dim=-1), out.float()) < TOL[dtype]
    assert rel_err(state, last) < 1e-5


def test_misaligned_and_non_contiguous_inputs_match_aligned():
    """u starting 2 bytes past a 16-byte boundary takes the scalar-load path, a transposed delta is
    copied to contiguous: both must give exactly what the vectorised path gives."""
    i = make_inputs(2, 6, 520, 8, torch.bfloat16)
    misaligned_u = torch.empty(i["u"].numel() + 1, dtype=torch.bfloat16, device="cuda")[1:].view_as(i["u"])
    misaligned_u.copy_(i["u"])
    transposed_delta = i["delta"].transpose(1, 2).contiguous().transpose(1, 2)
    assert misaligned_u.data_ptr() % 16 != 0 and not transposed_delta.is_contiguous()
    for a, b in zip(fwd(i), fwd(dict(i, u=misaligned_u, delta=transposed_delta))):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_backward_with_misaligned_inputs_matches_reference(dtype):
    """u, B and C starting one element past a 16-byte boundary (contiguous views, seqlen a multiple of
    the vector width): the backward's scalar loads of the rows and, at float32, of the shared B/C tile,
    against the float64 reference (aligned inputs of the same seqlen take the vector loads, and float32
    B/C the tile's cp.async; 16-bit B/C always take the element loads, converted to float32 there)."""
    inputs = make_inputs(2, 16, 520, 16, dtype, groups=2)
    for name in ("u", "B", "C"):
        t = inputs[name]
        shifted = torch.empty(t.numel() + 1, dtype=t.dtype, device="cuda")[1:].view_as(t)
        shifted.copy_(t)
        assert shifted.data_ptr() % 16 != 0 and shifted.is_contiguous()
        inputs[name] = shifted
    check_against_reference(inputs, TOL[dtype])


@pytest.mark.parametrize("change,message", [
    (dict(u=lambda i: i["u"].double()), "u must be float32, bfloat16 or float16 on CUDA"),
    (dict(A=lambda i: torch.randn(4, 257, device="cuda"), B=lambda i: torch.randn(4, 257, device="cuda"),
          C=lambda i: torch.randn(4, 257, device="cuda")), "dstate"),
    (dict(B=lambda i: torch.randn(1, 3, 8, 33, device="cuda")), "groups"),
    (dict(delta=lambda i: i["delta"][..., :-1]), "delta must have shape"),
    (dict(D=lambda i: i["D"].cpu()), "D must be on cuda"),
    (dict(seq_idx=lambda i: torch.zeros(1, 33, dtype=torch.int32)), "seq_idx must be on cuda"),
])
def test_bad_input_raises_naming_the_argument(change, message):
    i = make_inputs(1, 4, 33, 8, torch.float32)
    for k, f in change.items():
        i[k] = f(i)
    with pytest.raises(ValueError, match=message):
        fwd(i)


def test_decode_rejects_a_non_float32_state():
    i = decode_inputs(2, 4, 8, torch.float32, 1)
    state = torch.randn(2, 4, 8, device="cuda", dtype=torch.float64)
    with pytest.raises(ValueError, match="state must be a contiguous float32 tensor on CUDA"):
        OPS.selective_state_update(state, i["x"], i["dt"], i["A"], i["B"], i["C"], None, None, None, False)
