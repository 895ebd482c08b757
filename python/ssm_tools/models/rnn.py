"""LSTM and GRU language models (the paper's recurrent baselines: a fixed-size state, like Mamba)."""
from __future__ import annotations

import torch
from torch import nn

from .base import LanguageModel, check_positive

CELLS = {"lstm": nn.LSTM, "gru": nn.GRU}
# cuDNN's RNN kernels refuse longer sequences (CUDNN_STATUS_NOT_SUPPORTED on 90k- and 109k-step
# episodes): longer inputs run in pieces of this many steps, the state carried across (the same result).
MAX_STEPS_PER_CALL = 1 << 15


class RNN(LanguageModel):
    fixed_size_state = True

    def __init__(self, vocab_size: int, cell: str = "lstm", d_model: int = 64, n_layers: int = 2,
                 tie_embeddings: bool = True):
        super().__init__(vocab_size, d_model, tie_embeddings)
        if cell not in CELLS:
            raise ValueError(f"cell must be one of {sorted(CELLS)}, got {cell!r}")
        check_positive(n_layers=n_layers)
        self.cell, self.n_layers = cell, n_layers
        self.rnn = CELLS[cell](d_model, d_model, n_layers, batch_first=True)

    def body(self, x):
        if x.shape[1] <= MAX_STEPS_PER_CALL:
            return self.rnn(x)[0]
        outs, state = [], None
        for piece in x.split(MAX_STEPS_PER_CALL, dim=1):
            out, state = self.rnn(piece, state)
            outs.append(out)
        return torch.cat(outs, dim=1)

    def body_step(self, x, state):
        out, state = self.rnn(x.unsqueeze(1), state)
        return out[:, 0], state

    def init_state(self, batch_size: int, device=None):
        check_positive(batch_size=batch_size)
        h = self._state_tensor(self.n_layers, batch_size, self.d_model, device=device)
        return (h, h.clone()) if self.cell == "lstm" else h
