"""MLX's side of the memory governor (``runtime.memory``): the device's size,
MLX's own limits, and the counters the status page shows."""

from __future__ import annotations

import logging
import sys
from typing import Any

from mlxhost.runtime.engine import EngineMemory
from mlxhost.runtime.memory import DeviceMemory, ram_bytes

log = logging.getLogger(__name__)


class MLXMemory:
    """The limit set last, and what MLX holds now."""

    def __init__(self) -> None:
        self.limit: int | None = None

    def device(self) -> DeviceMemory | None:
        import mlx.core as mx

        if mx.metal.is_available():
            info = _device_info(mx)
            total = info.get("max_recommended_working_set_size")
            if isinstance(total, int) and total > 0:
                return DeviceMemory(total, "metal", "max_recommended_working_set_size")
        cuda = getattr(mx, "cuda", None)
        if cuda is not None and cuda.is_available():
            info = mx.device_info()
            for key in ("memory_size", "total_memory"):
                total = info.get(key)
                if isinstance(total, int) and total > 0:
                    return DeviceMemory(total, "cuda", f"device_info {key}")
        ram = ram_bytes()
        return DeviceMemory(ram, "cpu", "RAM") if ram else None

    def set_limit(self, budget: int) -> None:
        """MLX's own limits: the memory limit (MLX waits for pending work and frees
        its buffer cache before going past it), the wired limit on Metal (keeps the
        weights resident), and a buffer-cache limit (freed buffers kept for reuse:
        MLX's default is the whole memory limit, which RSS would show)."""
        import mlx.core as mx

        mx.set_memory_limit(budget)
        mx.set_cache_limit(max(budget // 8, 256 << 20))
        if mx.metal.is_available():
            recommended = _device_info(mx).get("max_recommended_working_set_size")
            wired = min(budget, recommended) if isinstance(recommended, int) else budget
            try:
                mx.set_wired_limit(wired)
            except (RuntimeError, ValueError) as exc:  # an older macOS without wiring
                log.warning("Could not set MLX's wired limit: %s", exc)
        self.limit = budget

    def report(self, weights: int, prefix_cache: int) -> EngineMemory:
        mx = sys.modules.get("mlx.core")  # counters only; never the first MLX import here
        return EngineMemory(
            weights=weights,
            prefix_cache=prefix_cache,
            active=int(mx.get_active_memory()) if mx else None,
            cache=int(mx.get_cache_memory()) if mx else None,
            peak=int(mx.get_peak_memory()) if mx else None,
            limit=self.limit,
        )


def _device_info(mx: Any) -> dict[str, Any]:
    """mx.device_info() (MLX >= 0.29), else the older mx.metal.device_info()."""
    reader = getattr(mx, "device_info", None) or mx.metal.device_info
    return dict(reader())
