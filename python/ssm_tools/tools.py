"""Tools of an episode, implemented in C++ (csrc/tools/) and bound by ssm_tools._tools.

``Tool`` is the interface (subclass it in Python for a new tool: name(), reset(seed), observe(token),
accepts(command), call(command) -> list[int], dump()); ``PointerMemory``, ``TapeMemory``,
``SearchMemory``, ``Calculator`` and ``CodeSandbox`` are the C++ tools. A command is a list of token ids:
one pointer-command token (a write: the command and its symbol), or the tokens between [CALL] and
[/CALL]. See ``ssm_tools.env`` for how the dispatch loop uses them.
"""
from ._tools import (  # noqa: F401
    Calculator,
    CellMemory,
    CodeSandbox,
    PointerMemory,
    SearchMemory,
    TapeMemory,
    Tool,
    registered_tools,
)

__all__ = ["Tool", "CellMemory", "PointerMemory", "TapeMemory", "SearchMemory", "Calculator", "CodeSandbox",
           "registered_tools"]
