"""The sampling knobs' bounds, as JSON-schema keywords: one source for every API's
request schema and for the config file's per-model defaults (``[models.X]``)."""

from __future__ import annotations

TEMPERATURE = {"minimum": 0, "maximum": 2}
TOP_P = {"exclusiveMinimum": 0, "maximum": 1}
TOP_K = {"minimum": 0}
MIN_P = {"minimum": 0, "maximum": 1}
PENALTY = {"minimum": -2, "maximum": 2}
REPETITION_PENALTY = {"exclusiveMinimum": 0, "maximum": 10}

# The bounds of each sampling field by its name in the domain's SamplingParams.
SAMPLING = {
    "temperature": TEMPERATURE,
    "top_p": TOP_P,
    "top_k": TOP_K,
    "min_p": MIN_P,
    "repetition_penalty": REPETITION_PENALTY,
    "presence_penalty": PENALTY,
    "frequency_penalty": PENALTY,
}
