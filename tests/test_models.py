"""Every model: the parallel forward and step-by-step decoding give the same logits (float64), shapes,
and precise errors on bad input."""
import pytest
import torch
from torch import nn

from ssm_tools.models import MODELS, build_model, preset


V = 40
SMALL = {
    "mamba": dict(d_model=16, n_layers=2, d_state=4),
    "lstm": dict(d_model=16, n_layers=2),
    "gru": dict(d_model=16, n_layers=2),
    "pythia": dict(d_model=16, n_layers=2, n_heads=2),
    "mistral": dict(d_model=16, n_layers=2, n_heads=2, window=5),
}


def make(name, dtype=torch.float64, seed=0, **over):
    torch.manual_seed(seed)
    return build_model(name, vocab_size=V, **{**SMALL[name], **over}).to(dtype).eval()


def decode(model, tokens):
    state = model.init_state(tokens.shape[0])
    out = []
    for t in range(tokens.shape[1]):
        logits, state = model.step(tokens[:, t], state)
        out.append(logits)
    return torch.stack(out, dim=1)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("T", [1, 9, 70])  # 70 > INITIAL_CACHE: the Pythia cache grows while decoding
def test_step_matches_parallel_forward(name, T):
    model = make(name)
    tokens = torch.randint(1, V, (3, T))
    with torch.no_grad():
        full, stepped = model(tokens), decode(model, tokens)
    assert full.shape == (3, T, V)
    torch.testing.assert_close(stepped, full, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mamba_step_final_add_inside_the_norm_is_bitwise_the_add_before_it_on_cpu(dtype, monkeypatch):
    """On the CPU the decode step with the last residual add inside the final norm's kernel computes
    bitwise what the add before norm_f (LanguageModel.step_unchecked) computed. bfloat16: a
    decode_copy's matmuls, the residual of another dtype than the stream."""
    from ssm_tools.models.base import LanguageModel
    from ssm_tools.models.mamba import Mamba
    model = make("mamba", dtype=torch.float32, seed=3)
    if dtype == torch.bfloat16:
        model = model.decode_copy(dtype)
    tokens = torch.randint(1, V, (4, 12), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        inside = decode(model, tokens)
        monkeypatch.setattr(Mamba, "step_unchecked", LanguageModel.step_unchecked)
        before = decode(model, tokens)
    assert inside.dtype == before.dtype and inside.abs().max() > 0
    assert torch.equal(inside, before)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_rnn_runs_long_inputs_in_pieces_with_the_same_result(cell, monkeypatch):
    """cuDNN refuses very long sequences, so the RNNs run them in pieces, carrying the state."""
    import ssm_tools.models.rnn as rnn
    model = build_model(cell, vocab_size=128, d_model=8, n_layers=2).double()
    tokens = torch.randint(0, 128, (2, 23))
    whole = model(tokens)
    monkeypatch.setattr(rnn, "MAX_STEPS_PER_CALL", 5)
    calls = []
    model.rnn.register_forward_hook(lambda *args: calls.append(1))
    pieces = model(tokens)
    assert len(calls) == 5  # 23 steps in pieces of 5
    torch.testing.assert_close(pieces, whole, rtol=1e-12, atol=1e-12)


def test_sliding_window_forgets_beyond_window():
    # Mistral-style: a token more than `window` positions back cannot influence the logits; with a
    # growing cache (Pythia-style) it does.
    tokens = torch.randint(1, V, (2, 12))
    changed = tokens.clone()
    changed[:, 0] = (changed[:, 0] % (V - 1)) + 1
    for name, influences in (("mistral", False), ("pythia", True)):
        model = make(name)
        with torch.no_grad():
            a, b = model(tokens)[:, -1], model(changed)[:, -1]
        assert (not torch.allclose(a, b)) == influences, name


def test_mistral_cache_is_bounded():
    model = make("mistral")
    state = model.init_state(2)
    for _ in range(23):
        _, state = model.step(torch.randint(1, V, (2,)), state)
    assert all(k.shape[2] == 5 and v.shape[2] == 5 for k, v in state[1])


@pytest.mark.parametrize("name", sorted(MODELS))
def test_gradients_reach_every_parameter(name):
    model = make(name, dtype=torch.float32).train()
    loss = model(torch.randint(1, V, (2, 8))).logsumexp(-1).mean()
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_untied_embeddings_have_their_own_head():
    tied, untied = make("mamba"), make("mamba", tie_embeddings=False)
    assert tied.lm_head.weight is tied.embedding.weight
    assert untied.lm_head.weight is not untied.embedding.weight
    assert sum(p.numel() for p in untied.parameters()) == sum(p.numel() for p in tied.parameters()) + V * 16


@pytest.mark.parametrize("bad, error, words", [
    (torch.randint(0, V, (4,)), ValueError, "(batch, seqlen)"),
    (torch.rand(2, 3), TypeError, "integer"),
    (torch.full((2, 3), V), ValueError, f"[0, {V})"),
    (torch.full((2, 3), -1), ValueError, f"[0, {V})"),
    (torch.zeros(2, 0, dtype=torch.long), ValueError, "non-empty"),
    ([[1, 2]], TypeError, "torch.Tensor"),
])
def test_forward_rejects_bad_tokens(bad, error, words):
    with pytest.raises(error, match="tokens") as e:
        make("mamba")(bad)
    assert words in str(e.value)


def test_step_rejects_a_sequence():
    model = make("gru")
    with pytest.raises(ValueError, match=r"tokens must have non-empty shape \(batch,\)"):
        model.step(torch.randint(1, V, (2, 3)), model.init_state(2))


@pytest.mark.parametrize("kwargs, error, words", [
    (dict(name="bert", vocab_size=V), ValueError, "model must be one of"),
    (dict(name="mamba", vocab_size=0), ValueError, "vocab_size must be a positive int"),
    (dict(name="mamba", vocab_size=V, n_layers=0), ValueError, "n_layers must be a positive int"),
    (dict(name="mamba", vocab_size=V, n_heads=2), ValueError, r"model mamba: no option \['n_heads'\]; its options are"),
    (dict(name="gru", d_model=8), ValueError, r"model gru: missing \['vocab_size'\]"),
    (dict(name="mamba", vocab_size=V, d_conv=9), ValueError, "d_conv must be at most 8"),
    (dict(name="pythia", vocab_size=V, d_model=30, n_heads=4), ValueError, "divisible by n_heads"),
    (dict(name="mistral", vocab_size=V, window=0), ValueError, "window must be a positive int"),
    (dict(name="lstm", vocab_size=V, cell="rnn"), ValueError, "cell must be one of"),
])
def test_build_model_rejects_bad_config(kwargs, error, words):
    with pytest.raises(error, match=words):
        build_model(**kwargs)


def test_presets_build_and_reject_unknown_scale():
    for name in MODELS:
        assert build_model(name, vocab_size=V, **preset(name, "tiny"))(torch.ones(1, 2, dtype=torch.long)).shape == (1, 2, V)
    assert preset("mamba", "paper")["n_layers"] == 24 and preset("lstm", "paper")["d_model"] == 1536
    with pytest.raises(ValueError, match="scale must be one of"):
        preset("mamba", "huge")


def _perturbed_mixer(d_model, dt_rank=None, dtype=torch.float64):
    from ssm_tools.models.mamba import MambaMixer
    mixer = MambaMixer(d_model, d_state=4, dt_rank=dt_rank).to(dtype)
    with torch.no_grad():
        for p in mixer.parameters():  # off the initialisation (ones, zeros), so every term counts
            p.add_(0.1 * torch.randn_like(p))
    return mixer


@pytest.mark.parametrize("d_model, dt_rank, T, with_norm", [(16, None, 9, False), (24, 5, 70, True), (8, 3, 300, True)])
def test_mamba_mixer_matches_plain_formulation(d_model, dt_rank, T, with_norm):
    # The fused layer (one autograd node: channel-first GEMMs, the conv kernel, recomputation in the
    # backward) gives the output and every gradient (parameters, norm and input) of the plain
    # token-major formulation with reference kernels. T=300 spans two scan chunks.
    from ssm_tools.reference import mamba_mixer_ref
    torch.manual_seed(T)
    mixer = _perturbed_mixer(d_model, dt_rank)
    norm = nn.RMSNorm(d_model).double() if with_norm else None
    if norm is not None:
        with torch.no_grad():
            norm.weight.add_(0.1 * torch.randn(d_model, dtype=torch.float64))
    h = torch.randn(3, T, d_model, dtype=torch.float64, requires_grad=True)
    grad_out = torch.randn(3, T, d_model, dtype=torch.float64)
    named = [("h", h), *(() if norm is None else [("norm.weight", norm.weight)]), *mixer.named_parameters()]
    params = [p for _, p in named]
    got = mixer(h, norm)
    want = mamba_mixer_ref(mixer, h if norm is None else norm(h))
    assert got.shape == want.shape and got.is_contiguous()
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    for g, w, (name, _) in zip(torch.autograd.grad(got, params, grad_out), torch.autograd.grad(want, params, grad_out),
                               named):
        assert g.shape == w.shape and g.dtype == w.dtype, name
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10, msg=name)


def test_mamba_mixer_under_autocast_matches_plain_formulation():
    # bf16 autocast (CPU here, CUDA in training): float32 parameters and input, bf16 matmuls; the
    # gradients come back in the parameters' dtype and agree with the plain formulation's.
    from ssm_tools.reference import mamba_mixer_ref
    torch.manual_seed(0)
    mixer = _perturbed_mixer(32, dtype=torch.float32)
    h = torch.randn(2, 20, 32, requires_grad=True)
    params = [h, *mixer.parameters()]
    outs = []
    for forward in (mixer, lambda h: mamba_mixer_ref(mixer, h)):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = forward(h)
        outs.append((out, torch.autograd.grad(out.float().square().sum(), params)))
    (got, got_grads), (want, want_grads) = outs
    assert got.dtype == want.dtype == torch.bfloat16
    torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)
    for g, w, p in zip(got_grads, want_grads, params):
        assert g.dtype == p.dtype == torch.float32
        torch.testing.assert_close(g, w, rtol=5e-2, atol=5e-2 * w.abs().max().item())


@pytest.mark.parametrize("with_norm", [False, True])
def test_mamba_mixer_packed_rows_match_plain_formulation(with_norm):
    # Packed rows (seq_idx): the fused layer's output and every gradient against the plain
    # formulation whose conv and scan run each sequence alone (reference.py). T=300 spans two scan
    # chunks; sequences of 1-3 positions are shorter than the conv's taps; labels come back.
    from conftest import packed_seq_idx
    from ssm_tools.reference import mamba_mixer_ref
    mixer = _perturbed_mixer(16)
    norm = nn.RMSNorm(16).double() if with_norm else None
    seq_idx = packed_seq_idx(None, 300, [[1, 2, 4, 100, 255, 256, 299], 20])
    h = torch.randn(2, 300, 16, dtype=torch.float64, requires_grad=True)
    grad_out = torch.randn(2, 300, 16, dtype=torch.float64)
    params = [h, *([] if norm is None else [norm.weight]), *mixer.parameters()]
    got = mixer(h, norm, seq_idx)
    want = mamba_mixer_ref(mixer, h if norm is None else norm(h), seq_idx)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    for g, w in zip(torch.autograd.grad(got, params, grad_out), torch.autograd.grad(want, params, grad_out)):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10)


def test_mamba_packed_rows_equal_separate_rows():
    """A row packing several sequences gives each sequence the logits of its own row."""
    model = build_model("mamba", vocab_size=128, d_model=16, n_layers=2, d_state=4).double()
    lengths = [7, 1, 12, 3]
    seqs = [torch.randint(0, 128, (n,)) for n in lengths]
    seq_idx = torch.repeat_interleave(torch.arange(4, dtype=torch.int32), torch.tensor(lengths))[None]
    packed = model(torch.cat(seqs)[None], seq_idx)[0].split(lengths)
    for seq, got in zip(seqs, packed):
        torch.testing.assert_close(got, model(seq[None])[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("batch, T, k, packed", [(6, 9, 3, False), (6, 9, 2, True), (4, 70, 4, False), (4, 70, 2, True),
                                                 (3, 300, 3, True), (2, 1, 2, False), (5, 40, 5, True)])
def test_mamba_folded_rows_match_unfolded_rows(batch, T, k, packed, monkeypatch):
    # Rows folded k at a time (forced here on the CPU; fold_factor chooses k on CUDA): the logits and
    # every gradient equal the unfolded model's in float64. Without the caller's seq_idx the conv takes
    # the folded rows apart as channels (its kernels without seq_idx: checked on the ops' arguments)
    # and the scan restarts at each row's start; with it, both read the composed seq_idx, whose labels
    # repeat across rows (every row starts at label 0, and the first two end there too): a fold that
    # kept the caller's labels would carry state across rows.
    from conftest import packed_seq_idx
    from ssm_tools.models import mamba
    seq_idx_args = {}  # op -> whether each call had a seq_idx

    class RecordingOps:
        def __getattr__(self, name):
            op = getattr(torch.ops.ssm_tools, name)

            def call(*args):
                seq = [a for a in args if isinstance(a, torch.Tensor) and a.dtype == torch.int32]
                seq_idx_args.setdefault(name, set()).add(bool(seq))
                return op(*args)
            return call
    monkeypatch.setattr(mamba, "_ops", RecordingOps())
    torch.manual_seed(2000 + T)
    model = _perturbed_mamba(2, torch.float64)
    tokens = torch.randint(0, V, (batch, T))
    seq_idx = None
    if packed:
        gen = torch.Generator().manual_seed(T)
        seq_idx = packed_seq_idx(gen, T, [[], []] + [min(3, T - 1)] * (batch - 2))
    grad_out = torch.randn(batch, T, V, dtype=torch.float64)
    params = list(model.parameters())
    results = []
    for fold in (False, k):
        model.fold_rows = fold
        logits = model(tokens, seq_idx)
        results.append((logits, torch.autograd.grad(logits, params, grad_out)))
        if fold:
            conv_ops = {op for op in seq_idx_args if op.startswith("causal_conv1d")}
            assert conv_ops and all(seq_idx_args[op] == {packed} for op in conv_ops), seq_idx_args
            assert seq_idx_args["selective_scan_fwd"] == seq_idx_args["selective_scan_bwd"] == {True}
        seq_idx_args.clear()
    (want, want_grads), (got, got_grads) = results
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for g, w, (name, _) in zip(got_grads, want_grads, model.named_parameters()):
        torch.testing.assert_close(g, w, rtol=1e-11, atol=1e-11, msg=name)


@pytest.mark.parametrize("dtype, autocast, tol", [(torch.float64, False, 1e-10), (torch.float32, False, 1e-4),
                                                   (torch.float32, True, 5e-2)], ids=["float64", "float32", "bf16"])
@pytest.mark.parametrize("k, via_in_proj", [(1, False), (3, False), (3, True)])
def test_mamba_channel_first_gemms_match_token_major_ones(k, via_in_proj, dtype, autocast, tol, monkeypatch):
    # The CUDA formulation (_channel_first_gemms, forced here on the CPU): out_proj reads y through a
    # transposed view, its weight gradient and, with the conv's rows split (rows folded k at a time),
    # in_proj's gradients sum per-row products over the batch, without transpose_cat. The logits and
    # every gradient equal the token-major formulation's; both backward formulations of the norm
    # weight's gradient (via_in_proj forced in full precision; bf16 autocast takes it itself).
    from ssm_tools.models import mamba
    called = set()

    class RecordingOps:
        def __getattr__(self, name):
            called.add(name)
            return getattr(torch.ops.ssm_tools, name)
    monkeypatch.setattr(mamba, "_ops", RecordingOps())
    if not autocast:
        monkeypatch.setattr(mamba, "_norm_grad_via_in_proj", lambda cd, stream_dtype: via_in_proj)
    torch.manual_seed(3000 + k)
    model = _perturbed_mamba(3, dtype)
    model.fold_rows = k
    tokens = torch.randint(0, V, (6, 70))
    grad_out = torch.randn(6, 70, V, dtype=dtype)
    params = list(model.parameters())
    results = []
    for channel_first in (False, True):
        monkeypatch.setattr(mamba, "_channel_first_gemms", lambda t, cf=channel_first: cf)
        called.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            logits = model(tokens)
        results.append((logits, torch.autograd.grad(logits, params, grad_out.to(logits.dtype))))
        assert ("transpose_cat" in called) == (not channel_first), called
    (want, want_grads), (got, got_grads) = results
    assert got.dtype == want.dtype
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    for g, w, (name, p) in zip(got_grads, want_grads, model.named_parameters()):
        assert g.dtype == w.dtype == p.dtype, name
        torch.testing.assert_close(g, w, rtol=tol, atol=tol * w.abs().max().item(), msg=name)


def test_fold_seq_idx_starts_a_sequence_at_each_row_and_each_change_of_the_callers():
    from ssm_tools.models.mamba import fold_seq_idx
    from ssm_tools.reference import sequences
    seq_idx = torch.tensor([[0, 0, 0, 0], [0, 0, 1, 1], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.int32)
    folded = fold_seq_idx(seq_idx, 4, 4, 2, "cpu")
    assert folded.dtype == torch.int32 and folded.shape == (2, 8) and folded.is_contiguous()
    assert sequences(folded[0]) == [(0, 4), (4, 6), (6, 8)]
    assert sequences(folded[1]) == [(0, 1), (1, 4), (4, 8)]
    assert sequences(fold_seq_idx(None, 4, 3, 4, "cpu")[0]) == [(0, 3), (3, 6), (6, 9), (9, 12)]


@pytest.mark.parametrize("batch, seqlen, d_inner, sms, k", [
    (128, 216, 1536, 132, 16),   # 3,456 = 13.5 chunks (1.037x against 1.185x); 32 would leave too few rows
    (128, 640, 1536, 132, 4),    # 2,560 = 10 chunks exactly (1.2x before); 8 would be 20 chunks a row
    (128, 256, 1536, 132, 1),    # no padding to cut
    (120, 216, 1536, 132, 15),   # 8 cuts to 1.037x, 15 to 1.027x; 20 would be 17 chunks a row
    (100, 216, 1536, 132, 10),   # 5 gains nothing, 10 cuts to 1.067x, 20 would leave 7,680 rows < 64 x 132
    (64, 216, 1536, 132, 8),     # 16 would leave 6,144 rows
    (12, 216, 1536, 8, 12),      # few SMs: 2,592 = 10.1 chunks (1.086x)
    (7, 216, 1536, 1, 7),        # a prime batch, all its rows in one: 1,512 = 5.9 chunks
    (7, 232, 1536, 1, 1),        # ... where that cuts nothing: 1,624 = 6.3 chunks (1.103x either way)
    (32, 216, 128, 132, 1),      # a tiny model never folds on an H200
    (128, 232, 1536, 132, 16),   # 1.103x until 16 rows, 3,712 = 14.5 chunks (1.034x)
    (128, 1000, 1536, 132, 1),   # 1.024x padded: less than a packed row costs
])
def test_fold_factor(batch, seqlen, d_inner, sms, k):
    from ssm_tools.models.mamba import fold_factor
    assert fold_factor(batch, seqlen, d_inner, sms) == k


def test_mamba_fold_rows_checks_its_value_and_never_folds_on_the_cpu_by_itself(monkeypatch):
    from ssm_tools.models import mamba
    model = _perturbed_mamba(1, torch.float64)
    tokens = torch.randint(0, V, (6, 10))
    want = model(tokens)
    monkeypatch.setattr(mamba, "fold_factor", lambda *a: pytest.fail("fold_factor consulted on the CPU"))
    assert model.fold_rows is True and torch.equal(model(tokens), want)
    for bad in (4, 0, "2", 2.0):
        model.fold_rows = bad
        with pytest.raises(ValueError, match=r"fold_rows must be a bool or a positive int dividing the batch \(6\)"):
            model(tokens)


def test_models_without_packed_rows_refuse_seq_idx():
    model = build_model("lstm", vocab_size=128, d_model=16, n_layers=1)
    with pytest.raises(ValueError, match="does not take packed rows"):
        model(torch.zeros(1, 5, dtype=torch.long), torch.zeros(1, 5, dtype=torch.int32))


def test_bfloat16_decode_copy_decodes_what_autocast_trains():
    """A decode_copy in bfloat16 casts the body's matmul weights once, leaves the model as it was, and
    steps to the logits of the bf16-autocast forward (the training numerics), bar rounding."""
    model = make("mamba", dtype=torch.float32, d_model=32, n_layers=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    twin = model.decode_copy(torch.bfloat16)
    assert all(torch.equal(v, before[k]) and v.dtype == torch.float32 for k, v in model.state_dict().items())
    cast = {id(p) for layer in twin.matmul_layers() for p in layer.parameters()}
    for name, p in twin.named_parameters():
        assert p.dtype == (torch.bfloat16 if id(p) in cast else torch.float32), name
    assert {n.split(".")[-2] for n, p in twin.named_parameters() if id(p) in cast} == {"in_proj", "x_proj", "out_proj"}
    tokens = torch.randint(1, V, (4, 30))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        trained = model(tokens).float()
    with torch.no_grad():
        stepped, full = decode(twin, tokens), model(tokens)
    assert stepped.dtype == torch.float32  # the head stays float32: no bf16 ties in the argmax
    scale = full.abs().max().item()
    torch.testing.assert_close(stepped, trained, rtol=0, atol=2e-2 * scale)
    assert (stepped - full).abs().max().item() > 0  # the weights really are bf16


@pytest.mark.parametrize("name", ["lstm", "gru", "pythia", "mistral"])
def test_models_without_a_low_precision_decode_refuse_it(name):
    with pytest.raises(ValueError, match="decodes in its parameters' dtype only, not torch.bfloat16"):
        make(name).decode_copy(torch.bfloat16)


def _plain_mamba(model, tokens, seq_idx=None):
    """The Mamba LM written plainly: x = x + mixer_ref(norm(x)) per layer, the separate add, norm and
    cast of the unfused formulation (reference.mamba_mixer_ref), then the final norm and head."""
    from ssm_tools.reference import mamba_mixer_ref
    x = model.embedding(tokens)
    for norm, mixer in zip(model.norms, model.mixers):
        x = x + mamba_mixer_ref(mixer, norm(x), seq_idx)
    return model.lm_head(model.norm_f(x))


def _perturbed_mamba(n_layers, dtype):
    model = build_model("mamba", vocab_size=V, d_model=16, n_layers=n_layers, d_state=4).to(dtype)
    with torch.no_grad():
        for p in model.parameters():  # off the initialisation (norm weights of ones), so every term counts
            p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("via_in_proj", [False, True], ids=["torch_norm_backward", "norm_grad_via_in_proj"])
@pytest.mark.parametrize("n_layers, T, packed", [(1, 9, False), (3, 70, False), (3, 300, True)])
def test_mamba_body_with_fused_residual_norm_matches_plain_formulation(n_layers, T, packed, via_in_proj, monkeypatch):
    # Each layer takes the residual add before its norm (ops.add_rms_norm: one kernel for the add,
    # the norm and the cast) and returns (r, out): the logits and every gradient (parameters of all
    # layers, norms, embedding) equal the plain stack's with separate adds in float64. Both backward
    # formulations of the norm weight's gradient (the autocast one forced here in float64) are exact.
    from conftest import packed_seq_idx
    from ssm_tools.models import mamba
    monkeypatch.setattr(mamba, "_norm_grad_via_in_proj", lambda cd, stream_dtype: via_in_proj)
    torch.manual_seed(1000 + T)
    model = _perturbed_mamba(n_layers, torch.float64)
    tokens = torch.randint(0, V, (2, T))
    seq_idx = packed_seq_idx(None, T, [[1, 2, 100, 255, 256], 20]) if packed else None
    grad_out = torch.randn(2, T, V, dtype=torch.float64)
    params = list(model.parameters())
    got, want = model(tokens, seq_idx), _plain_mamba(model, tokens, seq_idx)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    for g, w, (name, _) in zip(torch.autograd.grad(got, params, grad_out), torch.autograd.grad(want, params, grad_out),
                               model.named_parameters()):
        assert g.dtype == w.dtype, name
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10, msg=name)


def test_mamba_final_norm_with_the_last_add_is_bitwise_the_separate_add_and_norm_in_float32():
    # head_input (the last residual add inside the final norm's kernel, its backward by autograd of the
    # recomputed norm) gives the separate x + out and nn.RMSNorm's output and gradients to the bit in
    # float32 on the CPU, as the runs that reproduce recorded results need.
    torch.manual_seed(11)
    model = _perturbed_mamba(2, torch.float32)
    x = model.embedding(torch.randint(0, V, (2, 30))).detach().requires_grad_()
    grad_out = torch.randn(2, 30, 16)
    leaves = [x, *(p for name, p in model.named_parameters() if not name.startswith("embedding"))]
    got, want = model.head_input(x), model.norm_f(model.body(x))
    assert got.dtype == torch.float32 and torch.equal(got, want)
    for g, w in zip(torch.autograd.grad(got, leaves, grad_out), torch.autograd.grad(want, leaves, grad_out)):
        assert torch.equal(g, w)


def test_mamba_training_loss_and_gradients_under_autocast_match_plain_formulation():
    # The training path (float32 parameters, bf16 autocast on the CPU, the masked loss): loss and
    # every gradient against the plain stack under the same autocast. The fused layer keeps the
    # weights cast once for its backward; the gradients come back float32.
    from ssm_tools.train import masked_loss
    torch.manual_seed(7)
    model = _perturbed_mamba(3, torch.float32)
    tokens = torch.randint(0, V, (3, 40))
    mask = torch.rand(3, 40) < 0.7
    params = list(model.parameters())
    results = []
    for forward in (model, lambda t: _plain_mamba(model, t)):
        class Wrapped(torch.nn.Module):
            def forward(self, t, seq_idx=None):
                return forward(t)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = masked_loss(Wrapped(), tokens, mask)
        results.append((loss, torch.autograd.grad(loss, params)))
    (got, got_grads), (want, want_grads) = results
    torch.testing.assert_close(got, want, rtol=1e-2, atol=1e-2)
    for g, w, (name, p) in zip(got_grads, want_grads, model.named_parameters()):
        assert g.dtype == p.dtype == torch.float32, name
        torch.testing.assert_close(g, w, rtol=5e-2, atol=5e-2 * w.abs().max().item(), msg=name)


@pytest.mark.filterwarnings("ignore:Mismatch dtype between input and weight")
@pytest.mark.parametrize("x_dtype, res_dtype, cd", [(torch.float32, torch.bfloat16, torch.bfloat16),
                                                    (torch.float32, None, torch.bfloat16),
                                                    (torch.float64, torch.float64, torch.float64),
                                                    (torch.float32, torch.float32, torch.float32)])
def test_residual_norm_fused_equals_separate_add_norm_cast(x_dtype, res_dtype, cd):
    # _residual_norm's one-kernel path against the add, F.rms_norm and cast it replaces; a norm
    # weight of another dtype than the stream takes the separate ops and gives the same.
    import torch.nn.functional as F
    from ssm_tools.models.mamba import _residual_norm
    torch.manual_seed(3)
    x = torch.randn(2, 5, 24, dtype=x_dtype)
    res = None if res_dtype is None else torch.randn(2, 5, 24, dtype=res_dtype)
    w = 1 + 0.1 * torch.randn(24, dtype=x_dtype)
    r_want = x if res is None else x + res
    h_want = F.rms_norm(r_want, (24,), w, None).to(cd)
    tol = dict(rtol=1e-2, atol=1e-2) if cd == torch.bfloat16 else dict(rtol=1e-6, atol=1e-6)
    for weight in (w, w.to(torch.float16)):
        r, h = _residual_norm(x, res, weight, None, cd)
        assert r.dtype == x_dtype and h.dtype == cd and r.shape == h.shape == x.shape
        torch.testing.assert_close(r, r_want, rtol=0, atol=0)
        torch.testing.assert_close(h, h_want if weight is w else F.rms_norm(r_want, (24,), weight, None).to(cd), **tol)
