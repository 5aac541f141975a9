"""Packed data (``mtd data pack``, mtd_core/data/loader.py) against in-memory data: loader and training throughput at
the cpu preset's batch, and resident memory as the packed dataset grows tenfold.

    nice python benchmarks/loader.py                 N = 6000 and 10N = 60000 examples (about a minute on 2 cores)
    nice python benchmarks/loader.py --n 60000       N = 60000 and 10N = 600000, the issue's size (~0.5 GB of shards)

Synthetic data: 28x28 grey images (8-bit pixels, stored as uint8) and labels, packed into a temporary folder (or
--work). Measured:

    loader   examples/s of the batches alone, the trainer's way, one torch thread: in memory (``LoadedData.batch``)
             and packed (``StreamLoader.batch`` with --workers worker processes reading ahead); --batches batches;
             and the CPU time the training process itself spends per batch (the workers' is not in it).
    train    examples/s of training steps (one thread) on the same N examples in memory and packed, one step of
             each in turn (--train-steps per path after a warm-up step; 0 skips it); --model small (channels 16, the default:
             a fast step, so the loader's share shows most) or cpu (the cpu preset's model, experiments/presets.py).
    memory   the resident set (VmRSS, with its anonymous and file-backed parts) of a fresh process that opens the
             packed dataset (N, then 10N) and reads --batches random batches through the loader without workers.
    verify   how fast the SHA-256 verification at open reads the shards (MB/s), i.e. what ``verify = "checksums"``
             costs per start.

Prints a table; --json also writes the numbers with the load average. Nothing here asserts a target.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch

from mtd_core.data import ArrayDataset, DatasetSplits, LoadedData, load_dataset
from mtd_core.data.loader import stream_loader
from mtd_core.data.packed_write import pack_dataset
from mtd_core.data.sampler import ResumableSampler
from mtd_core.data.splits import images_to_unit_range
from mtd_core.plugins.registry import get_registry

POOL = 4096  # distinct synthetic images; example i shows image i % POOL


def _pool() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (POOL, 1, 28, 28), generator=g, dtype=torch.uint8)
    return images_to_unit_range(pixels, 255), torch.randint(0, 10, (POOL,), generator=g)


class _Synthetic:
    """N synthetic examples, produced one at a time (a source that is never held in memory as a whole)."""

    def __init__(self, n: int, offset: int = 0) -> None:
        self.n, self.offset = n, offset
        self.images, self.labels = _pool()

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Any]:
        j = (i + self.offset) % POOL
        return {"image": self.images[j], "label": self.labels[j]}


class _Registry:
    """The plugin registry plus the dataset "synthetic" (n = the training examples; 1000 test examples)."""

    def __init__(self) -> None:
        self.base = get_registry()

    def dataset(self, name: str) -> Any:
        if name != "synthetic":
            return self.base.dataset(name)

        def factory(n: int = 6000) -> DatasetSplits:
            return DatasetSplits(train=_Synthetic(n), test=_Synthetic(1000, offset=n), info={"name": "synthetic"})
        return factory

    def table(self, kind: str) -> Any:
        return self.base.table(kind)


def pack(n: int, work: Path) -> tuple[Path, float]:
    """Pack n synthetic examples (once per work folder); the folder and the seconds packing took."""
    out = work / f"packed_{n}"
    if (out / "manifest.json").is_file():
        return out, 0.0
    start = time.perf_counter()
    pack_dataset({"name": "synthetic", "n": n}, _Registry(), out, progress=False)  # type: ignore[arg-type]
    return out, time.perf_counter() - start


def loader_rate(data: LoadedData, batch: int, batches: int) -> tuple[float, float]:
    """Examples/s of the trainer's batches of ``data`` (its loader when packed, ``LoadedData.batch`` otherwise),
    and the CPU time the training process spends per batch (ms; the workers' time is not in it)."""
    sampler = ResumableSampler(len(data.splits.train), batch, seed=0)
    loader = stream_loader(data, sampler, [torch.arange(batch)], torch.device("cpu"))
    for _ in range(3):  # warm-up: the workers start and fill their queue
        idx = sampler.next()
        loader.batch(idx) if loader is not None else data.batch(data.splits.train, idx)
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(batches):
        idx = sampler.next()
        loader.batch(idx) if loader is not None else data.batch(data.splits.train, idx)
    rate = batches * batch / (time.perf_counter() - start)
    cpu_ms = (time.process_time() - cpu) / batches * 1e3
    if loader is not None:
        loader.close()
    return rate, cpu_ms


SMALL = {"channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [], "groups": 8}


def _trainer(data: LoadedData, steps: int, batch: int, out: Path, model: str) -> Any:
    from experiments.presets import PRESETS
    from mtd_core.model import MultiTaskModel
    from mtd_core.taskset import TaskSet
    from mtd_core.training import TrainConfig, Trainer

    backbone = dict(PRESETS["cpu"].backbone) if model == "cpu" else dict(SMALL)
    taskset = TaskSet.from_config({"modalities": [{"kind": "image", "role": "base", "channels": 1, "size": 28},
                                                  {"kind": "label", "num_classes": 10}]})
    torch.manual_seed(0)
    config = TrainConfig(steps=steps, batch_size=batch, progress=False, device="cpu", sample_n=0,
                         checkpoint_every=0, log_every=100000, threads=1)
    return Trainer(MultiTaskModel(taskset, "unet", backbone), data, config, out)


def train_rates(paths: dict[str, LoadedData], steps: int, batch: int, work: Path, model: str) -> dict[str, float]:
    """Examples/s of training steps on each path, one step of each in turn (after a warm-up step each, which also
    starts the packed path's workers), so that load drift on a shared machine hits both alike. The steps are the
    trainer's own (``Trainer._train_step``), without logging or checkpoints."""
    trainers = {name: _trainer(data, 1 + steps, batch, work / f"run_{name}", model) for name, data in paths.items()}
    seconds = dict.fromkeys(trainers, 0.0)
    for n in range(1 + steps):
        for name, tr in trainers.items():
            tr.model.train()
            start = time.perf_counter()
            tr._train_step()
            if n:
                seconds[name] += time.perf_counter() - start
            tr.step += 1
    for tr in trainers.values():
        if tr.loader is not None:
            tr.loader.close()
    return {name: steps * batch / s for name, s in seconds.items()}


def _status(key: str) -> int:
    """A /proc/self/status value in KiB (0 where there is none)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def rss_child(path: str, batch: int, batches: int) -> None:
    """(In a fresh process) open the packed dataset, read random batches without workers, print the RSS (JSON)."""
    torch.set_num_threads(1)
    data = load_dataset({"name": "packed", "path": path, "workers": 0, "verify": "sizes"}, get_registry())
    opened = _status("VmRSS")
    loader_rate(data, batch, batches)
    print(json.dumps({"examples": len(data.splits.train), "rss_open_mib": opened / 1024,
                      "rss_mib": _status("VmRSS") / 1024, "rss_file_mib": _status("RssFile") / 1024,
                      "rss_anon_mib": _status("RssAnon") / 1024}))


def rss_of(path: Path, batch: int, batches: int) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "--rss-child", str(path), "--batch", str(batch),
                          "--batches", str(batches)], check=True, capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def verify_rate(path: Path) -> float:
    """MB/s of opening ``path`` with SHA-256 verification (page cache warm: the pack just wrote it)."""
    size = sum(p.stat().st_size for p in path.rglob("*.npy"))
    start = time.perf_counter()
    load_dataset({"name": "packed", "path": str(path)}, get_registry())
    return size / 1e6 / (time.perf_counter() - start)


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    torch.set_num_threads(1)  # as a training process with trainer.threads = 1; torch's threads on a busy machine
    # would time the thread pool, not the reads
    small, t_small = pack(args.n, work)
    large, t_large = pack(10 * args.n, work)
    images, labels = _pool()
    idx = torch.arange(args.n) % POOL
    memory = LoadedData(splits=DatasetSplits(train=ArrayDataset({"image": images[idx], "label": labels[idx]}, "memory"),
                                             test=ArrayDataset({"image": images[:10], "label": labels[:10]}, "m")))
    packed = load_dataset({"name": "packed", "path": str(small), "workers": args.workers}, get_registry())
    rates = {"memory": loader_rate(memory, args.batch, args.batches),
             "packed": loader_rate(packed, args.batch, args.batches)}
    out: dict[str, Any] = {"n": args.n, "batch": args.batch, "workers": args.workers,
                           "pack_s": {"n": t_small, "10n": t_large}, "verify_mb_s": verify_rate(large),
                           "loader_ex_s": {k: v[0] for k, v in rates.items()},
                           "loader_cpu_ms_per_batch": {k: v[1] for k, v in rates.items()}}
    if args.train_steps:
        out["model"] = args.model
        out["train_ex_s"] = train_rates({"memory": memory, "packed": packed}, args.train_steps, args.batch, work,
                                        args.model)
    out["rss"] = {"n": rss_of(small, args.batch, args.batches), "10n": rss_of(large, args.batch, args.batches)}
    out["loadavg"] = os.getloadavg()
    return out


def report(r: dict[str, Any]) -> None:
    print(f"N = {r['n']} (10N = {10 * r['n']}), batch {r['batch']}, {r['workers']} loader workers, model "
          f"{r.get('model', '-')}, load average {r['loadavg'][0]:.2f}")
    print(f"pack: N {r['pack_s']['n']:.1f} s, 10N {r['pack_s']['10n']:.1f} s; SHA-256 verification at open "
          f"{r['verify_mb_s']:.0f} MB/s")
    for what in ("loader_ex_s", "train_ex_s"):
        if what in r:
            m, p = r[what]["memory"], r[what]["packed"]
            print(f"{what[:-5]:>7}: in memory {m:10.0f} ex/s, packed {p:10.0f} ex/s, packed / memory {p / m:.3f}")
    cpu = r["loader_cpu_ms_per_batch"]
    print(f" loader: CPU time of the training process per batch: in memory {cpu['memory']:.3f} ms, packed "
          f"{cpu['packed']:.3f} ms")
    for key in ("n", "10n"):
        s = r["rss"][key]
        print(f"    rss: {s['examples']:>7} examples: {s['rss_mib']:.0f} MiB after reading (anonymous "
              f"{s['rss_anon_mib']:.0f}, file-backed {s['rss_file_mib']:.0f}; {s['rss_open_mib']:.0f} at open)")
    print(f"    rss 10N / N: {r['rss']['10n']['rss_mib'] / r['rss']['n']['rss_mib']:.3f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=6000, help="N: training examples of the small pack (10N for the large)")
    p.add_argument("--batch", type=int, default=64, help="the batch (the cpu preset's: 64)")
    p.add_argument("--batches", type=int, default=300, help="batches timed per loader measurement")
    p.add_argument("--workers", type=int, default=2, help="loader worker processes of the packed path")
    p.add_argument("--train-steps", type=int, default=16, help="timed training steps per path (0: skip)")
    p.add_argument("--model", choices=("small", "cpu"), default="small",
                   help="the model trained: small (channels 16; its fast steps make the loader's share larger, a "
                        "stricter test) or the cpu preset's")
    p.add_argument("--work", help="keep the packed data here (default: a temporary folder, removed)")
    p.add_argument("--json", help="also write the numbers to this file")
    p.add_argument("--rss-child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.rss_child:
        rss_child(args.rss_child, args.batch, args.batches)
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        r = measure(args, work)
    report(r)
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=1) + "\n")


if __name__ == "__main__":
    main()
