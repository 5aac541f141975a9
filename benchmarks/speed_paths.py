"""The trainer's speed paths against the eager float32 step, in one process: the same image + label model and batch
with ``trainer.channels_last``, ``trainer.bf16``, both, and optionally ``trainer.compile``, each a training step
(the loss, backward, AdamW) timed in turns with the others (the start rotating), so load drift hits them alike.

    OMP_NUM_THREADS=1 python benchmarks/speed_paths.py                   # CPU, the benchmark's 28x28 model
    python benchmarks/speed_paths.py --device cuda --size 32 --batch 128 --channels 64 --compile default
    python benchmarks/speed_paths.py --quick                             # seconds: tiny sizes

Prints each form's median step time and its ratio to the eager float32 step (throughput: > 1 is faster), median
and fastest repeat; ``--json`` writes them. Nothing here asserts a target.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _speed_timing import Candidate, run_interleaved

from mtd_core.model import MultiTaskModel
from mtd_core.taskset import TaskSet
from mtd_core.training.speed import prepare_backbone

ARCH = {8: ([1, 2], []), 28: ([1, 2, 2], [7]), 32: ([1, 2, 2], [8])}


def form_candidate(name: str, a: argparse.Namespace, compile_mode: str, channels_last: bool, bf16: bool) -> Candidate:
    """One training-step candidate: the model built from seed 0 (the same weights in every form)."""
    mult, attn = ARCH[a.size]
    torch.manual_seed(0)
    ts = TaskSet.from_config({"modalities": [{"kind": "image", "role": "base", "channels": 1, "size": a.size},
                                             {"kind": "label", "num_classes": 10}]})
    model = MultiTaskModel(ts, "unet", {"channels": a.channels, "channel_mult": mult, "num_res_blocks": a.blocks,
                                        "attention_resolutions": attn, "groups": 8}).to(a.device).train()
    prepare_backbone(model, compile_mode, channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    batch = {"image": (torch.rand(a.batch, 1, a.size, a.size, generator=g) * 2 - 1).to(a.device),
             "label": torch.randint(0, 10, (a.batch,), generator=g).to(a.device)}
    gen = torch.Generator(a.device).manual_seed(0)
    dev_type = torch.device(a.device).type

    def step() -> torch.Tensor:
        with torch.autocast(dev_type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
            loss = model.loss(batch, generator=gen).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    return Candidate(name, "train", "mtd", sum(p.numel() for p in model.parameters()), a.batch, step, step)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--size", type=int, choices=sorted(ARCH), default=28)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--channels", type=int, default=32)
    p.add_argument("--blocks", type=int, default=2, help="residual blocks per level")
    p.add_argument("--steps", type=int, default=3, help="timed steps per repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--compile", default="off", help="also time this torch.compile mode (bf16 + channels-last)")
    p.add_argument("--quick", action="store_true", help="size 8, batch 4, one step: a smoke run")
    p.add_argument("--json", type=Path)
    a = p.parse_args(argv)
    if a.quick:
        a.size, a.batch, a.channels, a.blocks, a.steps, a.repeats, a.warmup = 8, 4, 8, 1, 1, 2, 1
    forms = [("eager fp32", "off", False, False), ("channels-last", "off", True, False), ("bf16", "off", False, True),
             ("bf16 + channels-last", "off", True, True)]
    if a.compile != "off":
        forms.append((f"compile {a.compile} + bf16 + channels-last", a.compile, True, True))
    load_start, started = os.getloadavg(), time.time()
    cands = [form_candidate(name, a, mode, cl, bf16) for name, mode, cl, bf16 in forms]
    dev = torch.device(a.device)
    times = run_interleaved(cands, a.steps, a.repeats, a.warmup, dev)
    base = sorted(times["eager fp32"][0])
    rows = []
    print(f"{'form':<44}{'ms/step':>10}{'best ms':>10}{'vs eager fp32':>15}{'best':>8}")
    for c in cands:
        wall = sorted(times[c.name][0])
        med, best = wall[len(wall) // 2], wall[0]
        rows.append({"form": c.name, "median_s": med, "min_s": best, "ratio": base[len(base) // 2] / med,
                     "ratio_best": base[0] / best, "seconds": wall})
        print(f"{c.name:<44}{1000 * med:>10.1f}{1000 * best:>10.1f}{rows[-1]['ratio']:>15.3f}"
              f"{rows[-1]['ratio_best']:>8.3f}")
    load = {"start": list(load_start), "end": list(os.getloadavg())}
    out: dict[str, Any] = {"args": vars(a) | {"json": None}, "params": cands[0].params,
                           "threads": torch.get_num_threads(),
           "load_average": load, "rows": rows,
           "wall_s": time.time() - started}
    print(f"load average start {load['start']}, end {load['end']}; "
          f"{out['wall_s']:.0f} s; {out['threads']} thread(s); {out['params']:,} parameters")
    if a.json:
        a.json.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    return out


if __name__ == "__main__":
    main()
