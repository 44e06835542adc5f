"""Progress lines of every benchmark, timestamped, flushed at once."""

from __future__ import annotations

import time


def say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)
