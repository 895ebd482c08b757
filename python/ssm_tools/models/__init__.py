"""Models behind one interface: `build_model(name, vocab_size=..., **cfg)`.

    logits = model(tokens)                       # (B, T) -> (B, T, V), teacher forcing
    state = model.init_state(batch_size, device)
    logits, state = model.step(tokens, state)    # (B,) -> (B, V), one position per sequence

Names: mamba, lstm, gru, pythia (RoPE Transformer with a growing KV cache), mistral (RoPE
Transformer with sliding-window attention and a rolling cache).
`preset(name, scale)` gives the sizes of a scale: "tiny" (CPU, minutes) or "paper" (the paper's).
`save_pretrained(model, path)` / `load_pretrained(path)`: a trained model as a folder (safetensors +
config.json) that loads without our training state.
"""
from __future__ import annotations

import inspect
from functools import partial

from .base import LanguageModel
from .mamba import Mamba
from .rnn import RNN
from .transformer import Transformer

MODELS = {
    "mamba": Mamba,
    "lstm": partial(RNN, cell="lstm"),
    "gru": partial(RNN, cell="gru"),
    "pythia": partial(Transformer, window=None),
    "mistral": Transformer,
}

PRESETS = {
    "tiny": {
        "mamba": dict(d_model=64, n_layers=2, d_state=16),
        "lstm": dict(d_model=128, n_layers=1),
        "gru": dict(d_model=128, n_layers=1),
        "pythia": dict(d_model=64, n_layers=2, n_heads=4),
        "mistral": dict(d_model=64, n_layers=2, n_heads=4, window=32),
    },
    # The paper's sizes (its appendix on models and training).
    "paper": {
        "mamba": dict(d_model=768, n_layers=24, d_state=16),
        "lstm": dict(d_model=1536, n_layers=4),
        "gru": dict(d_model=1536, n_layers=4),
        "pythia": dict(d_model=768, n_layers=24, n_heads=8),
        "mistral": dict(d_model=768, n_layers=8, n_heads=8, window=512),
    },
}


def preset(name: str, scale: str) -> dict:
    if scale not in PRESETS:
        raise ValueError(f"scale must be one of {sorted(PRESETS)}, got {scale!r}")
    if name not in MODELS:
        raise ValueError(f"model must be one of {sorted(MODELS)}, got {name!r}")
    return dict(PRESETS[scale][name])


def build_model(name: str, **cfg) -> LanguageModel:
    if name not in MODELS:
        raise ValueError(f"model must be one of {sorted(MODELS)}, got {name!r}")
    options = inspect.signature(MODELS[name]).parameters
    unknown = sorted(set(cfg) - set(options))
    missing = [k for k, p in options.items() if p.default is inspect.Parameter.empty and k not in cfg]
    if unknown or missing:
        raise ValueError(f"model {name}: " + (f"no option {unknown}; its options are {sorted(options)}" if unknown
                                               else f"missing {missing}"))
    model = MODELS[name](**cfg)
    model.spec = {"model": name, "config": dict(cfg)}  # what save_pretrained records
    return model


from .pretrained import load_pretrained, save_pretrained  # noqa: E402  (it builds models with build_model)

__all__ = ["MODELS", "PRESETS", "LanguageModel", "build_model", "load_pretrained", "preset", "save_pretrained"]
