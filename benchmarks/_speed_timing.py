"""Timing and peak memory of the speed benchmark's candidates (benchmarks/speed.py): what one candidate is, one
candidate's measurement, and the interleaved timing loop. Imported by speed.py from this folder (benchmarks/ is not
a package), as _diffusers_baseline.py is."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import attrs
import torch


@attrs.frozen
class Candidate:
    """One thing timed.

    Attributes:
        name: its label in the table and the JSON.
        phase: "train" (one call = one optimizer step) or "sample" (one call = one full DDIM run).
        framework: "mtd" or "diffusers".
        params: trainable parameters.
        images: images per call (the batch).
        run: one call; returns something holding the result, so that the device can be synchronised on it.
        warm: a cheap call that warms caches (first kernels, allocator) before timing.
    """

    name: str
    phase: str
    framework: str
    params: int
    images: int
    run: Callable[[], Any]
    warm: Callable[[], Any]


@attrs.frozen
class Result:
    """The measurement of one candidate: per-call seconds of every repeat, their median and the peak memory.

    Attributes:
        seconds: wall-clock seconds per call, one entry per repeat; ``median_s`` and ``min_s`` summarise them.
        cpu_seconds: CPU seconds of this process per call (all its threads), per repeat. With one thread this is
            the work done, nearly blind to other processes taking turns on the cores; with several threads it also
            counts their spin-waiting.
        peak_delta_bytes: the peak during one call above the level before it (CPU: resident set, approximate).
        peak_total_bytes: CUDA only: the peak of all allocated memory (weights and optimizer state included).
    """

    name: str
    phase: str
    framework: str
    params: int
    images: int
    seconds: list[float]
    median_s: float
    min_s: float
    cpu_seconds: list[float]
    cpu_median_s: float
    images_per_s: float
    peak_delta_bytes: int | None
    peak_total_bytes: int | None
    memory_method: str


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously; timing without this measures launches)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _release_cpu_memory() -> None:
    """Return freed heap memory to the OS (glibc), so that the next RSS baseline is not inflated by free chunks."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def measure_memory(fn: Callable[[], Any], device: torch.device) -> tuple[int | None, int | None, str]:
    """(peak delta, peak total, method) of one call of ``fn``."""
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        return peak - before, peak, "torch.cuda.max_memory_allocated"
    _release_cpu_memory()
    before = _rss_bytes()
    if before is None:
        return None, None, "unavailable (no /proc/self/statm)"
    peak = [before]
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            r = _rss_bytes()
            if r is not None and r > peak[0]:
                peak[0] = r
            time.sleep(0.001)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        fn()
    finally:
        done.set()
        thread.join()
    return max(0, max(peak[0], _rss_bytes() or 0) - before), None, "RSS sampled every 1 ms (approximate)"


def run_interleaved(cands: list[Candidate], calls: int, repeats: int, warmup: int,
                    device: torch.device) -> dict[str, tuple[list[float], list[float]]]:
    """Per-call (wall, CPU) seconds of every candidate in every repeat, the candidates taking turns (the start
    rotating from repeat to repeat)."""
    for c in cands:
        for _ in range(warmup):
            c.warm()
    synchronize(device)
    out: dict[str, tuple[list[float], list[float]]] = {c.name: ([], []) for c in cands}
    for r in range(repeats):
        for i in range(len(cands)):
            c = cands[(r + i) % len(cands)]
            print(f"  repeat {r + 1}/{repeats}: {c.name}", file=sys.stderr, flush=True)
            synchronize(device)
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(calls):
                c.run()
            synchronize(device)
            out[c.name][0].append((time.perf_counter() - t0) / calls)
            out[c.name][1].append((time.process_time() - c0) / calls)
    return out


def results_of(cands: list[Candidate], times: dict[str, tuple[list[float], list[float]]],
               device: torch.device) -> list[Result]:
    """Every candidate's Result from its timings (``run_interleaved``) and the peak memory of one more call."""
    results = []
    for c in cands:
        # the warm-up call: one training step, or a 2-step sampling run (a sampler's peak does not grow with steps)
        delta, total, method = measure_memory(c.warm, device)
        wall, cpu = times[c.name]
        med = statistics.median(wall)
        results.append(Result(c.name, c.phase, c.framework, c.params, c.images, wall, med, min(wall), cpu,
                              statistics.median(cpu), c.images / med, delta, total, method))
    return results


__all__ = ["Candidate", "Result", "measure_memory", "results_of", "run_interleaved", "synchronize"]
