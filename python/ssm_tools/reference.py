"""Plain references of the C++/CUDA code, readable rather than fast, for tests and benchmark baselines.

The kernels of ``ssm_tools.ops``, one each in PyTorch: they loop over time and keep every state, so
the kernels are compared against them, gradients included via autograd. Same signatures and return
values as the ops; they compute in float32 (float64 for float64 ``u``/state), like the kernels.

The dispatch loop (``ssm_tools.env.replay``) in plain Python, one episode at a time:
``ReferenceParser`` and ``replay_reference``.
"""
from __future__ import annotations

from collections import deque
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from . import _tools
from .env import Transcript
from .tools import Tool
from .vocab import (ANS, CALL, CALL_END, EOS, ERR, PAD, POINTER_OPS, RESULT, RESULT_END, VOCAB_SIZE, encode, is_char,
                    is_pointer_cmd, pointer_cmd, token_name)


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _per_channel(BC: torch.Tensor, dim: int, seqlen: int) -> torch.Tensor:
    """B or C per channel and position: (dim, seqlen, dstate) if constant, else (batch, dim, seqlen,
    dstate) with the groups expanded."""
    if BC.dim() == 2:
        return BC[:, None, :].expand(dim, seqlen, BC.shape[1])
    if BC.dim() == 3:  # (batch, dstate, seqlen): one group
        BC = BC.unsqueeze(1)
    return BC.repeat_interleave(dim // BC.shape[1], dim=1).transpose(-1, -2)


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_last_state=False, seq_idx=None):
    """x_t = exp(delta_t A) x_{t-1} + delta_t B_t u_t;  y_t = <C_t, x_t> + D u_t;  out = y silu(z).

    u, delta, z: (batch, dim, seqlen); A: (dim, dstate); B, C: (dim, dstate), (batch, dstate, seqlen)
    or (batch, groups, dstate, seqlen); D, delta_bias: (dim,). Returns out (u's dtype) and, if
    ``return_last_state``, the final state (batch, dim, dstate) in the compute dtype. Packed rows
    (``seq_idx``, (batch, seqlen)) run sequence by sequence, each as its own one-row scan.
    """
    if seq_idx is not None:
        return _packed_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, seq_idx)
    out_dtype, dtype = u.dtype, _compute_dtype(u)
    u, delta, A = u.to(dtype), delta.to(dtype), A.to(dtype)
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    batch, dim, seqlen = u.shape
    B, C = _per_channel(B.to(dtype), dim, seqlen), _per_channel(C.to(dtype), dim, seqlen)
    decay = torch.exp(delta[..., None] * A[:, None, :])  # (batch, dim, seqlen, dstate)
    inject = (delta * u)[..., None] * B
    x = u.new_zeros(batch, dim, A.shape[1])
    ys = []
    # unbind, not indexing per step: the backward of unbind is one stack, that of x[:, :, t] a
    # full-size scatter per step.
    for decay_t, inject_t, C_t in zip(decay.unbind(2), inject.unbind(2), C.unbind(-2)):
        x = decay_t * x + inject_t
        ys.append((x * C_t).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + D.to(dtype)[:, None] * u
    if z is not None:
        y = y * F.silu(z.to(dtype))
    out = y.to(out_dtype)
    return (out, x) if return_last_state else out


def sequences(seq_idx_row) -> list[tuple[int, int]]:
    """The (start, end) of every sequence (run of equal values) of one row of a sequence index."""
    ids = seq_idx_row.tolist()
    starts = [0] + [t for t in range(1, len(ids)) if ids[t] != ids[t - 1]] + [len(ids)]
    return list(zip(starts, starts[1:]))


def _packed_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, seq_idx):
    """selective_scan_ref of every sequence (run of equal seq_idx values) of every row separately."""
    def piece(t, b, s0, s1):  # a per-position tensor's slice of one sequence, kept as one row
        return t if t is None or t.dim() == 2 else t[b:b + 1, ..., s0:s1]

    outs, lasts = [], []
    for b in range(u.shape[0]):
        row = [selective_scan_ref(piece(u, b, s0, s1), piece(delta, b, s0, s1), A, piece(B, b, s0, s1),
                                  piece(C, b, s0, s1), D, piece(z, b, s0, s1), delta_bias, delta_softplus,
                                  return_last_state=True)
               for s0, s1 in sequences(seq_idx[b])]
        outs.append(torch.cat([out for out, _ in row], dim=-1))
        lasts.append(row[-1][1])
    out = torch.cat(outs)
    return (out, torch.cat(lasts)) if return_last_state else out


def selective_state_update_ref(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    """One decode step: updates ``state`` (batch, dim, dstate) in place, returns y (batch, dim).

    x, dt, z: (batch, dim); B, C: (batch, dstate) or (batch, groups, dstate); A: (dim, dstate);
    D, dt_bias: (dim,). Computes in the state's dtype.
    """
    dtype = state.dtype
    dim = x.shape[1]
    dt = dt.to(dtype)
    if dt_bias is not None:
        dt = dt + dt_bias.to(dtype)
    if dt_softplus:
        dt = F.softplus(dt)
    B, C = (t.to(dtype).reshape(t.shape[0], -1, t.shape[-1]) for t in (B, C))
    B, C = (t.repeat_interleave(dim // t.shape[1], dim=1) for t in (B, C))
    x_ = x.to(dtype)
    new_state = torch.exp(dt[..., None] * A.to(dtype)) * state + (dt * x_)[..., None] * B
    state.copy_(new_state)
    y = (new_state * C).sum(-1)
    if D is not None:
        y = y + D.to(dtype) * x_
    if z is not None:
        y = y * F.silu(z.to(dtype))
    return y.to(x.dtype)


class ReferenceParser:
    """The protocol of one episode in plain Python: the reference the C++ ProtocolParser is tested
    against, and the parser of the benchmark's pure-Python baseline loop."""

    def __init__(self, tools: list[Tool], max_call_tokens: int, max_answer_tokens: int):
        self.tools, self.max_call_tokens, self.max_answer_tokens = tools, max_call_tokens, max_answer_tokens
        self.state, self.call, self.pending_write = "text", [], 0

    def reset(self, prompt: list[int], seed: int) -> None:
        for j, tool in enumerate(self.tools):
            tool.reset(_tools.mix_seed(seed, j))
        self.state, self.call = "text", []
        for t in prompt:
            self._observe(t)

    def _observe(self, t: int) -> None:
        for tool in self.tools:
            tool.observe(t)

    def _route(self, command: list[int], text: bool) -> list[int]:
        """The forced answer to `command`. A text call's answer is wrapped in [RESULT]..[/RESULT] and
        its errors carry a message; a pointer command's error is the lone [ERR]."""
        tool = next((tool for tool in self.tools if tool.accepts(command)), None)
        if tool is None:
            word = "".join(map(token_name, command)).split(" ")[0][:32]
            return self._text_answer([ERR] + encode(f"unknown command: {word}")) if text else [ERR]
        out = tool.call(command)
        if len(out) > self.max_answer_tokens or any(not 0 <= t < VOCAB_SIZE for t in out):
            return self._text_answer([ERR] + encode(f"invalid answer from tool {tool.name()}")) if text else [ERR]
        return self._text_answer(out) if text else out

    def _text_answer(self, body: list[int]) -> list[int]:
        return [RESULT, *body, RESULT_END]

    def feed(self, t: int) -> tuple[list[int], bool]:
        """(forced answer, episode ended) for one generated token."""
        if t == EOS:
            self._observe(t)
            self.state = "text"
            return [], True
        if self.state == "symbol":
            self.state = "text"
            return self._route([self.pending_write, t], text=False), False
        if self.state == "call":
            if t == CALL_END:
                self.state = "text"
                return self._route(self.call, text=True), False
            if not is_char(t):
                self.state = "text"
                return self._text_answer([ERR] + encode(f"malformed call: {token_name(t)} inside [CALL]")), False
            if len(self.call) >= self.max_call_tokens:
                self.state = "text"
                return self._text_answer([ERR] + encode(f"call too long (max {self.max_call_tokens} tokens)")), False
            self.call.append(t)
            return [], False
        if is_pointer_cmd(t) and (t - pointer_cmd(0, "read")) % len(POINTER_OPS) == POINTER_OPS.index("write"):
            self.state, self.pending_write = "symbol", t
            return [], False
        if is_pointer_cmd(t):
            return self._route([t], text=False), False
        if t == CALL:
            self.state, self.call = "call", []
            return [], False
        if is_char(t) or t in (ANS, EOS):
            self._observe(t)
            return [], False
        return [ERR], False


def replay_reference(make_tools: Callable[[], list[Tool]], prompts: Sequence[Sequence[int]],
                     model_tokens: Sequence[Sequence[int]], seed: int = 0, max_len: int = 1 << 16,
                     max_call_tokens: int = 4096, max_answer_tokens: int = 1 << 16) -> Transcript:
    """``replay`` written plainly in Python, one episode at a time (``make_tools()`` gives one
    episode's tools): the reference for tests and the baseline of benchmarks/bench_dispatch.py."""
    episodes = []
    for i, (prompt, script) in enumerate(zip(prompts, model_tokens)):
        parser = ReferenceParser(make_tools(), max_call_tokens, max_answer_tokens)
        parser.reset(list(prompt), _tools.mix_seed(seed, i))
        tokens, mask, queue, used, done = [prompt[0]], [False], deque(prompt[1:]), 0, max_len <= 1
        while not done:
            if queue:
                tokens.append(queue.popleft())
                mask.append(False)
            elif used < len(script):
                t = script[used]
                used += 1
                answer, done = parser.feed(t)
                queue.extend(answer)
                tokens.append(t)
                mask.append(True)
            else:
                break
            done = done or len(tokens) >= max_len
        episodes.append((tokens, mask, done))
    width = max(len(e[0]) for e in episodes)
    out_tokens = torch.full((len(episodes), width), PAD, dtype=torch.long)
    out_mask = torch.zeros((len(episodes), width), dtype=torch.bool)
    for i, (tokens, mask, _) in enumerate(episodes):
        out_tokens[i, :len(tokens)] = torch.tensor(tokens)
        out_mask[i, :len(mask)] = torch.tensor(mask)
    return Transcript(out_tokens, out_mask, torch.tensor([len(e[0]) for e in episodes]),
                      torch.tensor([e[2] for e in episodes]))


def causal_conv1d_ref(x, weight, bias=None, silu=False, seq_idx=None):
    """Causal depthwise conv1d through F.conv1d: x (batch, dim, seqlen), weight (dim, width), bias
    (dim,); out[t] = act(bias + sum_k weight[k] x[t - width + 1 + k]), act = SiLU if ``silu``.
    Packed rows (``seq_idx``, (batch, seqlen)): every sequence convolved as its own one-row input."""
    if seq_idx is not None:
        return torch.cat([torch.cat([causal_conv1d_ref(x[b:b + 1, :, s0:s1], weight, bias, silu)
                                     for s0, s1 in sequences(seq_idx[b])], dim=-1) for b in range(x.shape[0])])
    dtype = _compute_dtype(x)
    width = weight.shape[1]
    out = F.conv1d(x.to(dtype), weight.to(dtype)[:, None, :], None if bias is None else bias.to(dtype),
                   padding=width - 1, groups=x.shape[1])[..., :x.shape[2]]
    return (F.silu(out) if silu else out).to(x.dtype)


def causal_conv1d_update_ref(conv_state, x, weight, bias=None, silu=False):
    """One decode position: conv_state (batch, dim, width) shifts left in place and takes x
    (batch, dim); returns the conv's output there (batch, dim)."""
    dtype = conv_state.dtype
    conv_state.copy_(torch.cat([conv_state[..., 1:], x.to(dtype)[..., None]], dim=-1))
    out = (conv_state * weight.to(dtype)).sum(-1)
    if bias is not None:
        out = out + bias.to(dtype)
    return (F.silu(out) if silu else out).to(x.dtype)


def mamba_state_update_ref(state, x, xdbl, dt_weight, dt_bias, A_log, D=None, z=None):
    """The Mamba block's SSM decode step from x_proj's output xdbl = [dt_low | B | C]."""
    dstate = A_log.shape[1]
    dt_low, B, C = xdbl.split([dt_weight.shape[1], dstate, dstate], dim=-1)
    dt = dt_low.to(state.dtype) @ dt_weight.to(state.dtype).t()
    return selective_state_update_ref(state, x, dt, -torch.exp(A_log.to(state.dtype)), B, C, D, z, dt_bias,
                                      dt_softplus=True)


def add_rms_norm_ref(x, residual, weight, eps=None, out_dtype=None):
    """ops.add_rms_norm: (x + residual, RMSNorm(x + residual) * weight in out_dtype), in x's dtype."""
    s = x if residual is None else x + residual.to(x.dtype)
    eps = torch.finfo(x.dtype).eps if eps is None else eps
    out = s * torch.rsqrt(s.pow(2).mean(-1, keepdim=True) + eps) * weight.to(x.dtype)
    return s, out.to(out_dtype or x.dtype)


def mamba_mixer_ref(mixer, h, seq_idx=None):
    """A ``models.mamba.MambaMixer``'s forward written plainly, token-major, with nn layers, F.conv1d
    and selective_scan_ref (autograd differentiates it): what the fused forward and backward are
    tested against, from the same parameters. h: (batch, seqlen, d_model); seq_idx: packed rows."""
    x, z = mixer.in_proj(h).transpose(1, 2).chunk(2, dim=1)
    x = causal_conv1d_ref(x, mixer.conv1d.weight[:, 0, :], mixer.conv1d.bias, silu=True, seq_idx=seq_idx)
    dt, B, C = mixer.x_proj(x.transpose(1, 2)).split([mixer.dt_rank, mixer.d_state, mixer.d_state], dim=-1)
    dt = F.linear(dt, mixer.dt_proj.weight)
    y = selective_scan_ref(x, dt.transpose(1, 2), -torch.exp(mixer.A_log), B.transpose(1, 2), C.transpose(1, 2),
                           mixer.D, z, delta_bias=mixer.dt_proj.bias, delta_softplus=True, seq_idx=seq_idx)
    return mixer.out_proj(y.transpose(1, 2))
