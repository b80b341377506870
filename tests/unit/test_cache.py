"""The process-wide model cache: one load per key, LRU under a budget, threads, residency hooks."""
from __future__ import annotations

import gc
import logging
import os
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from pdfnet_core.cache import (GiB, CacheKey, FileIdentity, MemoryIdentity, ModelCache, NullResidency,
                               ResidencyHook, default_cache, make_key, module_bytes)

LINEAR_BYTES = (4 * 4 + 4) * 4   # nn.Linear(4, 4) in fp32


class CountingLoader:
    """A loader that really reads its file, and counts how often it is asked to."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.calls = 0

    def __call__(self) -> nn.Module:
        self.calls += 1
        model = nn.Linear(4, 4)
        if self.path is not None:
            model.load_state_dict(load_file(str(self.path)))
        return model


@pytest.fixture
def weights(tmp_path) -> Path:
    path = tmp_path / "tiny.safetensors"
    save_file(nn.Linear(4, 4).state_dict(), str(path))
    return path


def _mem(name: str) -> MemoryIdentity:
    return MemoryIdentity(name)


# --------------------------------------------------------------------------------------------
# keys and loading once


def test_second_request_loads_nothing_from_disk(weights):
    cache, loader = ModelCache(budget_bytes=GiB), CountingLoader(weights)
    first = cache.get_or_load(weights, torch.float32, "cpu", loader)
    second = cache.get_or_load(weights, torch.float32, "cpu", loader)
    assert second is first
    assert loader.calls == 1
    s = cache.stats()
    assert (s.loads, s.misses, s.hits, s.entries, s.bytes) == (1, 1, 1, 1, LINEAR_BYTES)


def test_two_names_for_one_file_share_one_model(weights, monkeypatch):
    link = weights.parent / "link.safetensors"
    link.symlink_to(weights)
    monkeypatch.chdir(weights.parent)
    cache, loader = ModelCache(budget_bytes=GiB), CountingLoader(weights)
    a = cache.get_or_load(weights, "fp32", "cpu", loader)
    b = cache.get_or_load("tiny.safetensors", torch.float32, torch.device("cpu"), loader)
    c = cache.get_or_load(link, "float32", "cpu", loader)
    assert a is b is c and loader.calls == 1


def test_dtype_device_and_tag_are_part_of_the_key(weights):
    cache, loader = ModelCache(budget_bytes=GiB), CountingLoader(weights)
    base = make_key(weights, torch.float32, "cpu")
    assert make_key(weights, "fp16", "cpu") != base
    assert make_key(weights, torch.float32, "cuda:0") != base
    assert make_key(weights, torch.float32, "cpu", tag="depth_anything:vits") != base
    assert make_key(weights, "fp16", "cpu") == make_key(weights, torch.float16, torch.device("cpu"))
    models = {cache.get_or_load(weights, dtype, device, loader, tag=tag)
              for dtype, device, tag in [("fp32", "cpu", ""), ("fp16", "cpu", ""), ("fp32", "cuda:0", ""),
                                         ("fp32", "cpu", "other")]}
    assert len(models) == 4 and loader.calls == 4 and cache.stats().entries == 4


def test_bad_dtype_and_missing_file_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="fp32, fp16 or bf16"):
        make_key(_mem("x"), "int8", "cpu")
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        make_key(tmp_path / "nope.safetensors", "fp32", "cpu")


def test_changed_file_is_reloaded_and_the_stale_entry_dropped(weights):
    cache, loader = ModelCache(budget_bytes=GiB), CountingLoader(weights)
    old = cache.get_or_load(weights, "fp32", "cpu", loader)
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    new = cache.get_or_load(weights, "fp32", "cpu", loader)
    assert new is not old and loader.calls == 2
    s = cache.stats()
    assert (s.invalidations, s.entries, s.bytes) == (1, 1, LINEAR_BYTES)
    [key] = cache.keys()
    assert key.source == FileIdentity(str(weights.resolve()), st.st_size, st.st_mtime_ns + 1_000_000_000)


def test_loader_errors_propagate_and_are_not_cached():
    cache, calls = ModelCache(budget_bytes=GiB), []

    def failing():
        calls.append(1)
        raise RuntimeError("broken checkpoint")

    for _ in range(2):
        with pytest.raises(RuntimeError, match="broken checkpoint"):
            cache.get_or_load(_mem("m"), "fp32", "cpu", failing)
    assert len(calls) == 2 and cache.stats().entries == 0
    with pytest.raises(TypeError, match="not a torch.nn.Module"):
        cache.get_or_load(_mem("m"), "fp32", "cpu", lambda: {"weight": torch.zeros(1)})


# --------------------------------------------------------------------------------------------
# LRU under a budget


def test_lru_eviction_under_a_small_budget():
    cache = ModelCache(budget_bytes=2 * LINEAR_BYTES)
    loaders = {n: CountingLoader() for n in "abc"}
    get = lambda n: cache.get_or_load(_mem(n), "fp32", "cpu", loaders[n])  # noqa: E731
    get("a"), get("b")
    get("a")                      # a is now the most recent
    get("c")                      # over budget: b, the least recently used, goes
    assert [k.source.name for k in cache.keys()] == ["a", "c"]
    s = cache.stats()
    assert (s.evictions, s.entries, s.bytes) == (1, 2, 2 * LINEAR_BYTES)
    gc.collect()   # nothing holds b any more, so it cannot be taken back: it must be loaded
    get("b")                      # b comes back from its loader; a goes
    assert loaders["b"].calls == 2 and loaders["a"].calls == 1
    assert [k.source.name for k in cache.keys()] == ["c", "b"]


def test_a_model_over_budget_is_still_kept_alone(caplog):
    cache = ModelCache(budget_bytes=LINEAR_BYTES // 2)
    with caplog.at_level(logging.WARNING, logger="pdfnet_core"):
        model = cache.get_or_load(_mem("big"), "fp32", "cpu", CountingLoader())
    assert cache.stats().entries == 1 and "over its budget" in caplog.text
    assert cache.get_or_load(_mem("big"), "fp32", "cpu", CountingLoader()) is model


def test_evicted_model_still_in_use_is_taken_back_not_reloaded():
    cache = ModelCache(budget_bytes=LINEAR_BYTES)
    la, lb = CountingLoader(), CountingLoader()
    held = cache.get_or_load(_mem("a"), "fp32", "cpu", la)
    cache.get_or_load(_mem("b"), "fp32", "cpu", lb)           # evicts a, but we still hold it
    assert _mem("a") not in {k.source for k in cache.keys()}
    assert cache.get_or_load(_mem("a"), "fp32", "cpu", la) is held
    assert la.calls == 1 and cache.stats().revivals == 1


def test_set_budget_evicts_now_and_clear_empties():
    cache = ModelCache(budget_bytes=GiB)
    for n in "abc":
        cache.get_or_load(_mem(n), "fp32", "cpu", CountingLoader())
    cache.set_budget(LINEAR_BYTES)
    assert [k.source.name for k in cache.keys()] == ["c"]
    cache.clear()
    s = cache.stats()
    assert (s.entries, s.bytes, s.evictions, s.loads) == (0, 0, 2, 3)
    with pytest.raises(ValueError, match="non-negative"):
        cache.set_budget(-1)


def test_module_bytes_counts_parameters_and_buffers_once():
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    model.append(model[0])   # a shared module is counted once
    expected = LINEAR_BYTES + 4 * (4 * 4) + 8   # BN weight, bias, running mean, var (4 x fp32[4]) + int64 counter
    assert module_bytes(model) == expected
    assert module_bytes(nn.Linear(4, 4).half()) == LINEAR_BYTES // 2


def test_budget_comes_from_the_environment(monkeypatch, caplog):
    monkeypatch.setenv("PDFNET_CACHE_BYTES", "1MiB")
    assert ModelCache().budget_bytes == 1 << 20
    monkeypatch.setenv("PDFNET_CACHE_BYTES", "3000000")
    assert ModelCache().budget_bytes == 3_000_000
    monkeypatch.setenv("PDFNET_CACHE_BYTES", "lots")
    with caplog.at_level(logging.WARNING, logger="pdfnet_core"):
        assert ModelCache().budget_bytes == 8 * GiB
    assert "PDFNET_CACHE_BYTES" in caplog.text
    monkeypatch.delenv("PDFNET_CACHE_BYTES")
    assert ModelCache().budget_bytes == 8 * GiB
    assert ModelCache(budget_bytes=123).budget_bytes == 123


def test_default_cache_is_one_instance():
    assert default_cache() is default_cache()
    assert isinstance(default_cache(), ModelCache)


# --------------------------------------------------------------------------------------------
# threads


def _wait_for(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.005)


def test_concurrent_requests_for_one_key_load_once():
    cache = ModelCache(budget_bytes=GiB)
    started, release = threading.Event(), threading.Event()
    calls = []

    def slow_loader():
        calls.append(threading.get_ident())
        started.set()
        assert release.wait(10)
        return nn.Linear(4, 4)

    results = {}

    def request(name):
        results[name] = cache.get_or_load(_mem("shared"), "fp32", "cpu", slow_loader)

    t1 = threading.Thread(target=request, args=("t1",))
    t1.start()
    assert started.wait(10)
    t2 = threading.Thread(target=request, args=("t2",))
    t2.start()
    _wait_for(lambda: cache.stats().hits == 1)   # t2 is waiting on t1's load, not loading itself
    # meanwhile another key is not blocked by the slow load
    other = cache.get_or_load(_mem("other"), "fp32", "cpu", CountingLoader())
    assert isinstance(other, nn.Linear)
    release.set()
    t1.join(10), t2.join(10)
    assert results["t1"] is results["t2"]
    assert len(calls) == 1 and cache.stats().loads == 2


def test_a_waiting_thread_sees_the_loaders_error():
    cache = ModelCache(budget_bytes=GiB)
    started, release = threading.Event(), threading.Event()

    def failing():
        started.set()
        assert release.wait(10)
        raise OSError("disk read failed")

    errors = []

    def request():
        try:
            cache.get_or_load(_mem("x"), "fp32", "cpu", failing)
        except OSError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=request)]
    threads[0].start()
    assert started.wait(10)
    threads.append(threading.Thread(target=request))
    threads[1].start()
    _wait_for(lambda: cache.stats().hits == 1)
    release.set()
    for t in threads:
        t.join(10)
    assert len(errors) == 2 and all("disk read failed" in str(e) for e in errors)
    assert cache.stats().entries == 0


# --------------------------------------------------------------------------------------------
# residency hook


class RecordingHook:
    def __init__(self) -> None:
        self.wrapped: list[tuple[nn.Module, CacheKey]] = []
        self.released: list[object] = []

    def wrap(self, model, key):
        handle = ("handle", len(self.wrapped), key)
        self.wrapped.append((model, key))
        return handle

    def release(self, handle):
        self.released.append(handle)


def test_residency_hook_wraps_once_and_hands_back_its_handle():
    hook = RecordingHook()
    assert isinstance(hook, ResidencyHook) and isinstance(NullResidency(), ResidencyHook)
    cache = ModelCache(budget_bytes=GiB, hook=hook)
    model = cache.get_or_load(_mem("a"), "fp16", "cpu", CountingLoader())
    cache.get_or_load(_mem("a"), "fp16", "cpu", CountingLoader())
    [(wrapped_model, key)] = hook.wrapped
    assert wrapped_model is model and key == CacheKey(_mem("a"), "float16", "cpu")
    handle = cache.handle_for(model)
    assert cache.handle_for(model) == handle == ("handle", 0, key) and len(hook.wrapped) == 1


def test_residency_hook_releases_on_eviction_and_clear():
    hook = RecordingHook()
    cache = ModelCache(budget_bytes=LINEAR_BYTES, hook=hook)
    a = cache.get_or_load(_mem("a"), "fp32", "cpu", CountingLoader())
    handle_a = cache.handle_for(a)
    b = cache.get_or_load(_mem("b"), "fp32", "cpu", CountingLoader())
    assert hook.released == [handle_a]
    # the evicted model is still in use: asking for it brings it back under a fresh handle
    assert cache.handle_for(a) != handle_a and len(hook.wrapped) == 3
    assert cache.stats().revivals == 1 and cache.keys()[-1].source == _mem("a")
    cache.clear()
    assert len(hook.released) == 3
    del b


def test_handle_for_uses_the_current_hook():
    first, second = RecordingHook(), RecordingHook()
    cache = ModelCache(budget_bytes=GiB, hook=first)
    model = cache.get_or_load(_mem("a"), "fp32", "cpu", CountingLoader())
    cache.set_residency_hook(second)
    assert len(first.released) == 1
    cache.handle_for(model)
    assert [m for m, _ in second.wrapped] == [model]


def test_handle_for_refuses_a_foreign_model():
    with pytest.raises(ValueError, match="not loaded through this model cache"):
        ModelCache(budget_bytes=GiB).handle_for(nn.Linear(2, 2))
