"""The prefix cache as the engine uses it: fetch → snapshot → store.

Every request goes through the prefix cache (``engine.prefix.cache``): the
nearest cached prefix of the prompt is copied out and only the rest is
prefilled. Two caches are stored per request: a snapshot at the end of the
prompt (all but its last token, taken before generation) and the cache after
the reply (prompt + generated tokens, which the next turn repeats). The
snapshot matters for caches that cannot be cut back (sliding-window layers
past their window): when the next prompt does not repeat the reply token for
token, the snapshot is still an exact prefix of it.

Everything the engine does with the cache is here, so changing prefix caching
is one module: the keys of text and image prompts, the RAM and disk tiers, the
image-prompt reuse rules (``engine.prefix.vision``), and the agreement of a
distributed group's ranks on what they all have.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Iterator
from typing import Any, cast

import attrs

from mlxhost.core.types import ModelInfo
from mlxhost.engine.loading import LoadedModel
from mlxhost.engine.prefix import vision as vision_prefix
from mlxhost.engine.prefix.cache import MLXCacheAdapter, PrefixCache, has_window, key_with_images
from mlxhost.engine.prefix.disk import DiskTier, MLXCodec, model_identity
from mlxhost.runtime.engine import PreparedPrompt
from mlxhost.runtime.kv_quant import quantized

log = logging.getLogger(__name__)

# The disk tier's budget when --prefix-cache-dir is given without --prefix-cache-disk-mib.
DEFAULT_DISK_BYTES = 8 << 30


@attrs.define(eq=False)
class PromptPrefix:
    """One request's fetch: the cache to extend, the prompt tokens it already holds,
    extra generate kwargs and the pixel values of the images still to encode; the
    step loop adds snapshots (``snapshot``), ``store`` keeps them at the end."""

    caching: PrefixCaching
    model: LoadedModel
    key: tuple[int, ...]
    extra_key: bytes | None
    cache: list[Any]
    reused: int
    vlm_kwargs: dict[str, Any]
    pixel_values: Any = None
    snapshots: list[tuple[int, Any]] = attrs.Factory(list)  # (prompt tokens it holds, copy)

    @property
    def snapshot(self) -> Any:
        """``snapshot(held, cache)`` for the step loop; None when nothing is cached."""
        return self._keep_snapshot if self.caching.cache is not None else None

    def _keep_snapshot(self, held: int, cache: list[Any]) -> None:
        copy = self.caching.snapshot(cache)
        if copy is not None:
            self.snapshots.append((held, copy))

    def store(self, generated: list[int], failed: bool) -> None:
        """Keep the after-reply cache and the snapshots it does not cover; after a
        failure the cache may hold half a step: only the snapshots."""
        pc = self.caching.cache
        if pc is None:
            return
        try:
            import mlx.core as mx

            adapter, cache, key = pc.adapter, self.cache, self.key
            after: tuple[tuple[int, ...], list[Any]] | None = None
            if not failed:
                mx.eval([c.state for c in cache])
                fed = (*key, *generated)
                held = adapter.length(cache)
                # The cache holds the prompt and every token generate_step yielded
                # (each is fed before it is yielded); check rather than assume.
                if 0 < held <= len(fed):
                    after = (fed[:held], cache)
                else:
                    log.warning("Prefix cache: cache holds %d tokens, %d were fed", held, len(fed))
            # A trimmable after-reply cache covers the snapshot; otherwise keep both.
            if after is None or not adapter.can_trim(cache):
                for length, snapshot in self.snapshots:
                    pc.insert(self.model.id, key[:length], snapshot, extra_key=self.extra_key)
            if after is not None:
                pc.insert(self.model.id, after[0], after[1], extra_key=self.extra_key)
        except Exception:  # never fail a request over caching
            log.exception("Prefix cache: storing failed")


class PrefixCaching:
    """The RAM tier (None when disabled), the disk tier (entries the RAM tier lets
    go of; None when off), and a distributed group's agreement. Only touched on
    the worker thread (the stats are safe to read from anywhere); tests and
    benchmarks may swap ``cache``."""

    def __init__(
        self, max_bytes: int, disk_dir: str | None = None, disk_bytes: int | None = None, sharder: Any = None
    ) -> None:
        self.cache: PrefixCache | None = (
            PrefixCache(MLXCacheAdapter(), max_bytes=max_bytes, spill=self._spill) if max_bytes > 0 else None
        )
        self.disk: DiskTier | None = None
        if disk_dir and self.cache is not None:
            budget = DEFAULT_DISK_BYTES if disk_bytes is None else disk_bytes
            self.disk = DiskTier(disk_dir, budget, MLXCodec(), self.cache.adapter)
        self._sharder = sharder  # its ``group``, once there is one, must agree on every hit

    # -- the model's lifetime ----------------------------------------------------
    def activate(self, model: LoadedModel, info: ModelInfo) -> None:
        if self.disk is not None:
            self.disk.activate(model.id, self.identity(model, info))

    def deactivate(self, model_id: str | None) -> None:
        """Cached KV is only valid for the model that computed it: to the disk tier, if on."""
        if self.cache is not None and model_id is not None:
            self.cache.clear_model(model_id)
        if self.disk is not None:
            self.disk.deactivate()

    def close(self) -> None:
        """Finish the disk tier's writes (after ``deactivate`` spilled the last entries)."""
        if self.disk is not None:
            self.disk.close()

    def identity(self, model: LoadedModel, info: ModelInfo) -> dict[str, str]:
        """What binds a disk entry to this model (``prefix.disk.model_identity``)."""
        assert info.path is not None
        extra = model.describe()
        group = self._group()
        if group is not None:  # a slice of the KV: valid only for this rank of this split
            extra["shard"] = f"{model.sharded}; rank {group.rank()} of {group.size()}"
        return model_identity(info.id, info.path, **extra)

    @contextlib.contextmanager
    def set_aside(self, stand_in: PrefixCache | None) -> Iterator[None]:
        """Both tiers out of the way (the warm-up's prompts are no one's); ``stand_in`` serves meanwhile."""
        cache, disk = self.cache, self.disk
        self.cache, self.disk = stand_in, None
        try:
            yield
        finally:
            self.cache, self.disk = cache, disk

    def stats(self) -> dict[str, Any] | None:
        if self.cache is None:
            return None
        stats = attrs.asdict(self.cache.stats())
        if self.disk is not None:
            stats["disk"] = attrs.asdict(self.disk.stats())
        return stats

    # -- one request ---------------------------------------------------------------
    def start(self, model: LoadedModel, prompt: PreparedPrompt) -> PromptPrefix:
        """The fetch for a request that runs alone."""
        key, extra_key = self.key(model, prompt)
        if prompt.extras:
            # The cached prefix may cover images (their KV, keyed by their digests);
            # only the images in the uncached suffix go through the vision tower.
            return self._start_vision(model, prompt, key, extra_key)
        cache, reused, vlm_kwargs = self._start_text(model, prompt.tokens, key, extra_key)
        return PromptPrefix(self, model, key, extra_key, cache, reused, vlm_kwargs)

    def fetch_for_batch(self, model: LoadedModel, tokens: tuple[int, ...]) -> tuple[list[Any] | None, int]:
        cache, reused, _ = self._start_text(model, tokens, tokens, None)
        return cache, reused

    def store_from_batch(self, model: LoadedModel, fed: tuple[int, ...], cache: list[Any]) -> None:
        pc = self.cache
        if pc is None:
            return
        held = pc.adapter.length(cache)
        if 0 < held <= len(fed):
            import mlx.core as mx

            # A batch hands out lazy slices of its padded arrays: evaluated, the
            # entry holds only its own bytes (what the prefix cache counts), not
            # the whole batch's arrays. Entries are in the engine's KV format.
            cache = quantized(cache, model.kv.quant)
            mx.eval([c.state for c in cache])
            pc.insert(model.id, fed[:held], cache)

    def key(self, model: LoadedModel, prompt: PreparedPrompt) -> tuple[tuple[int, ...], bytes | None]:
        """The prefix-cache key of a prompt: one int per prompt token, plus an extra key.

        Text prompts use their token ids. Image prompts give the image placeholder
        runs ids derived from the image digests (``key_with_images``), so the same
        text with another image never reuses this one's KV; where the runs do not
        map onto the images, an ``extra_key`` (a hash of every image) keeps such
        prompts apart. The key is exactly as long as the prompt.
        """
        if not prompt.image_digests:
            return prompt.tokens, None
        placeholder = model.image_token_id
        if placeholder is not None:
            try:
                return key_with_images(prompt.tokens, placeholder, prompt.image_digests), None
            except ValueError:  # runs that do not map one to one onto images
                pass
        # Keep such prompts apart from every other: only the same images match.
        joined = "\0".join(prompt.image_digests).encode()
        return prompt.tokens, hashlib.blake2b(joined, digest_size=16).digest()

    def snapshot(self, cache: list[Any]) -> list[Any] | None:
        """A copy of the cache at the end of the prompt, only where it can matter:
        a cache without sliding-window layers stays trimmable, so the cache after
        the reply covers this prefix and the copy would only cost prefill time."""
        if self.cache is None or not has_window(cache):
            return None
        return self.cache.adapter.copy(cache)

    def _start_text(
        self, model: LoadedModel, tokens: tuple[int, ...], key: tuple[int, ...], extra_key: bytes | None
    ) -> tuple[list[Any], int, dict[str, Any]]:
        """(cache to extend, prompt tokens it already holds, extra generate_step kwargs)."""
        vlm_kwargs: dict[str, Any] = {}
        cache, reused = self._fetch(model, tokens, key, extra_key)
        if cache is not None and model.is_vlm and not vision_prefix.prime_positions(model.model, tokens, vlm_kwargs):
            cache, reused = None, 0
        if cache is None:
            cache = model.new_cache()
        self._log_reuse(reused, len(tokens))
        return cache, reused, vlm_kwargs

    def _start_vision(
        self, model: LoadedModel, prompt: PreparedPrompt, key: tuple[int, ...], extra_key: bytes | None
    ) -> PromptPrefix:
        """``_start_text`` for an image prompt. A hit never ends inside an image's
        placeholder run (it is cut back to the run's start, or dropped where the
        cache cannot be cut back); the images the hit covers are not encoded again.
        Qwen-VL positions are derived from the whole prompt and every image's grid
        before the suffix is fed."""
        vision = prompt.extras
        tokens = prompt.tokens
        cache, reused = self._fetch(model, tokens, key, extra_key)
        placeholder = model.image_token_id
        runs = vision_prefix.image_runs(tokens, placeholder) if placeholder is not None else []
        inputs: dict[str, Any] | None = None
        if cache is not None and len(runs) == len(prompt.image_digests):
            cache, reused = self.cut_back(cache, reused, vision_prefix.reuse_point(reused, runs))
            if cache is not None:
                first = vision_prefix.first_uncached_image(reused, runs)
                inputs = vision_prefix.suffix_vision_inputs(vision, first, len(runs))
                if inputs is None and runs:  # unknown pixel layout: reuse the text before
                    cache, reused = self.cut_back(cache, reused, runs[0][0])
                    inputs = vision_prefix.suffix_vision_inputs(vision, 0, len(runs))
        if inputs is None:
            cache, reused = None, 0
        vlm_kwargs: dict[str, Any] = {}
        if cache is not None and inputs is not None:
            # Positions of the whole prompt, with every image's grid (Qwen-VL's mRoPE).
            full_kwargs = dict(vision.get("kwargs") or {})
            if not vision_prefix.prime_positions(model.model, tokens, vlm_kwargs, full_kwargs):
                cache, reused, inputs, vlm_kwargs = None, 0, None, {}
        if cache is None or inputs is None:
            cache, reused = model.new_cache(), 0
            inputs = {"pixel_values": vision.get("pixel_values"), "kwargs": dict(vision.get("kwargs") or {})}
        mask = vision.get("mask")
        if mask is not None:
            vlm_kwargs["mask"] = mask[:, reused:]
        vlm_kwargs.update({k: v for k, v in inputs["kwargs"].items() if k not in vlm_kwargs})
        self._log_reuse(reused, len(tokens), images=len(runs) - vision_prefix.first_uncached_image(reused, runs))
        return PromptPrefix(self, model, key, extra_key, cache, reused, vlm_kwargs, inputs["pixel_values"])

    def _fetch(
        self, model: LoadedModel, tokens: tuple[int, ...], key: tuple[int, ...], extra_key: bytes | None
    ) -> tuple[list[Any] | None, int]:
        """The nearest cached prefix (a private copy) and the prompt tokens it holds."""
        if self.cache is None:
            return None, 0
        if len(key) != len(tokens):
            raise ValueError("the prefix-cache key must have one id per prompt token")
        fetched = self.cache.fetch_nearest(model.id, key, extra_key=extra_key)
        cache, reused = fetched.cache, fetched.reused
        if self.disk is not None:
            found = self.disk.nearest(model.id, key, extra_key, better_than=reused)
            if found is not None:
                loaded = self.disk.load(*found)
                if loaded is not None:
                    cache, reused = loaded, found[1]
        return self.agree(cache, reused)

    def agree(self, cache: list[Any] | None, reused: int) -> tuple[list[Any] | None, int]:
        """In a distributed group, the prefix every rank has: all ranks must prefill
        the same tokens, but each rank's caches are its own (a disk entry one rank
        never wrote, RAM tiers whose slices differ in size under an uneven split).
        Two rounds of ``all_min``, so every rank runs the same collectives: cut to
        the shortest hit, then drop it everywhere if a rank could not cut."""
        group = self._group()
        if group is None:
            return cache, reused
        import mlx.core as mx
        from mlx_lm.generate import generation_stream

        for _ in range(2):
            agreed = cast(int, mx.distributed.all_min(  # on the commands' stream (distributed/)
                mx.array(reused, dtype=mx.int32), group=group, stream=generation_stream
            ).item())
            if agreed < reused:
                log.info("Prefix cache: %d tokens reused on rank %d, %d on every rank",
                         reused, group.rank(), agreed)
                cache, reused = self.cut_back(cache, reused, agreed)
        return cache, reused

    def cut_back(self, cache: Any, reused: int, point: int) -> tuple[Any, int]:
        """``cache`` cut back from ``reused`` to ``point`` tokens: (None, 0) where it
        cannot be (a sliding window past its size) or nothing would be left."""
        if cache is None or point >= reused:
            return cache, reused
        if point < 1 or self.cache is None or not self.cache.adapter.can_trim(cache):
            return None, 0
        self.cache.adapter.trim(cache, reused - point)
        return cache, point

    def _group(self) -> Any:
        return getattr(self._sharder, "group", None)

    def _spill(self, model_id: str, extra_key: bytes | None, tokens: tuple[int, ...], cache: Any) -> None:
        if self.disk is not None:
            self.disk.spill(model_id, tokens, extra_key, cache)

    def _log_reuse(self, reused: int, total: int, images: int | None = None) -> None:
        if self.cache is None:
            return
        encoded = f", {images} image(s) to encode" if images is not None else ""
        log.info("Prefix cache: %d of %d prompt tokens reused, %d to prefill%s",
                 reused, total, total - reused, encoded)

