"""openai-harmony's vocabulary file for the tests, built once per machine.

openai-harmony loads ``o200k_base.tiktoken`` from OpenAI's blob storage, or
from the folder named by ``TIKTOKEN_ENCODINGS_BASE``; the test machines reach
PyPI only. The ``litellm`` wheel on PyPI carries the same file (in its tiktoken
cache, named by the SHA-1 of its download URL). The wheel is downloaded (never
installed), the one member copied out and checked against the file's published
SHA-256, the one openai-harmony itself checks.

    python -m mlxhost.testing.harmony_vocab
"""

from __future__ import annotations

import hashlib
import shutil
import zipfile
from pathlib import Path

from mlxhost.models.starter.builder import Log, _pip_download, ensure_built, models_cache_dir

LITELLM_PACKAGE = "litellm==1.110.2"
MEMBER = "litellm/litellm_core_utils/tokenizers/fb374d419588a4632f3f557e76b4b70aebbca790"
O200K_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
FILE_NAME = "o200k_base.tiktoken"


def ensure_o200k(log: Log = print) -> Path:
    """The folder holding ``o200k_base.tiktoken`` (set ``TIKTOKEN_ENCODINGS_BASE`` to it)."""
    return ensure_built(models_cache_dir(), "o200k-base-vocab", lambda out: _build(out, log), log)


def _build(out: Path, log: Log) -> None:
    downloads = out.parent / "downloads"
    downloads.mkdir(parents=True)
    (wheel,) = _pip_download([LITELLM_PACKAGE], downloads, deps=False, log=log)
    with zipfile.ZipFile(wheel) as archive:
        data = archive.read(MEMBER)
    digest = hashlib.sha256(data).hexdigest()
    if digest != O200K_SHA256:
        raise RuntimeError(f"{LITELLM_PACKAGE} holds a different o200k_base ({digest})")
    out.mkdir(parents=True, exist_ok=True)
    (out / FILE_NAME).write_bytes(data)
    shutil.rmtree(downloads)


if __name__ == "__main__":
    print(ensure_o200k())
