"""What tests send the SmolLM2 test model (``TEST_MODELS["smollm2"]``).

``NEVER_STOP`` is a ``logit_bias`` for requests that must run to their
``max_tokens`` (a stream still running when another request joins, a long
generation to cancel): it bans SmolLM2's end of text (0) and end of turn
(``<|im_end|>``, 2), since the 135M model may end a long count after a few tokens.
"""

from __future__ import annotations

NEVER_STOP = {"0": -100, "2": -100}
