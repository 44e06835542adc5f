"""The ``--max-batch auto`` measurement, remembered on disk.

On a GPU the batch size is measured at load (``batch.choose_batch_size``: a few
decode steps per size up to 32); on an H100 with an empty kernel cache that took
47 s of a 189 s start. Its answer depends only on the model, the weights policy
in force, the device and the MLX stack, so it is measured once per such key and
kept as one small JSON file per key; later starts read it (milliseconds).

A changed key (other weights on disk, another policy, card, MLX or mlx-lm
version, another rule) is another file, so nothing stale is ever read; a file
that cannot be read is measured again and rewritten. Deleting the folder
forgets every measurement.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import attrs


def default_folder() -> Path:
    """``~/.cache/mlxhost/batch-probe`` (beside the kernel cache, ``mlx-ptx``)."""
    return Path.home() / ".cache" / "mlxhost" / "batch-probe"


@attrs.frozen
class Remembered:
    size: int
    rates: str  # the rates the measurement saw, as ``choose_batch_size`` gives them
    measured_at: str  # ISO time of the measurement


class BatchProbeCache:
    """``get(key)`` / ``put(key, size, rates)``, ``key`` a mapping of strings."""

    def __init__(self, folder: Path | str | None = None) -> None:
        self.folder = Path(folder) if folder is not None else default_folder()

    def path(self, key: Mapping[str, str]) -> Path:
        digest = hashlib.sha256(_canonical(key).encode()).hexdigest()[:32]
        return self.folder / f"{digest}.json"

    def get(self, key: Mapping[str, str]) -> Remembered | None:
        """The measurement kept for ``key``; None if there is none (or it is unreadable)."""
        try:
            stored = json.loads(self.path(key).read_text())
            if stored["key"] != dict(key):  # a hash collision, or a hand-edited file
                return None
            size = stored["size"]
            if not isinstance(size, int) or size < 1:
                return None
            return Remembered(size, str(stored["rates"]), str(stored["measured_at"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def put(self, key: Mapping[str, str], size: int, rates: str) -> Path | None:
        """Keep a measurement (written whole, then renamed into place); None if the
        folder is not writable (the server goes on: it measures again next start)."""
        target = self.path(key)
        record = {
            "key": dict(key),
            "size": size,
            "rates": rates,
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(prefix=".probe-", dir=self.folder)
            with os.fdopen(handle, "w") as out:
                json.dump(record, out, indent=1, sort_keys=True)
            os.replace(temporary, target)
        except OSError:
            return None
        return target


def _canonical(key: Mapping[str, str]) -> str:
    return json.dumps(dict(key), sort_keys=True, separators=(",", ":"))
