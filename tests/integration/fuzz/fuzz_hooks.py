"""Schemathesis hooks for tests/integration/test_fuzz.py (loaded by the
``schemathesis`` CLI through ``SCHEMATHESIS_HOOKS``).

Generated bodies name the real model about half the time (so fuzzing
reaches generation, not only validation) and get a tiny completion budget (so
the run's CPU time stays bounded): every token-limit field is capped, and one is
set where a body has none. The values the generator chose stay otherwise."""

from __future__ import annotations

import os
import zlib

import schemathesis

MODEL = os.environ["MLXHOST_FUZZ_MODEL"]
CAP = 2
LIMITS = {
    "/v1/chat/completions": "max_tokens",
    "/v1/completions": "max_tokens",
    "/v1/responses": "max_output_tokens",
    "/v1/messages": "max_tokens",
}
ALSO_LIMITS = ("max_tokens", "max_completion_tokens", "max_output_tokens")


def _capped(value):
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return min(value, CAP)
    return value


@schemathesis.hook
def before_call(context, case, kwargs):
    body = case.body
    if not isinstance(body, dict):
        return
    if "model" in body and zlib.crc32(repr(sorted(body, key=str)).encode()) % 2 == 0:
        body["model"] = MODEL
    for key in ALSO_LIMITS:
        if key in body:
            body[key] = _capped(body[key])
    path = case.operation.path
    field = LIMITS.get(path)
    if field and not any(key in body for key in ALSO_LIMITS):
        body[field] = CAP
    if path in ("/api/chat", "/api/generate"):
        options = body.setdefault("options", {})
        if options is None:
            options = body["options"] = {}
        if isinstance(options, dict):
            limit = options.get("num_predict")
            ok = isinstance(limit, int) and not isinstance(limit, bool) and limit > 0
            # num_predict <= 0 means "no limit" to Ollama: never let it through.
            options["num_predict"] = min(limit, CAP) if ok else CAP
