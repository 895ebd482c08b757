"""ssm-tools: tool-augmented state space models.

Kernels (``selective_scan``, ``selective_state_update``), C++ tools with a batched dispatch loop
(``ssm_tools.tools``, ``ssm_tools.env``), task generators (``ssm_tools.tasks``), models
(``ssm_tools.models``), training and the length-generalization evaluation (``ssm_tools.train``).
"""
__version__ = "0.1.0"

from .ops import selective_scan, selective_state_update  # noqa: E402,F401
