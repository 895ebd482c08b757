"""The CUDA-graphed training step's CPU-side parts: its argument checks, the batch checks made on the
host, and the loss it captures (train.device_masked_loss) against masked_loss. The step itself on a GPU:
tests/test_cuda_models.py."""
import pytest
import torch

from conftest import packed_seq_idx
from ssm_tools.graphed_step import GraphedTrainStep, check_batch
from ssm_tools.models import build_model
from ssm_tools.train import device_masked_loss, masked_loss

TINY = dict(vocab_size=128, d_model=16, n_layers=2, d_state=4)


def test_graphed_step_refuses_a_cpu_model_and_optimizers_it_cannot_capture():
    model = build_model("mamba", **TINY)
    with pytest.raises(ValueError, match=r"model must be on a CUDA device .* on cpu"):
        GraphedTrainStep(model, torch.optim.AdamW(model.parameters(), capturable=True), 4, 17)
    with pytest.raises(ValueError, match="optimizer must be built with capturable=True"):
        GraphedTrainStep(model, torch.optim.AdamW(model.parameters()), 4, 17)
    with pytest.raises(ValueError, match="optimizer must be torch.optim.Adam or AdamW, got SGD"):
        GraphedTrainStep(model, torch.optim.SGD(model.parameters(), lr=0.1), 4, 17)


def test_check_batch_names_what_is_wrong():
    shape, vocab = (3, 9), 128
    tokens, mask = torch.randint(0, vocab, shape), torch.rand(shape) < 0.5
    mask[1, 4] = True
    seq_idx = torch.zeros(shape, dtype=torch.int32)
    check_batch(tokens, mask, None, shape, False, vocab)
    check_batch(tokens.int(), mask, seq_idx, shape, True, vocab)
    cases = [
        ((tokens[:, :8], mask, None, False), ValueError, r"tokens must have the captured shape \(3, 9\), got \(3, 8\)"),
        ((tokens, mask[:2], None, False), ValueError, r"mask must have the captured shape \(3, 9\), got \(2, 9\)"),
        ((tokens.float(), mask, None, False), TypeError, "tokens must be torch.int64 or torch.int32"),
        ((tokens, mask.long(), None, False), TypeError, "mask must be torch.bool, got torch.int64"),
        ((tokens, mask, seq_idx, False), ValueError, "seq_idx: this step was captured for rows without packing"),
        ((tokens, mask, None, True), TypeError, "seq_idx must be a torch.Tensor"),
        ((tokens, mask, seq_idx.long(), True), TypeError, "seq_idx must be torch.int32"),
        ((tokens.clone().fill_(vocab), mask, None, False), ValueError, r"tokens must hold ids in \[0, 128\)"),
    ]
    only_first = torch.zeros(shape, dtype=torch.bool)
    only_first[:, 0] = True  # the first position is never a target
    cases.append(((tokens, only_first, None, False), ValueError, "mask marks no model token to learn from"))
    for (t, m, s, packed), error, message in cases:
        with pytest.raises(error, match=message):
            check_batch(t, m, s, shape, packed, vocab)
    # values=False: the caller checked the values; shapes and dtypes are still checked.
    check_batch(tokens.clone().fill_(vocab), only_first, None, shape, False, vocab, values=False)
    with pytest.raises(ValueError, match="captured shape"):
        check_batch(tokens[:, :8], mask, None, shape, False, vocab, values=False)


@pytest.mark.parametrize("packed", [False, True])
def test_device_masked_loss_equals_masked_loss(packed):
    """The graph's loss (every position's cross-entropy kept by the mask, over the count taken on the
    device) is masked_loss's value and gradient, float64 on the CPU, with a row that has nothing to
    learn and packed rows; a batch with nothing to learn at all gives 0 (masked_loss raises; the
    graphed step's host check refuses such a batch before it goes in)."""
    torch.manual_seed(0)
    model = build_model("mamba", **TINY).double()
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 128, (4, 31), generator=gen)
    mask = torch.rand(4, 31, generator=gen) < 0.6
    mask[2] = False  # a row with nothing to learn
    seq_idx = packed_seq_idx(gen, 31, [3, [5, 17], [], 2]) if packed else None
    params = list(model.parameters())
    want = masked_loss(model, tokens, mask, seq_idx=seq_idx)
    got = device_masked_loss(model, tokens, mask, seq_idx)
    torch.testing.assert_close(got, want, rtol=1e-13, atol=0)
    for g, w in zip(torch.autograd.grad(got, params), torch.autograd.grad(want, params)):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-14)
    nothing = device_masked_loss(model, tokens, torch.zeros_like(mask), seq_idx)
    assert nothing.item() == 0.0


@pytest.mark.parametrize("fold, packed, autocast", [(1, False, False), (4, False, True), (4, True, False), (1, True, True)])
def test_captured_loss_and_backward_read_nothing_back_to_the_host(fold, packed, autocast):
    """What the graph captures of the model (forward_unchecked, device_masked_loss, backward) on fake
    tensors, which raise at any host read of a value or shape taken from the data (as a capture
    would): rows unfolded and folded (the conv's split weights), plain and packed, float32 and bf16
    autocast (the layers' norm backward through ops.rms_norm_bwd). masked_loss, which reads the
    tokens' range and the mask's count, raises there."""
    from torch._subclasses.fake_tensor import DataDependentOutputException, FakeTensorMode
    torch.manual_seed(0)
    model = build_model("mamba", **TINY)
    model.fold_rows = fold
    mode, fakes = FakeTensorMode(), {}
    for module in model.modules():  # each parameter made fake once (the head's weight is the embedding's)
        for name, p in module._parameters.items():
            if p is None:
                continue
            if id(p) not in fakes:
                fakes[id(p)] = torch.nn.Parameter(mode.from_tensor(p.detach()))
            module._parameters[name] = fakes[id(p)]
    with mode:
        tokens, mask = torch.randint(0, 128, (8, 41)), torch.rand(8, 41) < 0.7
        seq_idx = torch.zeros(8, 41, dtype=torch.int32) if packed else None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast, cache_enabled=False):
            loss = device_masked_loss(model, tokens, mask, seq_idx)
        loss.backward()
        assert all(p.grad is not None for p in model.parameters())
        with pytest.raises(DataDependentOutputException):
            masked_loss(model, tokens, mask, seq_idx=seq_idx)
