"""One process-wide model cache: each set of weights is loaded from disk once and shared.

A cached model is identified by *what it was built from* and *how*: the file (resolved path, size
and mtime_ns, so an overwritten file is reloaded) or an explicit in-memory name; the dtype; the
device; and a free-form ``tag`` for loaders that build different models from one file.  Entries
are kept in least-recently-used order under a memory budget counted as parameter + buffer bytes.

Where the weights physically live is not decided here.  A ``ResidencyHook`` wraps each model when
it enters the cache (``wrap`` returns a handle, e.g. ComfyUI's ModelPatcher, which ``handle_for``
gives back) and is told when it leaves (``release``); the default hook does nothing.  Inside
ComfyUI the node layer's hook wraps each model in ComfyUI's model patcher, and the nodes make it
resident through ComfyUI's memory manager before each run (``nodes/host.py``).

Hook methods are called from whatever thread uses the cache; ``wrap`` is called with the cache's lock
held and must not call back into the cache.
"""
from __future__ import annotations

import logging
import os
import re
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import torch
from torch import nn

from .precision import as_dtype

log = logging.getLogger("pdfnet_core")

GiB = 1 << 30
DEFAULT_BUDGET_BYTES = 8 * GiB
BUDGET_ENV = "PDFNET_CACHE_BYTES"

# --------------------------------------------------------------------------------------------
# keys


@dataclass(frozen=True)
class FileIdentity:
    """A weight file as it is now: a rewritten file gets a new identity, hence a fresh load."""

    path: str
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: str | os.PathLike) -> "FileIdentity":
        # resolve(): two links to one file share one model.
        resolved = os.path.realpath(os.fspath(path))
        try:
            st = os.stat(resolved)
        except FileNotFoundError:
            raise FileNotFoundError(f"model file not found: {os.fspath(path)}") from None
        return cls(resolved, st.st_size, st.st_mtime_ns)


@dataclass(frozen=True)
class MemoryIdentity:
    """An in-memory source (a state dict, a model built in code): the caller names it."""

    name: str


Source = FileIdentity | MemoryIdentity


@dataclass(frozen=True)
class CacheKey:
    source: Source
    dtype: str
    device: str
    tag: str = ""


def _dtype_name(dtype: torch.dtype | str) -> str:
    return str(as_dtype(dtype)).removeprefix("torch.")


def make_key(source: str | os.PathLike | Source, dtype: torch.dtype | str, device: torch.device | str,
             tag: str = "") -> CacheKey:
    """The cache key for ``source`` (a file path, or a FileIdentity/MemoryIdentity) at dtype and device.

    A path is looked up now (size and mtime), so the key of a rewritten file differs from the old one.
    """
    if not isinstance(source, (FileIdentity, MemoryIdentity)):
        source = FileIdentity.of(source)
    return CacheKey(source, _dtype_name(dtype), str(torch.device(device)), tag)


# --------------------------------------------------------------------------------------------
# residency


@runtime_checkable
class ResidencyHook(Protocol):
    """What stands for each cached model in a host's memory manager (see the module docstring)."""

    def wrap(self, model: nn.Module, key: CacheKey) -> Any:
        """Return the handle that stands for ``model`` in later calls (called once per cache entry)."""

    def release(self, handle: Any) -> None:
        """The model left the cache (evicted, stale or cleared): free what the handle holds."""


class NullResidency:
    """The library default: models stay where their loader put them."""

    def wrap(self, model: nn.Module, key: CacheKey) -> Any:
        return None

    def release(self, handle: Any) -> None:
        return None


# --------------------------------------------------------------------------------------------
# the cache


def module_bytes(model: nn.Module) -> int:
    """Bytes held by a model's parameters and buffers (shared tensors counted once)."""
    seen: dict[int, torch.Tensor] = {}
    for t in list(model.parameters()) + list(model.buffers()):
        seen.setdefault(id(t), t)
    return sum(t.numel() * t.element_size() for t in seen.values())


def parse_bytes(text: str) -> int:
    """'8589934592', '8GiB', '512 MiB', '2G' (binary units; decimal with 'B': '2GB')."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*", text.lower())
    if not match:
        raise ValueError(f"cannot read {text!r} as a byte count; write e.g. 8589934592, 8GiB or 512MiB")
    number, prefix, unit = match.groups()
    base = 1000 if unit == "b" and prefix else 1024
    return int(float(number) * base ** " kmgt".index(prefix or " "))


def budget_from_env() -> int:
    """PDFNET_CACHE_BYTES if set and readable, else DEFAULT_BUDGET_BYTES."""
    raw = os.environ.get(BUDGET_ENV)
    if raw is None or not raw.strip():
        return DEFAULT_BUDGET_BYTES
    try:
        return parse_bytes(raw)
    except ValueError as exc:
        # A bad setting must not stop the node pack from loading: say so and carry on.
        log.warning("%s=%r ignored (%s); using %d bytes", BUDGET_ENV, raw, exc, DEFAULT_BUDGET_BYTES)
        return DEFAULT_BUDGET_BYTES


@dataclass(frozen=True)
class CacheStats:
    hits: int            # requests served from the cache (including waits on another thread's load)
    misses: int          # requests that found no entry
    loads: int           # loader calls that returned a model: reads from disk
    revivals: int        # misses served by a model evicted earlier but still in use elsewhere
    evictions: int       # entries dropped to stay within the budget
    invalidations: int   # entries dropped because their file changed on disk
    entries: int
    bytes: int
    budget_bytes: int


@dataclass
class _Entry:
    model: nn.Module
    nbytes: int
    hook: ResidencyHook | None = None
    handle: Any = None


@dataclass
class _Pending:
    done: threading.Event = field(default_factory=threading.Event)
    model: nn.Module | None = None
    error: BaseException | None = None


class ModelCache:
    """Thread-safe LRU of loaded models under a byte budget, with a pluggable residency hook.

    The most recently used model is always kept, even alone over budget (a warning is logged).
    A model evicted while something still holds it is taken back without a reload when asked for
    again, so one set of weights is never in memory twice because of the cache.
    """

    def __init__(self, budget_bytes: int | None = None, hook: ResidencyHook | None = None) -> None:
        self._lock = threading.RLock()
        self._entries: OrderedDict[CacheKey, _Entry] = OrderedDict()
        self._pending: dict[CacheKey, _Pending] = {}
        # Weak maps only: they must never keep a model alive; they let an evicted model still in use
        # be recognised (by key or by object) instead of being loaded a second time.
        self._alive: weakref.WeakValueDictionary[CacheKey, nn.Module] = weakref.WeakValueDictionary()
        self._key_of: weakref.WeakKeyDictionary[nn.Module, CacheKey] = weakref.WeakKeyDictionary()
        self._hook: ResidencyHook = hook if hook is not None else NullResidency()
        self._budget = budget_from_env() if budget_bytes is None else self._checked_budget(budget_bytes)
        self._bytes = 0
        self._counts = dict.fromkeys(("hits", "misses", "loads", "revivals", "evictions", "invalidations"), 0)

    # ---- configuration ---------------------------------------------------------------------

    @staticmethod
    def _checked_budget(budget_bytes: int) -> int:
        if not isinstance(budget_bytes, int) or budget_bytes < 0:
            raise ValueError(f"cache budget must be a non-negative number of bytes, got {budget_bytes!r}")
        return budget_bytes

    @property
    def budget_bytes(self) -> int:
        return self._budget

    def set_budget(self, budget_bytes: int) -> None:
        """Change the budget; entries over it are evicted now."""
        with self._lock:
            self._budget = self._checked_budget(budget_bytes)
            released = self._evict_over_budget(keep=None)
        self._release(released)

    def set_residency_hook(self, hook: ResidencyHook | None) -> None:
        """Install ``hook`` (None: the do-nothing default).  Handles of the old hook are released;
        held models are wrapped by the new hook when next used."""
        with self._lock:
            self._hook = hook if hook is not None else NullResidency()
            released = [(e.hook, e.handle) for e in self._entries.values() if e.hook is not None]
            for entry in self._entries.values():
                entry.hook, entry.handle = None, None
        self._release(released)

    # ---- loading -----------------------------------------------------------------------------

    def get_or_load(self, source: str | os.PathLike | Source, dtype: torch.dtype | str,
                    device: torch.device | str, loader: Callable[[], nn.Module], *, tag: str = "") -> nn.Module:
        """The model for (source, dtype, device, tag), calling ``loader()`` only if none is held.

        ``loader`` must build the model with that dtype on that device; the cache does not move it.
        """
        key = make_key(source, dtype, device, tag)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                self._counts["hits"] += 1
                return entry.model
            pending = self._pending.get(key)
            if pending is not None:
                self._counts["hits"] += 1
            else:
                self._counts["misses"] += 1
                revived = self._alive.get(key)
                if revived is None:
                    mine = self._pending[key] = _Pending()
                else:
                    self._counts["revivals"] += 1
                    released = self._insert(key, revived)
        if pending is not None:
            return self._wait(pending)
        if revived is None:
            return self._load(key, loader, mine)
        self._release(released)
        return revived

    def _wait(self, pending: _Pending) -> nn.Module:
        pending.done.wait()
        if pending.error is not None:
            raise pending.error
        assert pending.model is not None
        return pending.model

    def _load(self, key: CacheKey, loader: Callable[[], nn.Module], pending: _Pending) -> nn.Module:
        # The loader runs without the lock: other keys load and hit meanwhile; same-key callers wait.
        released: list = []
        try:
            model = loader()
            if not isinstance(model, nn.Module):
                raise TypeError(f"the loader for {key} returned {type(model).__name__}, not a torch.nn.Module")
            with self._lock:
                self._counts["loads"] += 1
                released = self._insert(key, model)
            pending.model = model
            log.info("loaded %s (%.1f MiB)", _describe(key), module_bytes(model) / (1 << 20))
            return model
        except BaseException as exc:
            pending.error = exc
            raise
        finally:
            with self._lock:
                self._pending.pop(key, None)
            pending.done.set()
            self._release(released)

    def _insert(self, key: CacheKey, model: nn.Module) -> list:
        """Add ``key`` as most recent; return the (hook, handle) pairs to release outside the lock."""
        handle = self._hook.wrap(model, key)   # first: if the hook fails, nothing was inserted
        released = self._drop_stale(key)
        if key in self._entries:   # another object under the same key: this one replaces it
            released.append(self._remove(key))
        entry = _Entry(model, module_bytes(model), self._hook, handle)
        self._entries[key] = entry
        self._bytes += entry.nbytes
        self._alive[key] = model
        self._key_of[model] = key
        return released + self._evict_over_budget(keep=key)

    def _wrap(self, entry: _Entry, key: CacheKey) -> Any:
        if entry.hook is not self._hook:   # the hook was replaced since this entry was wrapped
            entry.hook, entry.handle = self._hook, self._hook.wrap(entry.model, key)
        return entry.handle

    def _drop_stale(self, key: CacheKey) -> list:
        if not isinstance(key.source, FileIdentity):
            return []
        path = key.source.path
        stale = [k for k in self._entries
                 if isinstance(k.source, FileIdentity) and k.source.path == path and k.source != key.source]
        for k in stale:
            self._counts["invalidations"] += 1
            log.info("dropping %s: the file changed on disk", _describe(k))
        return [self._remove(k) for k in stale]

    def _evict_over_budget(self, keep: CacheKey | None) -> list:
        released = []
        while self._bytes > self._budget and len(self._entries) > 1:
            oldest = next(iter(self._entries))
            if oldest == keep:
                break
            self._counts["evictions"] += 1
            log.info("evicting %s to stay within the %d-byte model cache budget", _describe(oldest), self._budget)
            released.append(self._remove(oldest))
        if self._bytes > self._budget:
            log.warning("the model cache holds %d bytes, over its budget of %d; raise %s to keep more models",
                        self._bytes, self._budget, BUDGET_ENV)
        return released

    def _remove(self, key: CacheKey) -> tuple[ResidencyHook | None, Any]:
        entry = self._entries.pop(key)
        self._bytes -= entry.nbytes
        return entry.hook, entry.handle

    @staticmethod
    def _release(pairs: Sequence[tuple[ResidencyHook | None, Any]]) -> None:
        for hook, handle in pairs:
            if hook is not None:
                try:
                    hook.release(handle)
                except Exception:  # a failed release must not fail the request that triggered it
                    log.exception("residency hook %r failed to release a model", hook)

    # ---- use ---------------------------------------------------------------------------------

    def handle_for(self, model: nn.Module) -> Any:
        """The residency hook's handle for ``model`` (e.g. ComfyUI's ModelPatcher), before each use.

        Marks the model as recently used.  A model evicted earlier but still in use is taken back
        into the cache first.  Raises ValueError for a model that did not come from this cache.
        """
        released: list = []
        with self._lock:
            key = self._key_of.get(model)
            if key is None:
                raise ValueError(f"this {type(model).__name__} was not loaded through this model cache; "
                                 "load it with get_or_load so it can be shared and managed")
            entry = self._entries.get(key)
            if entry is None or entry.model is not model:
                self._counts["revivals"] += 1
                released = self._insert(key, model)
                entry = self._entries[key]
            else:
                self._entries.move_to_end(key)
            handle = self._wrap(entry, key)
        self._release(released)
        return handle

    # ---- inspection --------------------------------------------------------------------------

    def keys(self) -> list[CacheKey]:
        """Held keys, least recently used first."""
        with self._lock:
            return list(self._entries)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._entries

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(**self._counts, entries=len(self._entries), bytes=self._bytes,
                              budget_bytes=self._budget)

    def clear(self) -> None:
        """Drop every entry; counters are kept.

        A model still referenced elsewhere lives on and is taken back (not reloaded) when asked for.
        """
        with self._lock:
            released = [self._remove(k) for k in list(self._entries)]
        self._release(released)


def _describe(key: CacheKey) -> str:
    src = key.source.path if isinstance(key.source, FileIdentity) else f"<{key.source.name}>"
    tag = f" [{key.tag}]" if key.tag else ""
    return f"{src}{tag} ({key.dtype}, {key.device})"


_DEFAULT_CACHE = ModelCache()


def default_cache() -> ModelCache:
    """The process-wide cache that the pipeline, the CLI and the ComfyUI nodes share."""
    return _DEFAULT_CACHE
