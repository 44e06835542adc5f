"""The ``--max-batch auto`` measurement, remembered on disk.

On a GPU the batch size is measured at load (``batch.choose_batch_size``: a few
decode steps per size up to 32); on an H100 with an empty kernel cache that took
47 s of a 189 s start. Its answer depends only on the model, the weights policy
in force, the device and the MLX stack, so it is measured once per such key and
kept as one small JSON file per key; later starts read it (milliseconds).

A changed key (other weights on disk, another policy, card, MLX or mlx-lm
version, another rule) is another file, so nothing stale is ever read; a file
that cannot be read is measured again and rewritten. Deleting the folder
forgets every measurement. :class:`BatchSizer` makes the choice for a loaded
model: remembered, else measured and kept.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import attrs

from mlxhost.core.types import ModelInfo
from mlxhost.engine import batch, kernels
from mlxhost.engine.loading import LoadedModel
from mlxhost.engine.prefix.disk import model_identity

log = logging.getLogger(__name__)


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


class BatchSizer:
    """``--max-batch auto`` for the model just loaded: measured on a GPU (a few
    decode steps per size, after the warm-up compiled the batch kernels), kept
    for later starts. Nothing is measured for vision models (they run alone), in
    a distributed group (a measurement on rank 0 alone would desync the ranks)
    or on CPU."""

    def __init__(self, folder: Path | str | None = None) -> None:
        self.probes = BatchProbeCache(folder)

    @staticmethod
    def unmeasured(model: LoadedModel, grouped: bool) -> tuple[int, str] | None:
        """(size, why) where nothing is measured; None: measure."""
        if model.is_vlm:
            return batch.AUTO_BATCH, "auto: vision models run alone"
        if grouped:
            return batch.AUTO_BATCH, f"auto: {batch.AUTO_BATCH} in a distributed group"
        if kernels.backend() == "cpu":
            return batch.AUTO_BATCH, f"auto: {batch.AUTO_BATCH} on CPU"
        return None

    def remembered(self, info: ModelInfo, model: LoadedModel, grouped: bool) -> tuple[int, str] | None:
        """The size an earlier start measured for this model, policy, device and stack."""
        key = self.key(info, model, grouped)
        found = self.probes.get(key) if key is not None else None
        if found is None:
            return None
        return found.size, f"auto, measured {found.measured_at}: {found.rates} tok/s"

    def measure(self, info: ModelInfo, model: LoadedModel, grouped: bool) -> tuple[int, str]:
        started = time.perf_counter()
        try:
            size, rates = batch.choose_batch_size(
                lambda n: batch.decode_step_seconds(model.model, n), cap=batch.AUTO_BATCH_CAP
            )
        except Exception:  # a failed measurement must not fail the load
            log.exception("Measuring batch sizes failed")
            return batch.AUTO_BATCH, f"auto: {batch.AUTO_BATCH} (the measurement failed)"
        seconds = time.perf_counter() - started
        key = self.key(info, model, grouped)
        kept = self.probes.put(key, size, rates) if key is not None else None
        if kept is not None:
            log.info("Batch size %d measured in %.1fs, kept in %s for later starts", size, seconds, kept)
        return size, f"auto, measured in {seconds:.1f}s: {rates} tok/s"

    @staticmethod
    def key(info: ModelInfo, model: LoadedModel, grouped: bool) -> dict[str, str] | None:
        """What the measurement depends on: the model's files, the weights policy in
        force, the device, the MLX stack and the rule; None where nothing is measured."""
        import mlx.core as mx

        backend = kernels.backend()
        if model.is_vlm or grouped or backend == "cpu" or info.path is None:
            return None
        choice = model.kernels
        device = mx.device_info()
        return model_identity(
            info.id, info.path,
            weights_policy=str(choice.weights),
            flat_qmm=str(choice.flat_qmm),
            pad_rows=str(choice.pad_rows),
            device=f"{backend}: {device.get('device_name', '?')}, {device.get('architecture', '?')}",
            mlx=importlib.metadata.version("mlx"),
            mlx_lm=importlib.metadata.version("mlx-lm"),
            rule=f"cap {batch.AUTO_BATCH_CAP}, gain {batch.AUTO_BATCH_GAIN}",
        )


def _canonical(key: Mapping[str, str]) -> str:
    return json.dumps(dict(key), sort_keys=True, separators=(",", ":"))
