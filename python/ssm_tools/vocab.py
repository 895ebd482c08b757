"""The token vocabulary, read from the C++ core (csrc/tools/vocab.h is the one source of truth).

Ids: control tokens ``PAD BOS EOS ANS ERR BLANK CALL CALL_END RESULT RESULT_END``, one token per
pointer command (``pointer_cmd(p, op)``, 4 pointers x read/left/right/write), ``'\\n'`` and the printable
ASCII characters (``encode``/``decode``). The protocol over these tokens is described in
``ssm_tools.env``.
"""
from __future__ import annotations

from typing import Iterable

from . import _tools

_IDS = _tools.vocab()

PAD: int = _IDS["PAD"]
BOS: int = _IDS["BOS"]
EOS: int = _IDS["EOS"]
ANS: int = _IDS["ANS"]
ERR: int = _IDS["ERR"]
BLANK: int = _IDS["BLANK"]
CALL: int = _IDS["CALL"]
CALL_END: int = _IDS["CALL_END"]
RESULT: int = _IDS["RESULT"]
RESULT_END: int = _IDS["RESULT_END"]
NEWLINE: int = _IDS["NEWLINE"]
VOCAB_SIZE: int = _IDS["VOCAB_SIZE"]
MAX_POINTERS: int = _IDS["MAX_POINTERS"]
POINTER_OPS = ("read", "left", "right", "write")  # the order of vocab.h's PointerOp

_POINTER_BASE = _IDS["POINTER_BASE"]
_CHAR_BASE = _IDS["CHAR_BASE"]
_CHAR_END = _IDS["CHAR_END"]
_NAMES = [_tools.token_name(t) for t in range(VOCAB_SIZE)]


def pointer_cmd(pointer: int, op: str) -> int:
    """The command token of `op` ("read", "left", "right", "write") on `pointer` (0-based)."""
    if not isinstance(pointer, int) or not 0 <= pointer < MAX_POINTERS:
        raise ValueError(f"pointer must be an int in 0..{MAX_POINTERS - 1}, got {pointer!r}")
    if op not in POINTER_OPS:
        raise ValueError(f"op must be one of {POINTER_OPS}, got {op!r}")
    return _POINTER_BASE + pointer * len(POINTER_OPS) + POINTER_OPS.index(op)


def is_pointer_cmd(token: int) -> bool:
    return _POINTER_BASE <= token < _POINTER_BASE + MAX_POINTERS * len(POINTER_OPS)


def is_char(token: int) -> bool:
    return token == NEWLINE or _CHAR_BASE <= token < _CHAR_END


def encode(text: str) -> list[int]:
    """Character tokens of `text` ('\\n' and printable ASCII only)."""
    out = []
    for i, c in enumerate(text):
        if c == "\n":
            out.append(NEWLINE)
        elif " " <= c <= "~":
            out.append(_CHAR_BASE + ord(c) - ord(" "))
        else:
            raise ValueError(f"text[{i}] = {c!r} has no token (only '\\n' and printable ASCII do)")
    return out


def token_name(token: int) -> str:
    """The character itself, or "[NAME]" ("[ANS]", "[p1.read]", ...); "[?id]" for unknown ids."""
    return _NAMES[token] if 0 <= token < VOCAB_SIZE else f"[?{token}]"


def decode(tokens: Iterable[int], readable: bool = True) -> str:
    """Text of `tokens`. readable=True shows control and command tokens as "[ANS]", "[p1.read]", ...;
    readable=False is the inverse of encode and raises on any non-character token."""
    tokens = [int(t) for t in tokens]
    if not readable:
        for i, t in enumerate(tokens):
            if not is_char(t):
                raise ValueError(f"tokens[{i}] = {token_name(t)} is not a character token (use readable=True)")
    return "".join(token_name(t) for t in tokens)
