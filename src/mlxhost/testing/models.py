"""Moved to :mod:`mlxhost.models.starter.builder` (the models are also the starter model
of ``mlxhost serve --model auto``). This shim keeps old imports and
``python -m mlxhost.testing.models [qwen gemma]`` working."""

from __future__ import annotations

from mlxhost.models.starter.builder import *  # noqa: F403
from mlxhost.models.starter.builder import (  # noqa: F401
    BUILD_MARKER,
    DATA_DIR,
    RECIPE_VERSION,
    TEST_MODELS,
    Log,
    StarterModelSpec,
    TestModelSpec,
    ensure_built,
    ensure_model,
    ensure_test_model,
    fetch_gemma_gguf,
    fetch_qwen_gguf,
    install_into_hf_cache,
    is_finished,
    main,
    models_cache_dir,
)

if __name__ == "__main__":
    raise SystemExit(main())
