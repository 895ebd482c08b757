"""A training step captured as one CUDA graph and replayed for every batch of one fixed shape:
forward (bf16 autocast), the masked loss, backward, gradient clipping and the optimizer step.

Launched op by op from Python, the paper-scale Mamba's step (about 1,000 kernels) keeps the GPU
waiting on the host for several milliseconds a step (results/train_step_notes.md, session 11); a
replay is one launch. PyTorch's whole-network capture recipe: warm-up steps on a side stream (lazy
initialisation, the optimizer's state tensors), the gradients set to None so that the captured
backward allocates them from the graph's memory pool (each replay then writes them afresh), the
capture; then a batch is copied into the static buffers and the graph replayed.

Nothing inside the graph may read back to the host or take a shape from the data: the batch is
checked on the host before it is copied in (`check_batch`), the loss is `train.device_masked_loss`
(mask-weighted, normalised on the device), the model runs `forward_unchecked`, and the optimizer must
be capturable (its step count on the device). A learning rate that must change between replays (a
schedule) must be a tensor on the model's device (AdamW(lr=torch.tensor(3e-3, device="cuda"))):
a float is baked into the graph at capture; a tensor is read at every replay, and LR schedulers
update it in place.
"""
from __future__ import annotations

import warnings

import torch

from .models.base import check_positive, check_tokens
from .train import device_masked_loss


def check_batch(tokens: torch.Tensor, mask: torch.Tensor, seq_idx: torch.Tensor | None, shape: tuple[int, int],
                packed: bool, vocab_size: int, values: bool = True) -> None:
    """What a graphed step's batch must be: tokens and mask (and seq_idx where the step was captured
    for packed rows) of the captured (batch, width) shape, mask bool, seq_idx int32; with `values`
    the token ids in [0, vocab_size) and something to learn after the first position (host reads:
    free for a batch still on the CPU, a synchronization for one on the GPU)."""
    for name, t, dtypes in (("tokens", tokens, (torch.int64, torch.int32)), ("mask", mask, (torch.bool,)),
                            ("seq_idx", seq_idx, (torch.int32,))):
        if name == "seq_idx" and not packed:
            if seq_idx is not None:
                raise ValueError("seq_idx: this step was captured for rows without packing; pass None "
                                 "(or build the step with packed=True)")
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor of shape {tuple(shape)}, got {type(t).__name__}")
        if tuple(t.shape) != tuple(shape):
            raise ValueError(f"{name} must have the captured shape {tuple(shape)}, got {tuple(t.shape)}")
        if t.dtype not in dtypes:
            raise TypeError(f"{name} must be {' or '.join(str(d) for d in dtypes)}, got {t.dtype}")
    if values:
        check_tokens(tokens, vocab_size, 2)
        if not bool(mask[:, 1:].any()):
            raise ValueError("mask marks no model token to learn from (after the first position)")


class GraphedTrainStep:
    """One training step of `model` with `optimizer` on (batch_size, width) batches (width: tokens
    per row, the model reading width - 1 of them, as masked_loss), captured as a CUDA graph on a
    stream of its own (cuBLAS's workspace is per stream, see evaluate.GraphedGreedyStep). Building
    it runs `warmup_steps` real steps on a dummy batch and then puts the parameters and the
    optimizer's state back as they were, so the first `step` is the model's next step.

    optimizer: torch.optim.Adam or AdamW over every trainable parameter, capturable=True (fused=True
    for speed). autocast_dtype: the forward's autocast dtype (None: the parameters' dtype).
    grad_clip: clip the gradients' total norm to this (as the Trainer does), or None.
    The parameters' .grad tensors live in the graph's memory and every replay writes them afresh:
    there is no zero_grad between steps. `close()` gives the graph and its memory back."""

    def __init__(self, model, optimizer, batch_size: int, width: int, *, packed: bool = False,
                 grad_clip: float | None = None, autocast_dtype: torch.dtype | None = torch.bfloat16,
                 warmup_steps: int = 3):
        if not isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
            # Their state starts at zeros, which is what the warm-up's is reset to where it had none.
            raise ValueError(f"optimizer must be torch.optim.Adam or AdamW, got {type(optimizer).__name__}")
        if not all(group.get("capturable", False) for group in optimizer.param_groups):
            raise ValueError("optimizer must be built with capturable=True (its step count on the device), "
                             "or a CUDA graph cannot capture its step")
        device = next(model.parameters()).device
        if device.type != "cuda":
            raise ValueError(f"model must be on a CUDA device for a CUDA-graphed training step, got its "
                             f"parameters on {device}")
        for group in optimizer.param_groups:
            lr = group["lr"]
            if isinstance(lr, torch.Tensor) and lr.device != device:
                raise ValueError(f"optimizer: a tensor lr must be on the model's device {device}, got {lr.device}")
        check_positive(batch_size=batch_size, width=width, warmup_steps=warmup_steps)
        if width < 2:
            raise ValueError(f"width must be at least 2 (the model reads width - 1 tokens and learns the next), got {width}")
        if packed and not model.packs_rows:
            raise ValueError(f"packed: {type(model).__name__} does not take packed rows (seq_idx)")
        if grad_clip is not None and not grad_clip > 0:
            raise ValueError(f"grad_clip must be positive or None, got {grad_clip!r}")
        self.params = [p for p in model.parameters() if p.requires_grad]
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        if any(id(p) not in held for p in self.params):
            raise ValueError("optimizer must hold every trainable parameter of the model")
        self.model, self.optimizer, self.device = model, optimizer, device
        self.shape, self.packed, self.grad_clip, self.autocast_dtype = (batch_size, width), packed, grad_clip, autocast_dtype
        # The static inputs; the warm-up batch has every position to learn.
        self.tokens = torch.zeros(self.shape, dtype=torch.long, device=device)
        self.mask = torch.ones(self.shape, dtype=torch.bool, device=device)
        self.seq_idx = torch.zeros(self.shape, dtype=torch.int32, device=device) if packed else None
        self.stream = torch.cuda.Stream(device)
        model.train()
        saved = self._snapshot()
        self.stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(self.stream), warnings.catch_warnings():
            # A capturable optimizer warns when it steps uncaptured, as the warm-up's must.
            warnings.filterwarnings("ignore", message="This instance was constructed with capturable=True")
            for _ in range(warmup_steps):
                self._drop_grads()
                self._body()
            self._restore(*saved)
            self._drop_grads()  # the captured backward allocates them from the graph's pool
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, stream=self.stream):
            self.loss = self._body()
        torch.cuda.current_stream(device).wait_stream(self.stream)

    def _drop_grads(self) -> None:
        for p in self.params:
            p.grad = None

    def _body(self) -> torch.Tensor:
        dtype = self.autocast_dtype or torch.bfloat16
        # cache_enabled=False: autocast's cast weights must be made inside the graph, not kept from capture.
        with torch.autocast("cuda", dtype=dtype, enabled=self.autocast_dtype is not None, cache_enabled=False):
            loss = device_masked_loss(self.model, self.tokens, self.mask, self.seq_idx)
        loss.backward()
        if self.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)  # on the device (no error_if_nonfinite)
        self.optimizer.step()
        return loss.detach()

    def _snapshot(self):
        params = [p.detach().clone() for p in self.params]
        state = {id(p): {k: v.clone() for k, v in self.optimizer.state[p].items() if isinstance(v, torch.Tensor)}
                 for p in self.params if p in self.optimizer.state}
        return params, state

    @torch.no_grad()
    def _restore(self, params, state) -> None:
        """In place (the graph reads and writes these very tensors): the parameters as before the
        warm-up, the optimizer's state as before, or zeros (Adam's initial state) where it had none."""
        for p, before in zip(self.params, params):
            p.copy_(before)
        for p in self.params:
            if p not in self.optimizer.state:
                continue
            before = state.get(id(p), {})
            for k, v in self.optimizer.state[p].items():
                if not isinstance(v, torch.Tensor):
                    continue
                if k in before:
                    v.copy_(before[k])
                else:
                    v.zero_()

    def step(self, tokens: torch.Tensor, mask: torch.Tensor, seq_idx: torch.Tensor | None = None,
             check: bool | None = None) -> torch.Tensor:
        """One training step on this batch: checks it (`check_batch`), copies it into the static
        buffers and replays the graph. Returns the batch's loss as a device tensor of its own. Shapes
        and dtypes are always checked; the values (token ids in range, something to learn) where
        that reads nothing back from the GPU (check None: a batch on the CPU), always (True: a
        synchronization for a batch on the GPU) or never (False: the caller checked them). A token id
        out of range inside the graph would be a device-side assert, which ends the CUDA context.
        Without that synchronization (and with the batch on the GPU or in pinned memory) the call
        returns without waiting for the GPU."""
        if check is None:
            check = all(not isinstance(t, torch.Tensor) or t.device.type == "cpu" for t in (tokens, mask))
        check_batch(tokens, mask, seq_idx, self.shape, self.packed, self.model.vocab_size, values=check)
        main = torch.cuda.current_stream(self.device)
        self.tokens.copy_(tokens, non_blocking=True)
        self.mask.copy_(mask, non_blocking=True)
        if self.seq_idx is not None:
            self.seq_idx.copy_(seq_idx, non_blocking=True)
        self.stream.wait_stream(main)
        with torch.cuda.stream(self.stream):
            self.graph.replay()
        main.wait_stream(self.stream)
        return self.loss.clone()

    def close(self) -> None:
        """Frees the graph and its memory pool; the parameters' gradients (which live there) become None."""
        torch.cuda.current_stream(self.device).wait_stream(self.stream)
        self._drop_grads()
        self.graph.reset()
        self.loss = self.tokens = self.mask = self.seq_idx = None
