"""Keep torch out of serving processes.

transformers imports torch whenever it is installed, and mlx-vlm imports more
of it; serving never runs it (MLX runs the model, the tokenizers are Rust, the
image processors use PIL and numpy). The ``gguf`` extra installs torch only for
``mlxhost convert-gguf``, yet with it installed every server start imported
torch: on 2 CPU cores ``import mlx_lm.utils, mlx_vlm`` took 7.3 s with torch
and 2.4 s without. Serving without torch is the default install's setup.
"""

from __future__ import annotations

import sys


def hide_torch() -> bool:
    """Make ``import torch`` fail in this process (transformers then sees no torch).

    A ``None`` entry in ``sys.modules`` is Python's documented way to block an
    import: ``importlib.util.find_spec`` returns None for it and ``import``
    raises ImportError, which every optional-torch library handles. Does
    nothing once torch is imported. Returns whether torch is hidden now.
    """
    if sys.modules.get("torch") is not None:
        return False
    sys.modules["torch"] = None  # type: ignore[assignment]
    return True
