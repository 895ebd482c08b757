"""Models on the GPU: the CUDA-graph decode step of the evaluation equals eager decoding, and the
parallel forward on CUDA matches the CPU one. Runs on the device machine; skipped without a GPU."""
import numpy as np
import pytest
import torch

from conftest import run_killed_after
from ssm_tools.env import Env, rollout
from ssm_tools.evaluate import GraphedGreedyStep, greedy_policy
from ssm_tools.models import build_model, preset
from ssm_tools.models.base import LanguageModel
from ssm_tools.models.mamba import Mamba
from ssm_tools.tasks import get_task
from ssm_tools.vocab import VOCAB_SIZE

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

RECURRENT = ["mamba", "lstm", "gru"]


def tiny(name, seed=0):
    torch.manual_seed(seed)
    return build_model(name, vocab_size=VOCAB_SIZE, **preset(name, "tiny")).cuda().eval()


@pytest.mark.parametrize("name", RECURRENT)
def test_graphed_step_equals_eager_greedy(name):
    model = tiny(name)
    batch, steps = 37, 40
    graphed = greedy_policy(model, batch, "cuda")
    assert isinstance(graphed, GraphedGreedyStep)
    state = model.init_state(batch, "cuda")
    g = torch.Generator().manual_seed(1)
    inputs = torch.randint(0, VOCAB_SIZE, (steps, batch), generator=g)
    agree = 0
    for t in range(steps):
        with torch.no_grad():
            logits, state = model.step(inputs[t].cuda(), state)
        eager = logits.argmax(-1).cpu()
        got = graphed(inputs[t])
        assert got.shape == (batch,) and got.dtype == torch.long
        # Same kernels on the same inputs: equal, bar an argmax between near-equal logits.
        top2 = logits.topk(2, dim=-1).values
        close = (top2[:, 0] - top2[:, 1]).cpu() < 1e-5
        assert ((got == eager) | close).all(), t
        agree += int((got == eager).sum())
    assert agree >= 0.99 * steps * batch


@pytest.mark.parametrize("precision", ["tf32", "bfloat16"])
def test_graphed_step_with_faster_matmuls(precision):
    """TF32 decoding (the flag holds while the graph is captured only) and bf16 decoding (a copy of
    the model with bf16 matmul weights; the model itself untouched): the argmax stays that of
    float32 decoding bar near-ties, and the graph replays what the same copy decodes eagerly."""
    model = tiny("mamba")
    before = torch.backends.cuda.matmul.allow_tf32
    fp32, fast = greedy_policy(model, 16, "cuda"), greedy_policy(model, 16, "cuda", precision=precision)
    assert torch.backends.cuda.matmul.allow_tf32 == before
    assert all(p.dtype == torch.float32 for p in model.parameters())
    tokens = torch.randint(0, VOCAB_SIZE, (30, 16), generator=torch.Generator().manual_seed(2))
    eager = greedy_policy(fast.model, 16, "cuda", cuda_graph=False)
    agree = same = 0
    for t in tokens:
        got = fast(t)
        agree += int((fp32(t) == got).sum())
        same += int((eager(t) == got).sum())
    assert agree >= 0.9 * tokens.numel()
    assert same >= (0.9 if precision == "tf32" else 0.99) * tokens.numel()  # eager runs without TF32


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
@pytest.mark.parametrize("batch", [1, 100])
def test_final_add_inside_the_norm_agrees_with_the_add_before_it(precision, batch, monkeypatch):
    """The decode step with the last residual add inside the final norm's kernel, against the add
    apart from the final norm (LanguageModel.step_unchecked), on two layers of the paper model's
    shape (d_model 768: 1536 channels, dt_rank 48, d_state 16), eager and graphed (the graph's copies
    in and out included): logits close, argmax mostly equal."""
    torch.manual_seed(7)
    model = build_model("mamba", vocab_size=VOCAB_SIZE, **dict(preset("mamba", "paper"), n_layers=2)).cuda().eval()
    with torch.no_grad():  # logits spread out: greedy tokens that differ between tokens and steps
        model.norm_f.weight.mul_(30.0)
    if precision == "bfloat16":
        model = model.decode_copy(torch.bfloat16)
    # At least 200 tokens: the agreement fractions below are not decided by one or two near-ties.
    tokens = torch.randint(0, VOCAB_SIZE, (max(20, 200 // batch), batch), generator=torch.Generator().manual_seed(3))

    def decode():
        state, logits, argmax = model.init_state(batch, "cuda"), [], []
        graphed = greedy_policy(model, batch, "cuda")
        with torch.no_grad():
            for t in tokens:
                out, state = model.step(t.cuda(), state)
                logits.append(out.float())
                argmax.append(graphed(t))
        return torch.stack(logits), torch.stack(argmax)

    inside, inside_argmax = decode()
    monkeypatch.setattr(Mamba, "step_unchecked", LanguageModel.step_unchecked)
    before, before_argmax = decode()
    err = ((inside - before).norm() / before.norm()).item()
    # The same sums in another order; bfloat16: the head's input rounded to bf16 may differ by an ulp.
    assert err < (1e-4 if precision == "float32" else 1e-2), err
    assert (inside_argmax == before_argmax).float().mean() >= (0.99 if precision == "float32" else 0.9)
    # The graph replays the eager step (as test_graphed_step_with_faster_matmuls: cuBLAS may pick
    # other GEMM kernels under capture).
    assert (inside_argmax == inside.argmax(-1).cpu()).float().mean() >= 0.99


def test_programmatic_launches_decode_bitwise_as_plain_launches(tmp_path, seed):
    """The decode kernels launched programmatically (each waits for the previous grid inside; Hopper)
    compute bitwise what plain launches do: eager logits, the graph's tokens and both final states of
    two paper-shape layers at batches 1, 100 and 1001, float32 and bf16 weights, recorded in two
    processes (the switch is read once per process) from the test's seed. A kernel reading its predecessor's output
    before that grid finished would differ here."""
    import os
    import subprocess
    import sys

    script = os.path.join(os.path.dirname(__file__), "cuda_decode_record.py")
    runs = {}
    for flag in ("1", "0"):
        out = tmp_path / f"decode_{flag}.pt"
        env = dict(os.environ, SSM_TOOLS_PROGRAMMATIC_LAUNCH=flag)
        subprocess.run([sys.executable, script, str(out), str(seed)], env=env, check=True, timeout=300)
        runs[flag] = torch.load(out)
    assert runs["1"].keys() == runs["0"].keys() and len(runs["1"]) == 2 * 3 * 10
    for key, value in runs["0"].items():
        assert torch.equal(runs["1"][key], value), key
    # The records decode something: greedy tokens vary, states moved off zero.
    assert len(torch.unique(runs["1"]["bfloat16_100_graph_tokens"])) > 10
    assert runs["1"]["bfloat16_1001_graph_ssm1"].abs().sum() > 0


def test_graphed_step_rejects_bad_tokens():
    step = greedy_policy(tiny("mamba"), 4, "cuda")
    with pytest.raises(ValueError, match=r"ids in \[0, 128\)"):
        step(torch.tensor([0, 1, 2, 128]))
    with pytest.raises(ValueError, match="non-empty shape"):
        step(torch.zeros(4, 1, dtype=torch.long))


def test_transformer_decodes_eagerly_on_cuda():
    model = tiny("pythia")
    assert not isinstance(greedy_policy(model, 3, "cuda"), GraphedGreedyStep)


@pytest.mark.parametrize("name", RECURRENT)
def test_rollout_graphed_equals_eager(name):
    """Whole episodes through the C++ loop: the graphed decode gives the transcripts of eager decoding."""
    task = get_task("addition")
    model = tiny(name, seed=3)
    rng = np.random.default_rng(5)
    prompts = [task.prompt(task.sample(rng, 6)) for _ in range(16)]
    runs = [rollout(greedy_policy(model, 16, "cuda", cuda_graph=graph), Env(task.tools(), batch_size=16), prompts,
                    max_steps=300, seed=0) for graph in (True, False)]
    assert runs[0].lengths.sum() > 16 * 20
    assert torch.equal(runs[0].tokens, runs[1].tokens)
    assert torch.equal(runs[0].loss_mask, runs[1].loss_mask)


def test_joint_graphed_rollout_gives_each_model_its_alone_transcripts():
    """Several models' graphed steps replayed on their own streams in one rollout (evaluate_many's
    path): every model's episodes are token for token those it decodes alone, graphed and eager, and
    its accuracies those of evaluate() alone."""
    from ssm_tools import evaluate as E

    task = get_task("addition")
    models = [tiny("mamba", 0), tiny("mamba", 1), tiny("lstm", 2), tiny("gru", 3), tiny("mamba", 4)]
    for m in models:  # scaled logits: greedy tokens that vary from step to step
        with torch.no_grad():
            m.norm_f.weight.mul_(30.0)
    n, size = 16, 6
    instances = E.sample_instances(task, size, n)
    policy = E.JointGreedyPolicy(models, n, "cuda")
    assert policy.graphed and len({s.stream.cuda_stream for s in policy.steps}) == len(models)
    joint = E.rollout_many(models, task, size, instances, device="cuda")
    assert int(joint.lengths.min()) > len(task.prompt(instances[0]))

    def rows(transcript, j):
        return [transcript.episode(i) for i in range(j * n, (j + 1) * n)]

    for j, m in enumerate(models):
        alone = E.rollout_many([m], task, size, instances, device="cuda")
        assert rows(joint, j) == rows(alone, 0), j
        eager = rollout(greedy_policy(m, n, "cuda", cuda_graph=False), Env(task.tools(), batch_size=n,
                        max_len=task.max_steps(size) + 2), [task.prompt(x) for x in instances],
                        max_steps=task.max_steps(size), seed=E.TEST_SEED)
        assert rows(joint, j) == rows(eager, 0), j
    assert len({tuple(map(tuple, (e[0] for e in rows(joint, j)))) for j in range(len(models))}) == len(models)
    assert E.evaluate_many(models, task, [3, size], n, device="cuda") == \
        [E.evaluate(m, task, [3, size], n, device="cuda") for m in models]


def test_graphed_step_uses_pinned_buffers():
    step = greedy_policy(tiny("mamba"), 8, "cuda")
    assert step.host_in.is_pinned() and step.host_out.is_pinned()
    out = step(torch.zeros(8, dtype=torch.long))
    assert out.data_ptr() != step.host_out.data_ptr()  # the caller's copy, not the reused buffer


@pytest.mark.parametrize("name", ["mamba", "lstm", "pythia"])
def test_forward_cuda_matches_cpu(name):
    model = tiny(name)
    tokens = torch.from_numpy(np.random.default_rng(0).integers(0, VOCAB_SIZE, (3, 300)))
    with torch.no_grad():
        gpu = model(tokens.cuda()).double().cpu()
        cpu = model.cpu()(tokens).double()
    assert ((gpu - cpu).norm() / cpu.norm()).item() < 1e-4


def test_training_on_cuda_checkpoints_and_resumes(tmp_path):
    """A CUDA run's checkpoint (loaded with map_location="cuda") resumes: the RNG states go back to
    the CPU tensors torch expects."""
    from ssm_tools.train import CHECKPOINT, TrainConfig, Trainer

    def trainer(seed):
        cfg = TrainConfig(steps=4, batch_size=4, warmup=1, seed=seed, ckpt_every=2)
        return Trainer(get_task("addition"), "mamba", {"vocab_size": VOCAB_SIZE, **preset("mamba", "tiny")}, cfg,
                       tmp_path, device="cuda", progress=False,
                       run_info={"task": {"name": "addition", "mode": "interactive", "options": {}}})

    first = trainer(0)
    run_killed_after(first, 2)
    resumed = trainer(1)
    resumed.load(tmp_path / CHECKPOINT)
    assert resumed.step == 2
    row = resumed.run()
    assert row["step"] == 4 and row["loss"] == row["loss"]  # finite


def test_packed_rows_on_cuda_give_the_padded_loss_and_gradients():
    """The Trainer's packed rows on the GPU (conv and scan kernels with seq_idx, rows aligned to 8):
    float32 loss and gradients of the padded batch of the same episodes, and those of the CPU."""
    from ssm_tools.train import masked_loss, pack_batch, pad_batch
    model = tiny("mamba").train()
    transcript, _ = get_task("addition").trajectories(np.random.default_rng(0), [5] * 32, train=True)
    tokens, mask, lengths = transcript.tokens, transcript.loss_mask, transcript.lengths
    packed = pack_batch(tokens, mask, lengths, 8)
    params = list(model.parameters())
    results = []
    for device, (tok, msk, seq_idx) in (("cuda", packed), ("cuda", (*pad_batch(tokens, mask, 8), None)),
                                        ("cpu", packed)):
        model.to(device)
        loss = masked_loss(model, tok.to(device), msk.to(device), seq_idx=None if seq_idx is None else seq_idx.to(device))
        results.append([loss.detach().cpu(), *(g.cpu() for g in torch.autograd.grad(loss, params))])
    assert packed[0].shape[0] < 32
    for other in results[1:]:
        for got, want in zip(results[0], other):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("k, packed", [(8, False), (4, True)])
def test_folded_rows_on_cuda_match_unfolded_rows(k, packed):
    """Rows folded k at a time on the GPU (the scan kernels with the composed seq_idx; the conv's rows
    taken apart as channels, or its seq_idx kernels with the caller's seq_idx): float32 logits and
    every gradient of the unfolded model. Rows of 216: a folded row spans chunk boundaries inside
    its original rows. And the rule the model applies by itself on this GPU at the paper's shape."""
    from conftest import packed_seq_idx
    from ssm_tools.models.mamba import fold_factor
    model = tiny("mamba").train()
    gen = torch.Generator().manual_seed(k)
    tokens = torch.randint(0, VOCAB_SIZE, (16, 216), generator=gen).cuda()
    seq_idx = packed_seq_idx(gen, 216, [[], []] + [5] * 14).cuda() if packed else None
    params = list(model.parameters())
    results = []
    for fold in (False, k):
        model.fold_rows = fold
        logits = model(tokens, seq_idx)
        results.append([logits.detach(), *torch.autograd.grad(logits.square().mean(), params)])
    for got, want in zip(results[1], results[0]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    paper_width = build_model("mamba", vocab_size=VOCAB_SIZE, d_model=preset("mamba", "paper")["d_model"], n_layers=1)
    assert paper_width.fold_for(128, 216, "cuda") == fold_factor(128, 216, 1536, sms) > 1


@pytest.mark.parametrize("autocast", [False, True], ids=["float32", "bf16"])
def test_channel_first_gemms_on_cuda_match_token_major_ones(autocast, monkeypatch):
    """The layers' CUDA formulation (out_proj and, with the conv's rows split, in_proj's gradients
    reading y, dx and dz channel-first through transposed views; their weight gradients summed over
    the batch in float32) against the token-major one (transpose_cat, forced here): the logits and
    every gradient at rows of 216 folded 8 at a time, float32 and under bf16 autocast."""
    from ssm_tools.models import mamba
    model = tiny("mamba").train()
    model.fold_rows = 8
    tokens = torch.randint(0, VOCAB_SIZE, (16, 216), generator=torch.Generator().manual_seed(1)).cuda()
    params = list(model.parameters())
    results = []
    for channel_first in (True, False):
        monkeypatch.setattr(mamba, "_channel_first_gemms", lambda t, cf=channel_first: cf)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            logits = model(tokens).float()
        results.append([logits.detach(), *torch.autograd.grad(logits.square().mean(), params)])
    rtol, atol = (5e-2, 5e-2) if autocast else (1e-4, 1e-5)
    for got, want, name in zip(*results, ["logits", *(n for n, _ in model.named_parameters())]):
        torch.testing.assert_close(got, want, rtol=rtol, atol=atol * want.abs().max().item(), msg=name)


def test_autocast_training_gradients_as_close_to_float64_as_with_torch_norm_backward(monkeypatch):
    """The bf16-autocast training step at the paper width (768: rms_norm_bwd's rows held in registers)
    and 4,400 rows (add_rms_norm's warp-a-row kernel): the layers' norm backward through ops.rms_norm
    and ops.rms_norm_bwd, and the final norm with the last add, give every gradient as close to the
    float64 CPU model's as torch's norm backward (the formulation they replace) does, per parameter."""
    import copy

    from ssm_tools.models import mamba
    from ssm_tools.train import masked_loss
    seed = int(torch.randint(0, 2**31, ()).item())
    print(f"torch seed {seed}")
    torch.manual_seed(seed)
    model = build_model("mamba", vocab_size=VOCAB_SIZE, d_model=768, n_layers=2, d_state=16)
    with torch.no_grad():
        for p in model.parameters():  # off the initialisation (norm weights of ones)
            p.add_(0.02 * torch.randn_like(p))
    tokens, mask = torch.randint(0, VOCAB_SIZE, (4, 1100)), torch.rand(4, 1100) < 0.8
    m64 = copy.deepcopy(model).double()
    want = torch.autograd.grad(masked_loss(m64, tokens, mask), list(m64.parameters()))
    model.cuda()
    errors = {}
    for fused in (True, False):
        monkeypatch.setattr(mamba, "_norm_grad_via_in_proj", lambda cd, stream_dtype, fused=fused: fused)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = masked_loss(model, tokens.cuda(), mask.cuda())
        got = torch.autograd.grad(loss, list(model.parameters()))
        errors[fused] = [((g.double().cpu() - w).norm() / w.norm()).item() for g, w in zip(got, want)]
    for (name, _), new, old in zip(model.named_parameters(), errors[True], errors[False]):
        assert new <= 1.5 * old + 5e-3, (name, new, old)


def _graphed_and_eager_steps(fold, packed, lrs, autocast_dtype=None, seed=3):
    """len(lrs) training steps of two copies of the tiny Mamba on the same 16 x 217 batches (random
    masks; packed: random sequence starts): the eager step (masked_loss, gradient clipping at 1, fused
    AdamW with a float lr set before each step) and GraphedTrainStep's (fused capturable AdamW, its lr
    a tensor filled before each step). Returns (eager losses, graphed losses, the parameters before,
    the eager model's, the graphed model's) after checking that building the graphed step left the
    parameters as they were."""
    import copy

    from conftest import packed_seq_idx
    from ssm_tools.graphed_step import GraphedTrainStep
    from ssm_tools.train import masked_loss
    eager = tiny("mamba").train()
    eager.fold_rows = fold
    graphed = copy.deepcopy(eager)
    start = [p.detach().clone() for p in eager.parameters()]
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for _ in lrs:
        tokens, mask = torch.randint(0, VOCAB_SIZE, (16, 217), generator=gen), torch.rand(16, 217, generator=gen) < 0.7
        seq_idx = packed_seq_idx(gen, 217, [3] * 16).cuda() if packed else None
        batches.append((tokens.cuda(), mask.cuda(), seq_idx))
    opt_eager = torch.optim.AdamW(eager.parameters(), lr=lrs[0], fused=True)
    lr = torch.tensor(lrs[0], dtype=torch.float32, device="cuda")
    opt_graphed = torch.optim.AdamW(graphed.parameters(), lr=lr, fused=True, capturable=True)
    step = GraphedTrainStep(graphed, opt_graphed, 16, 217, packed=packed, grad_clip=1.0, autocast_dtype=autocast_dtype)
    for p, p0 in zip(graphed.parameters(), start):
        assert torch.equal(p, p0)
    eager_losses, graphed_losses = [], []
    for (tokens, mask, seq_idx), lr_now in zip(batches, lrs):
        for group in opt_eager.param_groups:
            group["lr"] = lr_now
        with torch.autocast("cuda", dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
            loss = masked_loss(eager, tokens, mask, seq_idx=seq_idx)
        opt_eager.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(eager.parameters(), 1.0)
        opt_eager.step()
        eager_losses.append(loss.item())
        lr.fill_(lr_now)
        graphed_losses.append(step.step(tokens, mask, seq_idx).item())
    step.close()
    return eager_losses, graphed_losses, start, list(eager.parameters()), list(graphed.parameters())


@pytest.mark.parametrize("fold, packed", [(False, False), (4, False), (False, True), (4, True)])
def test_graphed_train_step_gives_the_eager_steps(fold, packed):
    """Three float32 training steps captured as one CUDA graph (forward, device-normalised masked loss,
    backward, clipping, fused capturable AdamW) give the eager steps' losses and parameters: rows of
    216 unfolded and folded 4 at a time, plain and packed. The scan backward's atomics make neither
    step bitwise repeatable: the parameters' moves are compared, to 5% of one step's lr."""
    lr = 2e-3
    eager_losses, graphed_losses, start, eager, graphed = _graphed_and_eager_steps(fold, packed, [lr] * 3)
    torch.testing.assert_close(torch.tensor(graphed_losses), torch.tensor(eager_losses), rtol=1e-5, atol=0)
    for p0, p_e, p_g in zip(start, eager, graphed):
        assert (p_e - p0).abs().max() > 0.5 * lr  # each parameter moved: the comparison is not vacuous
        torch.testing.assert_close(p_g - p0, p_e - p0, rtol=1e-3, atol=0.05 * lr)


def test_graphed_train_step_reads_a_tensor_lr_at_every_replay():
    """The lr changed between replays (a tensor filled in place, as LR schedulers do): a step at lr 0
    moves nothing, the others move the parameters as the eager steps at the same rates."""
    lrs = [2e-3, 0.0, 1e-3]
    eager_losses, graphed_losses, start, eager, graphed = _graphed_and_eager_steps(4, True, lrs, seed=5)
    torch.testing.assert_close(torch.tensor(graphed_losses), torch.tensor(eager_losses), rtol=1e-5, atol=0)
    for p0, p_e, p_g in zip(start, eager, graphed):
        torch.testing.assert_close(p_g - p0, p_e - p0, rtol=1e-3, atol=0.05 * 1e-3)


def test_graphed_train_step_under_bf16_autocast_follows_the_eager_steps():
    """The paper's recipe (bf16 autocast, cast weights made inside the graph: cache_enabled=False),
    rows folded: the graphed losses follow the eager ones (bf16 roundings of the atomics' float32
    differences after the first update: 0.5%)."""
    eager_losses, graphed_losses, *_ = _graphed_and_eager_steps(4, False, [2e-3] * 3, torch.bfloat16, seed=7)
    torch.testing.assert_close(torch.tensor(graphed_losses), torch.tensor(eager_losses), rtol=5e-3, atol=0)


def test_graphed_train_step_replays_the_batch_copied_in():
    """Each replay computes the batch copied in last (tokens, mask and seq_idx all new; one from the
    CPU): at lr 0 the parameters stay, so each loss is the eager loss of that batch, and the batches'
    losses differ."""
    from conftest import packed_seq_idx
    from ssm_tools.graphed_step import GraphedTrainStep
    from ssm_tools.train import masked_loss
    model = tiny("mamba").train()
    opt = torch.optim.AdamW(model.parameters(), lr=0.0, fused=True, capturable=True)
    step = GraphedTrainStep(model, opt, 8, 65, packed=True, autocast_dtype=None)
    gen = torch.Generator().manual_seed(11)
    batches = [(torch.randint(0, VOCAB_SIZE, (8, 65), generator=gen), torch.rand(8, 65, generator=gen) < p,
                packed_seq_idx(gen, 65, [n] * 8)) for p, n in ((0.9, 1), (0.4, 4))]
    want = []
    for tokens, mask, seq_idx in batches:
        with torch.no_grad():
            want.append(masked_loss(model, tokens.cuda(), mask.cuda(), seq_idx=seq_idx.cuda()).item())
    assert abs(want[0] - want[1]) > 1e-4 * abs(want[0])  # far above the tolerance below
    for i in (0, 1, 0, 1):
        tokens, mask, seq_idx = batches[i]
        on_gpu = i == 0
        got = step.step(*(t.cuda() if on_gpu else t for t in (tokens, mask, seq_idx))).item()
        assert got == pytest.approx(want[i], rel=1e-5), i
    # Token ids out of range are refused before they go in: on the CPU by default, on the GPU when asked.
    bad = batches[0][0].clone()
    bad[3, 7] = VOCAB_SIZE
    for tokens, check in ((bad, None), (bad.cuda(), True)):
        with pytest.raises(ValueError, match="tokens must hold ids"):
            step.step(tokens, batches[0][1], batches[0][2], check=check)
    assert step.step(*(t.cuda() for t in batches[1])).item() == pytest.approx(want[1], rel=1e-5)
    step.close()
