"""KV prefix cache: reuse the computed prefix of a prompt across requests.

A multi-turn chat sends the whole conversation every turn; the model's KV
cache for everything up to the last reply is the same as last time. This
module keeps such caches, keyed by the model and the token sequence that
produced them, and answers "the nearest cached prefix for these tokens" so
the engine prefills only the uncached suffix.

The store is a radix trie of token sequences (one per model and extra key)
with LRU eviction under a byte budget. It never looks inside a cache: a small
:class:`CacheAdapter` reports a cache's length, size in bytes and whether it
can be trimmed to a shorter prefix, and copies and trims it. So the trie/LRU
logic is tested with fake caches (``tests/unit/test_prefix_cache.py``) and
:class:`MLXCacheAdapter` is the only part that knows MLX.

Two kinds of cache, two ways of reuse:

* **Trimmable** (a plain ``KVCache``; a sliding-window ``RotatingKVCache``
  still inside its window): it holds every token it was fed, so it serves any
  request sharing a prefix with it, trimmed back to the shared part. A stored
  trimmable entry makes every entry on its own path (its prefixes) redundant;
  those are dropped on insert.
* **Not trimmable** (a ``RotatingKVCache`` past its window has overwritten
  early positions): it is reused only when the request extends its *whole*
  sequence. The engine therefore stores snapshots at reusable points (the
  end of each prompt, before generation) next to the after-reply cache.

A hit always leaves at least one token to prefill: the model needs the logits
of the last prompt token to sample the first new one.

Keys and images
---------------
A key is a sequence of Python ints, as long as the prompt, one per position.
Text positions carry their token id. A prompt with images must not share a
key with the same text and another image, so the engine replaces each run of
image placeholder tokens with ids derived from the image's hash
(:func:`key_with_images`; negative, so they never collide with a vocabulary
id). Positions stay aligned, so ``remaining`` still indexes the real prompt:
``real_tokens[fetched.reused:]``. Where per-position substitution does not
fit (inputs that have no placeholder run), ``extra_key`` (bytes) partitions
the store instead: entries are found only under the same ``extra_key``.
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Generic, Protocol, TypeVar

import attrs

log = logging.getLogger(__name__)

C = TypeVar("C")
# (model id, extra key, tokens, cache) of an entry leaving the RAM tier.
Spill = Callable[[str, "bytes | None", tuple[int, ...], C], None]

DEFAULT_PREFIX_CACHE_BYTES = 2 << 30  # 2 GiB


class CacheAdapter(Protocol[C]):
    """What the prefix cache needs to know about, and do to, a cache object."""

    def length(self, cache: C) -> int:
        """Tokens the cache holds (for MLX: ``offset``, generated tokens included)."""

    def nbytes(self, cache: C) -> int:
        """Memory the cache holds."""

    def can_trim(self, cache: C) -> bool:
        """Whether the cache can be cut back to any shorter prefix of its tokens."""

    def trim(self, cache: C, num_tokens: int) -> None:
        """Drop the last ``num_tokens`` tokens, in place (only if ``can_trim``)."""

    def copy(self, cache: C) -> C:
        """An independent copy: using it must never change the stored cache."""


@attrs.frozen
class Fetched(Generic[C]):
    """A lookup's answer; unpacks as ``cache, remaining``."""

    cache: C | None  # a private copy, or None on a miss
    remaining: tuple[int, ...]  # the key's tokens the cache does not cover (never empty)
    reused: int = 0  # tokens the cache covers

    def __iter__(self) -> Iterator[Any]:
        return iter((self.cache, self.remaining))


@attrs.frozen
class PrefixCacheStats:
    hits: int
    misses: int
    tokens_reused: int  # prompt tokens served from the cache, summed over hits
    tokens_looked_up: int  # prompt tokens of every lookup (hit or miss)
    entries: int
    bytes: int
    max_bytes: int
    evictions: int  # entries dropped to stay under max_bytes
    superseded: int  # entries dropped because a longer trimmable entry covers them
    rejected: int  # inserts larger than the whole budget, not stored


@attrs.define(eq=False)
class _Entry:
    root: tuple[str, bytes | None]
    node: _Node
    cache: Any
    nbytes: int
    trimmable: bool


@attrs.define(eq=False)
class _Node:
    """A trie node: ``edge`` holds the tokens from its parent to it."""

    edge: tuple[int, ...]
    depth: int  # tokens from the root to the end of ``edge``
    parent: _Node | None = None
    children: dict[int, _Node] = attrs.Factory(dict)  # by the first token of the child's edge
    entry: _Entry | None = None
    trimmable_below: int = 0  # trimmable entries in this subtree, this node's included


def _common_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    if a[:n] == b[:n]:  # the usual case, at C speed
        return n
    i = 0
    while a[i] == b[i]:
        i += 1
    return i


class PrefixCache(Generic[C]):
    """Caches keyed by (model id, extra key, token sequence); LRU under ``max_bytes``.

    Thread-safe; every cache handed out is a copy made by the adapter, and a
    cache passed to :meth:`insert` belongs to the prefix cache afterwards.
    """

    def __init__(
        self,
        adapter: CacheAdapter[C],
        max_bytes: int = DEFAULT_PREFIX_CACHE_BYTES,
        *,
        spill: Spill[C] | None = None,
    ):
        """``spill(model_id, extra_key, tokens, cache)`` is called with every entry
        that leaves for lack of room (budget, ``shrink_to``) or with its model
        (``clear_model``), before it goes: the disk tier keeps it
        (``runtime.prefix_disk``). Entries covered by a longer one are not spilled."""
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        self.adapter = adapter
        self.max_bytes = max_bytes
        self._spill = spill
        self._roots: dict[tuple[str, bytes | None], _Node] = {}
        self._lru: OrderedDict[_Entry, None] = OrderedDict()  # oldest first
        self._bytes = 0
        self._lock = threading.RLock()
        self._hits = self._misses = self._tokens_reused = self._tokens_looked_up = 0
        self._evictions = self._superseded = self._rejected = 0

    # -- lookup ---------------------------------------------------------------
    def fetch_nearest(
        self, model_id: str, tokens: Sequence[int], *, extra_key: bytes | None = None
    ) -> Fetched[C]:
        """A copy of the cache covering the longest usable prefix of ``tokens``.

        Returns ``(cache, remaining)``: the cache holds ``tokens[:reused]`` and
        ``remaining == tokens[reused:]`` is never empty. On a miss ``cache`` is None
        and ``remaining`` is all of ``tokens``.
        """
        tokens = tuple(tokens)
        with self._lock:
            self._tokens_looked_up += len(tokens)
            best = self._nearest((model_id, extra_key), tokens)
            if best is None:
                self._misses += 1
                return Fetched(None, tokens)
            entry, reused = best
            cache = self.adapter.copy(entry.cache)
            excess = entry.node.depth - reused
            if excess:
                self.adapter.trim(cache, excess)
            held = self.adapter.length(cache)
            if held != reused:  # an adapter bug; never hand out a cache that lies
                raise RuntimeError(f"cache holds {held} tokens after trimming, expected {reused}")
            self._lru.move_to_end(entry)
            self._hits += 1
            self._tokens_reused += reused
            return Fetched(cache, tokens[reused:], reused)

    def _nearest(
        self, root_key: tuple[str, bytes | None], tokens: tuple[int, ...]
    ) -> tuple[_Entry, int] | None:
        """The entry to use and how many tokens of it to keep (>= 1), or None."""
        node = self._roots.get(root_key)
        limit = len(tokens) - 1  # leave at least one token to prefill
        if node is None or limit < 1:
            return None
        best: tuple[_Entry, int] | None = None
        matched = 0
        path: list[_Node] = []  # nodes on the path of ``tokens``, the last one maybe partly
        while matched < len(tokens):
            child = node.children.get(tokens[matched])
            if child is None:
                break
            path.append(child)
            common = _common_length(child.edge, tokens[matched : matched + len(child.edge)])
            if common < len(child.edge):  # diverges (or ends) inside the edge
                matched += common
                break
            node = child
            matched = child.depth
            entry = child.entry
            if entry is not None:
                if child.depth <= limit:
                    best = (entry, child.depth)  # deeper path entries replace shallower ones
                elif entry.trimmable:  # the whole prompt: trim one token off
                    best = (entry, limit)
        # A trimmable entry below path node n shares min(n.depth, matched) tokens with
        # ``tokens`` and can be cut back to them: the deepest such node wins.
        for below in reversed(path):
            if below.trimmable_below:
                keep = min(below.depth, matched, limit)
                if keep >= 1 and (best is None or keep > best[1]):
                    best = (self._shallowest_trimmable(below), keep)
                break
        return best

    @staticmethod
    def _shallowest_trimmable(node: _Node) -> _Entry:
        """The trimmable entry of ``node``'s subtree nearest its top (least to copy and trim)."""
        heap = [(node.depth, 0, node)]
        tie = 1
        while heap:
            _, _, current = heapq.heappop(heap)
            if current.entry is not None and current.entry.trimmable:
                return current.entry
            for child in current.children.values():
                if child.trimmable_below:
                    heapq.heappush(heap, (child.depth, tie, child))
                    tie += 1
        raise AssertionError("trimmable_below counted an entry that is not there")

    # -- storing --------------------------------------------------------------
    def insert(
        self,
        model_id: str,
        tokens: Sequence[int],
        cache: C,
        *,
        extra_key: bytes | None = None,
    ) -> bool:
        """Store ``cache``, which holds exactly ``tokens``; returns whether it was kept.

        Replaces an entry with the same key. Trimmable caches cover their
        prefixes: storing one drops the stored prefixes of ``tokens``, and a cache
        that a stored trimmable one already covers is not stored. Least recently
        used entries go until the total fits ``max_bytes``.
        """
        tokens = tuple(tokens)
        held = self.adapter.length(cache)
        if held != len(tokens):
            raise ValueError(f"cache holds {held} tokens but the key has {len(tokens)}")
        if not tokens:
            return False
        nbytes = self.adapter.nbytes(cache)
        trimmable = self.adapter.can_trim(cache)
        with self._lock:
            if nbytes > self.max_bytes:
                self._rejected += 1
                return False
            root_key = (model_id, extra_key)
            covering = self._trimmable_extension(root_key, tokens)
            if covering is not None:  # a longer trimmable entry already serves all of it
                self._superseded += 1
                self._lru.move_to_end(covering)
                return False
            node = self._node_for(root_key, tokens)
            if node.entry is not None:  # same key: replace, keeping the node
                self._remove(node.entry, prune=False)
            entry = _Entry(root_key, node, cache, nbytes, trimmable)
            node.entry = entry
            self._lru[entry] = None
            self._bytes += nbytes
            if trimmable:
                self._count_trimmable(node, +1)
                ancestor = node.parent
                while ancestor is not None:
                    parent = ancestor.parent  # read first: removing may merge ancestor away
                    if ancestor.entry is not None:
                        self._superseded += 1
                        self._remove(ancestor.entry)
                    ancestor = parent
            while self._bytes > self.max_bytes:
                oldest = next(iter(self._lru))
                self._evictions += 1
                self._spill_entry(oldest)
                self._remove(oldest)
            return True

    def _trimmable_extension(
        self, root_key: tuple[str, bytes | None], tokens: tuple[int, ...]
    ) -> _Entry | None:
        """A stored trimmable entry strictly longer than ``tokens`` that starts with them."""
        node = self._roots.get(root_key)
        matched = 0
        while node is not None and matched < len(tokens):
            child = node.children.get(tokens[matched])
            if child is None:
                return None
            end = min(len(tokens), child.depth)
            if child.edge[: end - matched] != tokens[matched:end]:
                return None
            node, matched = child, end
        if node is None:
            return None
        own = int(node.depth == len(tokens) and node.entry is not None and node.entry.trimmable)
        if node.trimmable_below - own <= 0:
            return None
        if own:  # look only below this node
            for child in node.children.values():
                if child.trimmable_below:
                    return self._shallowest_trimmable(child)
        return self._shallowest_trimmable(node)

    def _node_for(self, root_key: tuple[str, bytes | None], tokens: tuple[int, ...]) -> _Node:
        """The node at depth ``len(tokens)`` on the path of ``tokens``, made if missing."""
        node = self._roots.get(root_key)
        if node is None:
            node = self._roots[root_key] = _Node(edge=(), depth=0)
        i = 0
        while i < len(tokens):
            child = node.children.get(tokens[i])
            if child is None:
                leaf = _Node(edge=tokens[i:], depth=len(tokens), parent=node)
                node.children[tokens[i]] = leaf
                return leaf
            common = _common_length(child.edge, tokens[i : i + len(child.edge)])
            if common < len(child.edge):  # split the edge at the divergence
                mid = _Node(
                    edge=child.edge[:common],
                    depth=node.depth + common,
                    parent=node,
                    trimmable_below=child.trimmable_below,
                )
                child.edge = child.edge[common:]
                child.parent = mid
                mid.children[child.edge[0]] = child
                node.children[tokens[i]] = mid
                child = mid
            node = child
            i = node.depth
        return node

    # -- removal --------------------------------------------------------------
    def clear(self) -> None:
        with self._lock:
            self._roots.clear()
            self._lru.clear()
            self._bytes = 0

    def shrink_to(self, max_bytes: int) -> int:
        """Evict least recently used entries until at most ``max_bytes`` are held
        (the memory governor makes room for a request); returns the bytes held."""
        with self._lock:
            while self._bytes > max(0, max_bytes) and self._lru:
                self._evictions += 1
                oldest = next(iter(self._lru))
                self._spill_entry(oldest)
                self._remove(oldest)
            return self._bytes

    @property
    def nbytes(self) -> int:
        """Bytes held now (cheaper than ``stats()``)."""
        return self._bytes

    def clear_model(self, model_id: str) -> None:
        """Drop every entry of ``model_id`` (whatever its extra key)."""
        with self._lock:
            for entry in [e for e in self._lru if e.root[0] == model_id]:  # oldest first
                self._spill_entry(entry)
            for root_key in [k for k in self._roots if k[0] == model_id]:
                del self._roots[root_key]
            for entry in [e for e in self._lru if e.root[0] == model_id]:
                self._bytes -= entry.nbytes
                del self._lru[entry]

    def _spill_entry(self, entry: _Entry) -> None:
        if self._spill is None:
            return
        try:
            self._spill(entry.root[0], entry.root[1], self._tokens_of(entry.node), entry.cache)
        except Exception:  # never fail a request (or an unload) over the disk tier
            log.exception("Prefix cache: spilling an entry failed")

    def _remove(self, entry: _Entry, *, prune: bool = True) -> None:
        node = entry.node
        node.entry = None
        del self._lru[entry]
        self._bytes -= entry.nbytes
        if entry.trimmable:
            self._count_trimmable(node, -1)
        if prune:
            self._prune(entry.root, node)

    def _prune(self, root_key: tuple[str, bytes | None], node: _Node) -> None:
        """Remove empty leaves upwards, then merge a pass-through node into its child."""
        while node.parent is not None and node.entry is None and not node.children:
            parent = node.parent
            del parent.children[node.edge[0]]
            node.parent = None
            node = parent
        if node.parent is None:
            if not node.children:
                self._roots.pop(root_key, None)
            return
        if node.entry is None and len(node.children) == 1:
            (child,) = node.children.values()
            child.edge = node.edge + child.edge
            child.parent = node.parent
            node.parent.children[child.edge[0]] = child
            node.parent = None

    @staticmethod
    def _count_trimmable(node: _Node | None, delta: int) -> None:
        while node is not None:
            node.trimmable_below += delta
            node = node.parent

    # -- introspection --------------------------------------------------------
    def stats(self) -> PrefixCacheStats:
        with self._lock:
            return PrefixCacheStats(
                hits=self._hits,
                misses=self._misses,
                tokens_reused=self._tokens_reused,
                tokens_looked_up=self._tokens_looked_up,
                entries=len(self._lru),
                bytes=self._bytes,
                max_bytes=self.max_bytes,
                evictions=self._evictions,
                superseded=self._superseded,
                rejected=self._rejected,
            )

    def keys(self, model_id: str, *, extra_key: bytes | None = None) -> list[tuple[int, ...]]:
        """The stored token sequences of one model, oldest use first (for tests and debugging)."""
        with self._lock:
            return [self._tokens_of(e.node) for e in self._lru if e.root == (model_id, extra_key)]

    @staticmethod
    def _tokens_of(node: _Node) -> tuple[int, ...]:
        parts: list[tuple[int, ...]] = []
        current: _Node | None = node
        while current is not None:
            parts.append(current.edge)
            current = current.parent
        return tuple(t for part in reversed(parts) for t in part)

    def __len__(self) -> int:
        return len(self._lru)


# -- image keys ---------------------------------------------------------------


def image_key_id(digest: bytes | str) -> int:
    """A key id for an image, from its content hash (``ImageInput.digest``): negative,
    so never a vocabulary id."""
    raw = digest.encode() if isinstance(digest, str) else digest
    return -1 - int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "big")


def key_with_images(
    tokens: Sequence[int], placeholder_id: int, image_digests: Iterable[bytes | str]
) -> tuple[int, ...]:
    """``tokens`` with the k-th run of ``placeholder_id`` replaced by image k's key id.

    For templates that expand each image into a run of one placeholder token
    between markers (Gemma 3's ``<image_soft_token>``, Qwen-VL's
    ``<|image_pad|>``): the same text with another image gets another key, and
    the text before the first image still shares its prefix with text-only turns.
    """
    digests = list(image_digests)
    out: list[int] = []
    run = -1
    previous_was_placeholder = False
    for token in tokens:
        if token == placeholder_id:
            if not previous_was_placeholder:
                run += 1
                if run >= len(digests):
                    raise ValueError(f"more image runs than the {len(digests)} images given")
                current = image_key_id(digests[run])
            out.append(current)
            previous_was_placeholder = True
        else:
            out.append(token)
            previous_was_placeholder = False
    if run + 1 != len(digests):
        raise ValueError(f"{run + 1} image runs in the prompt but {len(digests)} images given")
    return tuple(out)


# -- MLX ----------------------------------------------------------------------


class MLXCacheAdapter:
    """mlx-lm / mlx-vlm prompt caches: a list with one cache object per layer.

    MLX is imported lazily so this module (and its tests) load without it.
    """

    def length(self, cache: list[Any]) -> int:
        # ``offset`` counts every token fed, generated ones included.
        return max((int(getattr(c, "offset", 0) or 0) for c in cache), default=0)

    def nbytes(self, cache: list[Any]) -> int:
        total = 0
        for layer in cache:
            try:
                total += int(layer.nbytes)
            except (NotImplementedError, AttributeError):
                total += _state_nbytes(layer)
        return total

    def can_trim(self, cache: list[Any]) -> bool:
        return bool(cache) and all(_fully_retained(c) for c in cache)

    def trim(self, cache: list[Any], num_tokens: int) -> None:
        for layer in cache:
            layer.trim(num_tokens)

    def copy(self, cache: list[Any]) -> list[Any]:
        import copy

        # mx.array's __deepcopy__ is a lazy copy: cheap until one side is written.
        return copy.deepcopy(cache)


def has_window(cache: list[Any]) -> bool:
    """Whether any layer is a sliding-window cache (which may stop being trimmable).

    Caches without one stay trimmable however long they grow, so the cache
    after the reply covers every shorter prefix and no snapshot is needed.
    """

    def windowed(layer: Any) -> bool:
        children = getattr(layer, "caches", None)
        if children is not None:
            return any(windowed(c) for c in children)
        return getattr(layer, "max_size", None) is not None

    return any(windowed(layer) for layer in cache)


def _fully_retained(layer: Any) -> bool:
    """Whether ``layer`` still holds its whole sequence, so it can be cut back anywhere.

    ``is_trimmable()`` alone is not enough for every cache class (mlx-vlm's
    buffered rotating cache reports trimmable after evicting), so also check
    the window of rotating caches.
    """
    children = getattr(layer, "caches", None)
    if children is not None:  # a CacheList
        return all(_fully_retained(c) for c in children)
    if not (hasattr(layer, "is_trimmable") and layer.is_trimmable()):
        return False
    start = getattr(layer, "start_position", None)
    if start is not None:
        return int(start) == 0
    max_size = getattr(layer, "max_size", None)
    if max_size is not None:
        return int(layer.offset) < int(max_size)
    return True


def _state_nbytes(layer: Any) -> int:
    from mlx.utils import tree_flatten

    flat: list[tuple[str, Any]] = tree_flatten(layer.state)  # type: ignore[assignment]
    return sum(int(getattr(v, "nbytes", 0)) for _, v in flat)
