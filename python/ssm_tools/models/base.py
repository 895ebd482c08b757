"""What every model shares: token embedding, final norm, LM head and input validation.

A model is a stack of sequence mixers between an embedding and a head. Subclasses implement the
body twice: `body(x)` over a whole (B, T, d) sequence (training, teacher forcing) and
`body_step(x, state)` for one (B, d) position (interactive decoding), and `init_state`. The two
must agree exactly; tests/test_models.py checks that for every model.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


def check_tokens(tokens: torch.Tensor, vocab_size: int, ndim: int, name: str = "tokens") -> None:
    shape = "(batch, seqlen)" if ndim == 2 else "(batch,)"
    if not isinstance(tokens, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {shape}, got {type(tokens).__name__}")
    if tokens.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{name} must be an integer tensor (int64 or int32), got {tokens.dtype}")
    if tokens.dim() != ndim or tokens.shape[0] == 0 or (ndim == 2 and tokens.shape[1] == 0):
        raise ValueError(f"{name} must have non-empty shape {shape}, got {tuple(tokens.shape)}")
    lo, hi = (int(v) for v in torch.aminmax(tokens))  # one pass (a CUDA tensor: one sync per value)
    if lo < 0 or hi >= vocab_size:
        raise ValueError(f"{name} must hold ids in [0, {vocab_size}), got values in [{lo}, {hi}]")


class LanguageModel(nn.Module):
    """Embedding -> body -> RMSNorm -> head (optionally tied to the embedding)."""

    def __init__(self, vocab_size: int, d_model: int, tie_embeddings: bool = True):
        super().__init__()
        check_positive(vocab_size=vocab_size, d_model=d_model)
        self.vocab_size, self.d_model = vocab_size, d_model
        self.embedding = nn.Embedding(vocab_size, d_model)
        # GPT/mamba_ssm scale: N(0, 1) embeddings tied to the head start with huge logits.
        nn.init.normal_(self.embedding.weight, std=0.02)
        self.norm_f = nn.RMSNorm(d_model)
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)
        if tie_embeddings:
            self.lm_head.weight = self.embedding.weight

    def forward(self, tokens: torch.Tensor, seq_idx: torch.Tensor | None = None) -> torch.Tensor:
        """tokens (B, T) -> logits (B, T, vocab_size). Packed rows (models with `packs_rows`):
        seq_idx (B, T) int32 names each position's sequence; every sequence is computed as if it
        had its own row (a sequence starts where seq_idx changes)."""
        check_tokens(tokens, self.vocab_size, 2)
        return self.forward_unchecked(tokens, seq_idx)

    def forward_unchecked(self, tokens: torch.Tensor, seq_idx: torch.Tensor | None = None) -> torch.Tensor:
        """`forward` without the token check, which reads the tokens back to the host: for callers
        that check the tokens on the host themselves (a training step captured as a CUDA graph,
        graphed_step.py)."""
        if seq_idx is not None and not self.packs_rows:
            raise ValueError(f"{type(self).__name__} does not take packed rows (seq_idx); pad the batch instead")
        return self.lm_head(self.head_input(self.embedding(tokens.long()), seq_idx))

    def head_input(self, x: torch.Tensor, seq_idx: torch.Tensor | None = None) -> torch.Tensor:
        """norm_f(body(x)): the head's input over a whole sequence (a model may fold its body's last
        step into the norm)."""
        return self.norm_f(self.body(x) if seq_idx is None else self.body(x, seq_idx))

    def step(self, tokens: torch.Tensor, state):
        """One token per sequence: tokens (B,) -> (logits (B, vocab_size), state).

        The state returned may share storage with the one passed in (it is updated in place where
        that is cheaper); keep using the returned one.
        """
        check_tokens(tokens, self.vocab_size, 1)
        return self.step_unchecked(tokens, state)

    def step_unchecked(self, tokens: torch.Tensor, state):
        """`step` without the input check, which reads the tokens back to the host: for callers that
        check the tokens on the host themselves (a decode loop replaying a captured CUDA graph)."""
        h, state = self.body_step(self.embedding(tokens.long()), state)
        return self.lm_head(self.norm_f(h)), state

    def body(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def body_step(self, x: torch.Tensor, state):
        raise NotImplementedError

    def init_state(self, batch_size: int, device=None):
        raise NotImplementedError

    # True when `body` takes seq_idx (packed rows of several sequences).
    packs_rows = False

    def matmul_layers(self) -> list[nn.Module]:
        """The body's matmul layers that `decode_copy` casts; [] for a model that decodes in float32
        only."""
        return []

    def decode_copy(self, dtype: torch.dtype) -> "LanguageModel":
        """A copy for decoding whose body matmuls (`matmul_layers`) hold `dtype` weights, cast once:
        the models train under bf16 autocast, whose matmuls round their inputs and weights to bfloat16
        the same way. The embedding, norms, head, recurrent states and residual stream stay in the
        parameters' dtype. The copy shares nothing with the model (deep copy, eval mode)."""
        if not self.matmul_layers():
            raise ValueError(f"{type(self).__name__} decodes in its parameters' dtype only, not {dtype}")
        twin = copy.deepcopy(self).eval()
        for layer in twin.matmul_layers():
            layer.to(dtype)
        return twin

    # True when every state tensor keeps its shape from step to step (recurrent models), so a decode
    # step can be captured once as a CUDA graph; a growing KV cache cannot.
    fixed_size_state = False

    def _state_tensor(self, *shape: int, device=None) -> torch.Tensor:
        """A zero state tensor in the parameters' dtype (float64 models decode in float64)."""
        w = self.embedding.weight
        return torch.zeros(*shape, dtype=w.dtype, device=w.device if device is None else device)


def check_positive(**values) -> None:
    for arg, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{arg} must be a positive int, got {value!r}")
