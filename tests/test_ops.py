"""CPU kernels of the selective scan and the decode step (ssm_tools.ops) against the plain-PyTorch
reference (ssm_tools.reference): values, gradients (float64 gradcheck and against the reference's
autograd), the per-chunk recompute of the backward, decode steps vs the scan, torch.compile,
torch.library.opcheck, meta tensors and argument errors.

Inputs are fresh random draws on every run (the seed is printed, so a failure can be replayed).
"""
import re

import pytest
import torch

import ssm_tools
from conftest import packed_seq_idx
from ssm_tools.ops import SCAN_CHUNK
from ssm_tools.reference import selective_scan_ref, selective_state_update_ref

OPS = torch.ops.ssm_tools
SCAN_ARGS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


@pytest.fixture
def gen(seed):
    return torch.Generator().manual_seed(seed)


def scan_inputs(gen, batch, dim, seqlen, dstate, dtype=torch.float64, *, B="variable", C="variable", groups=1,
                D=True, z=True, delta_bias=True, softplus=True, A_range=(0.5, 1.5)):
    """Random inputs in Mamba's ranges (negative A, positive step sizes). B/C: "variable" (batch,
    groups, dstate, seqlen), "variable3" (batch, dstate, seqlen) or "constant" (dim, dstate)."""
    def rnd(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale + shift).to(dtype)

    def state_input(kind):
        return {"variable": lambda: rnd(batch, groups, dstate, seqlen),
                "variable3": lambda: rnd(batch, dstate, seqlen),
                "constant": lambda: rnd(dim, dstate)}[kind]()

    def positive(*shape, lo, hi):
        return (torch.rand(*shape, generator=gen, dtype=torch.float64) * (hi - lo) + lo).to(dtype)

    # Without softplus, delta + delta_bias is the step size itself and must stay positive.
    delta = rnd(batch, dim, seqlen, scale=0.5, shift=-1.0) if softplus else positive(batch, dim, seqlen, lo=0.02, hi=0.3)
    bias = rnd(dim, scale=0.3) if softplus else positive(dim, lo=0.0, hi=0.05)
    return dict(
        u=rnd(batch, dim, seqlen), delta=delta,
        A=-positive(dim, dstate, lo=A_range[0], hi=A_range[1]),
        B=state_input(B), C=state_input(C),
        D=rnd(dim) if D else None, z=rnd(batch, dim, seqlen) if z else None,
        delta_bias=bias if delta_bias else None, delta_softplus=softplus)


def leaves(inputs, dtype=None):
    """Detached copies (optionally cast) of the floating inputs that require grad, so each run gets
    its own gradients; seq_idx as it is."""
    return {k: (v.detach().to(dtype or v.dtype).requires_grad_() if torch.is_tensor(v) and v.is_floating_point()
                else v)
            for k, v in inputs.items()}


def run(fn, inputs, weights_out, weights_last):
    """Output, last state and the gradients of a random linear loss on both."""
    out, last = fn(**inputs, return_last_state=True)
    loss = (out.double() * weights_out).sum() + (last.double() * weights_last).sum()
    tensors = [inputs[k] for k in SCAN_ARGS if inputs[k] is not None]
    return out, last, dict(zip([k for k in SCAN_ARGS if inputs[k] is not None], torch.autograd.grad(loss, tensors)))


def rel_err(got, ref):
    got, ref = got.double(), ref.double()
    assert got.shape == ref.shape, (got.shape, ref.shape)
    assert torch.isfinite(got).all()
    return ((got - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def compare_with_reference(gen, inputs, tol):
    """The op on `inputs` vs the float64 reference on the same values: out, last state, all grads."""
    batch, dim, seqlen = inputs["u"].shape
    # The op's output gradient arrives rounded to the output's dtype; the reference gets the same
    # values, so that a sum over many positions (D's gradient) does not compare rounding noise.
    w_out = torch.randn(batch, dim, seqlen, generator=gen).to(inputs["u"].dtype).double()
    w_last = torch.randn(batch, dim, inputs["A"].shape[1], generator=gen, dtype=torch.float64)
    out, last, grads = run(ssm_tools.selective_scan, leaves(inputs), w_out, w_last)
    ref_out, ref_last, ref_grads = run(selective_scan_ref, leaves(inputs, torch.float64), w_out, w_last)
    assert out.dtype == inputs["u"].dtype
    assert last.dtype == (torch.float64 if inputs["u"].dtype == torch.float64 else torch.float32)
    assert rel_err(out, ref_out) < tol
    assert rel_err(last, ref_last) < tol
    for name, g in grads.items():
        assert g.dtype == inputs[name].dtype, name
        assert rel_err(g, ref_grads[name]) < tol, name


# ----------------------------------------------------------------------------- gradients

GRADCHECK_CASES = {
    "packed_rows": dict(groups=2, seq_idx=[[2, 3], [5]]),
    "all_options_1group_3d": dict(B="variable3", C="variable3"),
    "groups2_no_optionals": dict(groups=2, D=False, z=False, delta_bias=False),
    "constant_BC": dict(B="constant", C="constant"),
    "constant_B_variable_C_groups2": dict(B="constant", groups=2, softplus=False),
    "variable_B_constant_C_no_softplus": dict(C="constant", softplus=False, z=False),
    "groups4_z_only": dict(groups=4, D=False, delta_bias=False, softplus=False),
}


@pytest.mark.parametrize("case", GRADCHECK_CASES)
def test_gradcheck(gen, case):
    """Both outputs, so the Jacobians of out and of the last state are each checked."""
    options = dict(GRADCHECK_CASES[case])
    starts = options.pop("seq_idx", None)
    inputs = leaves(scan_inputs(gen, 2, 4, 6, 3, **options))
    if starts:
        inputs["seq_idx"] = packed_seq_idx(gen, 6, starts)
    names = [k for k in SCAN_ARGS if inputs[k] is not None]

    def f(*tensors):
        return ssm_tools.selective_scan(**{**inputs, **dict(zip(names, tensors))}, return_last_state=True)

    assert torch.autograd.gradcheck(f, [inputs[k] for k in names])


def test_backward_recomputes_across_chunks(gen):
    """seqlen spanning three checkpoints (the last partial): the chunked recompute vs the reference."""
    inputs = scan_inputs(gen, 1, 3, 2 * SCAN_CHUNK + 5, 4, groups=1)
    out, last, saved = OPS.selective_scan_fwd(*(inputs[k] for k in SCAN_ARGS), True)
    assert saved.shape == (1, 3, 3, 4)
    assert saved[:, :, 0].abs().max() == 0  # the state entering the first chunk is zero
    first_chunk = {k: v[..., :SCAN_CHUNK] if torch.is_tensor(v) and v.shape[-1] == 2 * SCAN_CHUNK + 5 else v
                   for k, v in inputs.items()}
    _, ref_last = selective_scan_ref(**first_chunk, return_last_state=True)
    assert rel_err(saved[:, :, 1], ref_last) < 1e-12
    compare_with_reference(gen, inputs, 1e-10)


# ----------------------------------------------------------------------------- values vs reference

# Relative error (norm) allowed against float64. float32: ~1e-7 rounding per step grows with the
# number of summed terms (dstate, seqlen) to ~1e-6. bfloat16: both sides see the same bf16 inputs
# and accumulate in float32, so the error is the output's own rounding (2^-9 relative), and that of
# gradients rounded to bf16.
TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.bfloat16: 1e-2}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(2, 3, 1, 16), (1, 130, 7, 5), (1, 3, 2049, 16)], ids=str)
def test_matches_reference(gen, dtype, shape):
    compare_with_reference(gen, scan_inputs(gen, *shape, dtype, groups=1), TOL[dtype])


@pytest.mark.parametrize("dstate", [4, 16], ids=["generic", "vector"])  # 16: the float32 Vec8 kernel
def test_extreme_values_and_fp16(gen, dstate):
    """exp(delta A) far below float32's range (the kernel's exp clamps), softplus inputs on both
    sides of its linear threshold (20) and far negative, and float16 inputs."""
    compare_with_reference(gen, scan_inputs(gen, 2, 8, 33, dstate, torch.float32, A_range=(100.0, 400.0),
                                            softplus=False), TOL[torch.float32])
    wide = scan_inputs(gen, 2, 8, 33, dstate, torch.float32)
    wide["delta"] = torch.randn(2, 8, 33, generator=gen) * 15
    assert (wide["delta"] > 25).any() and (wide["delta"] < -25).any()
    compare_with_reference(gen, wide, TOL[torch.float32])
    compare_with_reference(gen, scan_inputs(gen, 2, 8, 33, dstate, torch.float16), TOL[torch.bfloat16])


def test_non_contiguous_inputs(gen):
    inputs = scan_inputs(gen, 2, 4, 9, 3, torch.float32, groups=2)
    strided = {k: (v.transpose(-1, -2).contiguous().transpose(-1, -2) if torch.is_tensor(v) and v.dim() > 1 else v)
               for k, v in inputs.items()}
    assert not strided["u"].is_contiguous() and not strided["B"].is_contiguous()
    torch.testing.assert_close(ssm_tools.selective_scan(**strided), ssm_tools.selective_scan(**inputs),
                               rtol=0, atol=0)


# ----------------------------------------------------------------------------- packed rows (seq_idx)

# Sequence starts: at, just past and just before chunk boundaries, a one-position sequence, the
# last position alone, random starts, and a row with one sequence.
PACKED_ROWS = [[1, SCAN_CHUNK - 1, SCAN_CHUNK, SCAN_CHUNK + 1, 300, 2 * SCAN_CHUNK + 36], 7, []]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("dstate", [5, 16], ids=["generic", "vector"])
@pytest.mark.parametrize("options", [dict(groups=2), dict(B="constant", z=False, softplus=False)], ids=["var", "const"])
def test_packed_rows_match_reference_sequence_by_sequence(gen, dtype, dstate, options):
    """Out, last state and every gradient of packed rows against the float64 reference run on each
    sequence as its own row (ssm_tools.reference slices them)."""
    seqlen = 2 * SCAN_CHUNK + 37
    inputs = scan_inputs(gen, 3, 4, seqlen, dstate, dtype, **options)
    inputs["seq_idx"] = packed_seq_idx(gen, seqlen, PACKED_ROWS)
    compare_with_reference(gen, inputs, TOL[dtype])


def test_packed_rows_equal_separate_rows(gen):
    """A row packing three sequences gives each sequence's own out and gradients, as separate calls
    do; the last state is the last sequence's."""
    lengths = [SCAN_CHUNK + 3, 1, 40]
    parts = [scan_inputs(gen, 1, 4, n, 16, torch.float64, groups=2) for n in lengths]
    shared = {k: parts[0][k] for k in ("A", "D", "delta_bias", "delta_softplus")}
    packed = {k: torch.cat([p[k] for p in parts], dim=-1) for k in ("u", "delta", "B", "C", "z")}
    seq_idx = torch.repeat_interleave(torch.arange(3, dtype=torch.int32), torch.tensor(lengths))[None]
    w_out = torch.randn(1, 4, sum(lengths), generator=gen, dtype=torch.float64)
    w_last = torch.randn(1, 4, 16, generator=gen, dtype=torch.float64)
    out, last, grads = run(ssm_tools.selective_scan, leaves({**shared, **packed, "seq_idx": seq_idx}), w_out, w_last)
    t0 = 0
    for i, (part, n) in enumerate(zip(parts, lengths)):
        p_out, p_last, p_grads = run(ssm_tools.selective_scan, leaves({**part, **shared}), w_out[..., t0:t0 + n],
                                     w_last if i == 2 else torch.zeros_like(w_last))
        assert rel_err(out[..., t0:t0 + n], p_out) < 1e-12
        for k in ("u", "delta", "B", "C", "z"):
            assert rel_err(grads[k][..., t0:t0 + n], p_grads[k]) < 1e-12, k
        t0 += n
    assert rel_err(last, p_last) < 1e-12


# ----------------------------------------------------------------------------- decode step

@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_state_update_steps_equal_scan(gen, dtype, tol):
    inputs = scan_inputs(gen, 2, 6, 11, 4, dtype, groups=3)
    out, last = ssm_tools.selective_scan(**inputs, return_last_state=True)
    state = torch.zeros(2, 6, 4, dtype=dtype)
    steps = [ssm_tools.selective_state_update(
        state, inputs["u"][..., t], inputs["delta"][..., t], inputs["A"], inputs["B"][..., t], inputs["C"][..., t],
        D=inputs["D"], z=inputs["z"][..., t], dt_bias=inputs["delta_bias"], dt_softplus=True)
        for t in range(11)]
    assert rel_err(torch.stack(steps, -1), out) < tol
    assert rel_err(state, last) < tol


@pytest.mark.parametrize("groups", [None, 2])
def test_state_update_matches_reference(gen, groups):
    batch, dim, dstate = 3, 4, 5
    state = torch.randn(batch, dstate, dim, generator=gen).transpose(1, 2)  # non-contiguous, updated in place
    BC = [torch.randn(batch, *([groups] if groups else []), dstate, generator=gen) for _ in range(2)]
    x, dt, z = (torch.randn(batch, dim, generator=gen) for _ in range(3))
    A, D, bias = -torch.rand(dim, dstate, generator=gen) - 0.5, torch.randn(dim, generator=gen), torch.randn(dim, generator=gen)
    ref_state = state.clone()
    y = ssm_tools.selective_state_update(state, x, dt, A, *BC, D=D, z=z, dt_bias=bias, dt_softplus=True)
    ref_y = selective_state_update_ref(ref_state, x, dt, A, *BC, D=D, z=z, dt_bias=bias, dt_softplus=True)
    assert rel_err(y, ref_y) < 1e-5
    assert rel_err(state, ref_state) < 1e-5


# ----------------------------------------------------------------------------- torch.library integration

class TinyMamba(torch.nn.Module):
    """The scan inside a module, as a Mamba block uses it."""

    def __init__(self, dim, dstate):
        super().__init__()
        self.A_log = torch.nn.Parameter(torch.rand(dim, dstate).log())
        self.D = torch.nn.Parameter(torch.randn(dim))
        self.bias = torch.nn.Parameter(torch.randn(dim) * 0.1)

    def forward(self, u, delta, B, C, z, seq_idx):
        out, last = ssm_tools.selective_scan(u, delta, -self.A_log.exp(), B, C, self.D, z, self.bias,
                                             delta_softplus=True, return_last_state=True, seq_idx=seq_idx)
        return out.sum() + last.square().sum()


@pytest.mark.parametrize("packed", [False, True], ids=["rows", "packed"])
def test_torch_compile_fullgraph(gen, packed):
    inputs = scan_inputs(gen, 2, 4, 10, 3, torch.float32, groups=2)
    seq_idx = packed_seq_idx(gen, 10, [[3, 4], 2]) if packed else None
    model = TinyMamba(4, 3)
    args = [inputs[k] for k in ("u", "delta", "B", "C", "z")]
    eager_args, compiled_args = leaves(dict(enumerate(args))), leaves(dict(enumerate(args)))
    eager = model(*eager_args.values(), seq_idx)
    eager_grads = torch.autograd.grad(eager, [*model.parameters(), *eager_args.values()])
    compiled = torch.compile(model, fullgraph=True)(*compiled_args.values(), seq_idx)
    compiled_grads = torch.autograd.grad(compiled, [*model.parameters(), *compiled_args.values()])
    torch.testing.assert_close(compiled, eager)
    for c, e in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(c, e)


def test_opcheck(gen):
    inputs = scan_inputs(gen, 2, 4, 5, 3, torch.float32, groups=2)
    args = [inputs[k] for k in SCAN_ARGS] + [True]
    torch.library.opcheck(OPS.selective_scan_fwd, args)
    out, last, saved = OPS.selective_scan_fwd(*args)
    bwd_args = [torch.randn_like(out), torch.randn_like(last), *args[:-1], True, saved]
    torch.library.opcheck(OPS.selective_scan_bwd, bwd_args)
    no_optionals = [inputs[k] if k not in ("D", "z", "delta_bias") else None for k in SCAN_ARGS] + [False]
    torch.library.opcheck(OPS.selective_scan_fwd, no_optionals)
    seq_idx = packed_seq_idx(gen, 5, [[2], [1, 4]])
    torch.library.opcheck(OPS.selective_scan_fwd, args + [seq_idx])
    torch.library.opcheck(OPS.selective_scan_bwd, bwd_args + [seq_idx])
    state = torch.randn(2, 4, 3, generator=gen)
    step = [state, inputs["u"][..., 0], inputs["delta"][..., 0], inputs["A"], inputs["B"][..., 0],
            inputs["C"][..., 0], inputs["D"], inputs["z"][..., 0], inputs["delta_bias"], True]
    torch.library.opcheck(OPS.selective_state_update, step)


def test_meta_tensors_give_shapes():
    meta = dict(device="meta")
    u = torch.empty(2, 8, 5000, **meta)
    out, last = ssm_tools.selective_scan(u, torch.empty_like(u), torch.empty(8, 16, **meta),
                                         torch.empty(2, 2, 16, 5000, **meta), torch.empty(2, 2, 16, 5000, **meta),
                                         return_last_state=True)
    assert out.shape == (2, 8, 5000) and out.device.type == "meta"
    assert last.shape == (2, 8, 16) and last.dtype == torch.float32
    _, _, saved = OPS.selective_scan_fwd(u, u, torch.empty(8, 16, **meta), torch.empty(8, 16, **meta),
                                         torch.empty(8, 16, **meta), None, None, None, False)
    assert saved.shape == (2, 8, (5000 + SCAN_CHUNK - 1) // SCAN_CHUNK, 16)
    y = ssm_tools.selective_state_update(torch.empty(2, 8, 16, **meta), torch.empty(2, 8, **meta),
                                         torch.empty(2, 8, **meta), torch.empty(8, 16, **meta),
                                         torch.empty(2, 16, **meta), torch.empty(2, 16, **meta))
    assert y.shape == (2, 8)


# ----------------------------------------------------------------------------- argument errors

# Messages of csrc/ops/checks.h (the ops check their arguments; the Python face adds A's values).
BAD_SCAN = {
    "u_2d": (dict(u=torch.randn(4, 6)), ValueError, "u must be a non-empty (batch, dim, seqlen), got shape (4, 6)"),
    "u_int": (dict(u=torch.ones(2, 4, 6, dtype=torch.int64)), ValueError,
              "u must be float16, bfloat16, float32 or float64, got Long"),
    "u_empty": (dict(u=torch.randn(2, 4, 0), delta=torch.randn(2, 4, 0)), ValueError, "u must be a non-empty"),
    "delta_shape": (dict(delta=torch.rand(2, 4, 5)), ValueError, "delta must have shape (2, 4, 6), got (2, 4, 5)"),
    "delta_dtype": (dict(delta=torch.rand(2, 4, 6, dtype=torch.float64)), ValueError,
                    "delta must have dtype Float like u/x, got Double"),
    "A_shape": (dict(A=-torch.rand(5, 3)), ValueError, "A must have shape (4, *), got (5, 3)"),
    "A_nonfinite": (dict(A=torch.tensor([[float("nan")] * 3] * 4)), ValueError, "A must be finite"),
    "B_groups": (dict(B=torch.randn(2, 3, 3, 6)), ValueError,
                 "B has 3 groups (batch, groups, dstate, seqlen), which must divide dim=4"),
    "B_seqlen": (dict(B=torch.randn(2, 1, 3, 7)), ValueError, "B must have shape (2, *, 3, 6), got (2, 1, 3, 7)"),
    "B_rank": (dict(B=torch.randn(3)), ValueError, "B must be (dim, dstate) or (batch, dstate, seqlen) or "
               "(batch, groups, dstate, seqlen), got shape (3,)"),
    "C_groups_mismatch": (dict(C=torch.randn(2, 1, 3, 6)), ValueError,
                          "B and C must have the same number of groups, got 2 and 1"),
    "C_constant_shape": (dict(C=torch.randn(4, 2)), ValueError, "C must have shape (4, 3), got (4, 2)"),
    "D_shape": (dict(D=torch.randn(3)), ValueError, "D must have shape (4,), got (3,)"),
    "z_shape": (dict(z=torch.randn(2, 4, 5)), ValueError, "z must have shape (2, 4, 6), got (2, 4, 5)"),
    "delta_bias_shape": (dict(delta_bias=torch.randn(4, 1)), ValueError, "delta_bias must have shape (4,), got (4, 1)"),
    "seq_idx_dtype": (dict(seq_idx=torch.zeros(2, 6, dtype=torch.int64)), ValueError, "seq_idx must be int32, got Long"),
    "seq_idx_shape": (dict(seq_idx=torch.zeros(2, 5, dtype=torch.int32)), ValueError,
                      "seq_idx must have shape (2, 6), got (2, 5)"),
}


@pytest.mark.parametrize("case", BAD_SCAN)
def test_scan_rejects_bad_input(gen, case):
    changes, error, message = BAD_SCAN[case]
    inputs = {**scan_inputs(gen, 2, 4, 6, 3, torch.float32, groups=2), **changes}
    with pytest.raises(error, match="^selective_scan: " + re.escape(message)):
        ssm_tools.selective_scan(**inputs)


def test_non_tensor_argument_is_named(gen):
    """The dispatcher's own error names the argument that is not a tensor."""
    for name in ("u", "B"):
        inputs = {**scan_inputs(gen, 2, 4, 6, 3, torch.float32), name: [[1.0]]}
        with pytest.raises(RuntimeError, match=f"Expected a value of type 'Tensor' for argument '{name}'"):
            ssm_tools.selective_scan(**inputs)


BAD_STEP = {
    "state_dtype": (dict(state=torch.zeros(2, 4, 3, dtype=torch.bfloat16)),
                    "state must be float32 or float64 (it accumulates), got BFloat16"),
    "state_shape": (dict(state=torch.zeros(2, 4, 5)), "state must have shape (2, 4, 3), got (2, 4, 5)"),
    "x_rank": (dict(x=torch.randn(2, 4, 1)), "x must be a non-empty (batch, dim), got shape (2, 4, 1)"),
    "dt_shape": (dict(dt=torch.randn(2, 5)), "dt must have shape (2, 4), got (2, 5)"),
    "B_groups": (dict(B=torch.randn(2, 3, 3)), "B has 3 groups (batch, groups, dstate), which must divide dim=4"),
    "C_groups_mismatch": (dict(C=torch.randn(2, 3)), "B and C must have the same number of groups, got 2 and 1"),
    "dt_bias_shape": (dict(dt_bias=torch.randn(2)), "dt_bias must have shape (4,), got (2,)"),
}


@pytest.mark.parametrize("case", BAD_STEP)
def test_state_update_rejects_bad_input(gen, case):
    changes, message = BAD_STEP[case]
    inputs = dict(state=torch.zeros(2, 4, 3), x=torch.randn(2, 4, generator=gen), dt=torch.rand(2, 4, generator=gen),
                  A=-torch.rand(4, 3, generator=gen), B=torch.randn(2, 2, 3, generator=gen),
                  C=torch.randn(2, 2, 3, generator=gen), dt_bias=torch.randn(4, generator=gen))
    inputs.update(changes)
    with pytest.raises(ValueError, match="^selective_state_update: " + re.escape(message)):
        ssm_tools.selective_state_update(**inputs)


def test_raw_ops_check_shapes(gen):
    """Callers of torch.ops.ssm_tools.* directly get an error, not an out-of-bounds read."""
    inputs = scan_inputs(gen, 2, 4, 6, 3, torch.float32)
    args = [inputs[k] for k in SCAN_ARGS] + [True]
    args[3] = torch.randn(2, 1, 3, 5)
    with pytest.raises(ValueError, match="B must have shape"):
        OPS.selective_scan_fwd(*args)
    with pytest.raises(ValueError, match="saved must have shape"):
        OPS.selective_scan_bwd(inputs["u"], None, *[inputs[k] for k in SCAN_ARGS], True, torch.zeros(2, 4, 2, 3))
