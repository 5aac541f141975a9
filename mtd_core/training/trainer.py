"""The training loop: AdamW with warm-up, gradient clipping, an EMA of the weights, optional bf16 autocast,
seeded determinism, data-parallel processes, periodic sample grids, a JSON-lines metrics log, a progress bar,
safe checkpoints, ``--resume``, clean stops on SIGINT/SIGTERM, and a clear stop on a non-finite loss.

Determinism: every random draw of step n (t, eps, the known parts hidden, derived modalities such as masks, the
global torch RNG used by dropout) comes from generators seeded by (seed, n, rank), the data order from the
sampler's (seed, epoch): a resumed run continues exactly as if it had never stopped (on CPU: bit-identical
weights), and t, eps and the hidden parts of every example are the same whatever the number of processes.

Run folder layout (``out_dir``): config.json (the resolved config), metrics.jsonl, tensorboard/ (optional: logs.py),
samples/step_<n>.png, checkpoints/step_<n>/ (mtd_core/training/checkpoint.py).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import attrs
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from mtd_core.data.build import LoadedData
from mtd_core.data.derive import derive_batch, model_inputs
from mtd_core.data.loader import stream_loader
from mtd_core.data.sampler import ResumableSampler
from mtd_core.data.splits import DatasetSplits
from mtd_core.diffusion.loss import LossOutput
from mtd_core.errors import ConfigError
from mtd_core.model import MultiTaskModel
from mtd_core.training.accumulate import accumulate_gradients
from mtd_core.training.checkpoint import Checkpoint, list_checkpoints, recover_run, save_checkpoint, write_atomic
from mtd_core.training.config import TrainConfig, check_accumulate
from mtd_core.training.console import ProgressBar, install_stop_handlers, progress_bar
from mtd_core.training.datapaths import MARK, MARK_KEY, stored_run_config
from mtd_core.training.distributed import DistContext, device_for
from mtd_core.training.ema_bank import EMABank
from mtd_core.training.grids import render_grid, sample_cells, save_png
from mtd_core.training.guard import check_parameters, diverged
from mtd_core.training.logs import TensorBoardLog
from mtd_core.training.resume import resume_trainer, trim_metrics
from mtd_core.training.speed import prepare_backbone
from mtd_core.training.state import capture_rng_state
from mtd_core.training.step import clip_gradients, lr_at, micro_positions, mix_seed, set_lr
from mtd_core.types import ConfigDict, ConfigMapping

BAR_EVERY = 10  # steps between progress-bar text updates


@attrs.frozen
class TrainResult:
    """How a call to :meth:`Trainer.fit` ended.

    Attributes:
        step: the steps taken in total (over every resume).
        status: "finished" (reached ``steps``), "paused" (reached ``until``) or "interrupted" (SIGINT/SIGTERM).
        checkpoint: the checkpoint saved last, or None.
        metrics: the last logged metrics (averaged over data-parallel processes).
        elapsed_s: training time in seconds, over every resume.
        examples_per_s: the training throughput of this call.
        grid: the last sample grid written, or None.
    """

    step: int
    status: str
    checkpoint: Path | None
    metrics: dict[str, float]
    elapsed_s: float
    examples_per_s: float
    grid: Path | None = None


class _LossModule(nn.Module):
    """The model's loss as a module forward, so DistributedDataParallel sees every parameter used by a step."""

    def __init__(self, model: MultiTaskModel, kind: str) -> None:
        super().__init__()
        self.model, self.kind = model, kind

    def forward(self, batch: Mapping[str, torch.Tensor], t: torch.Tensor, eps: torch.Tensor,
                hide: torch.Tensor | None = None) -> LossOutput:
        return self.model.loss(batch, self.kind, t=t, eps=eps, hide=hide)


class Trainer:
    """Trains a MultiTaskModel on a dataset.

    Args:
        model: the model (freshly built, or with weights to be restored by ``resume``); moved to the device.
        data: the dataset (a LoadedData from mtd_core.data.load_dataset, or DatasetSplits without transforms).
        config: the training options.
        out_dir: the run folder (created). Must not hold checkpoints unless ``resume`` is set.
        run_config: the resolved run config stored in config.json and every checkpoint (default: the model and
            trainer configs only), its relative dataset paths rewritten relative to ``out_dir``
            (mtd_core/training/datapaths.py); ``mtd sample``/``mtd eval`` rebuild the run from it.
        resume: continue from the latest checkpoint in ``out_dir`` (weights, EMA, optimizer, data order, RNG).
            Either way the leftovers of a killed save are recovered first (``recover_run``), and the lines of
            metrics.jsonl past the step training starts from are dropped.
        dist: this process's data-parallel context (default: a single process).
        class_names: display names of label values in sample grids (default: the dataset info's).
    """

    def __init__(self, model: MultiTaskModel, data: LoadedData | DatasetSplits, config: TrainConfig,
                 out_dir: str | Path, *, run_config: ConfigMapping | None = None, resume: bool = False,
                 dist: DistContext | None = None, class_names: list[str] | None = None) -> None:
        self.config = config
        self.dist = dist or DistContext()
        self.out_dir = Path(out_dir)
        self.data = data if isinstance(data, LoadedData) else LoadedData(splits=data)
        self.taskset = model.taskset
        self.class_names = class_names or self.data.info.get("class_names")
        if config.threads:
            torch.set_num_threads(config.threads)
        self.device = device_for(self.dist, config.device)
        self.model = model.to(self.device)
        prepare_backbone(self.model, config.compile, config.channels_last)  # opt-in speed paths (speed.py)
        self.run_config = (stored_run_config(run_config, self.out_dir) if run_config is not None  # datapaths.py
                           else {"trainer": config.to_dict()})
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.lr, betas=config.betas,
                                           weight_decay=config.weight_decay)
        self.emas = EMABank.from_config(self.model, config).to(self.device)  # every EMA by name (ema_bank.py)
        self.ema = self.emas.default  # the default EMA: sample grids, load_run(path)
        self.tensorboard = TensorBoardLog(self.out_dir / "tensorboard", config.tensorboard, self.dist.is_main)
        if config.accumulate > 1:  # every rank's every micro-step gets the same number of examples
            check_accumulate(config.batch_size, config.accumulate, self.dist.world_size)
        self.sampler = ResumableSampler(len(self.data.splits.train), config.batch_size, seed=config.seed,
                                        rank=self.dist.rank, world_size=self.dist.world_size)
        self.step = 0
        self.elapsed_s = 0.0
        self.examples_seen = 0
        self.metrics: dict[str, float] = {}
        self.last_checkpoint: Path | None = None
        self.last_grid: Path | None = None
        self._stop: str | None = None
        self.checkpoint_dir = self.out_dir / "checkpoints"
        self._saved_step: int | None = None  # the step of the checkpoint this trainer last wrote or resumed from
        if self.dist.is_main:
            recover_run(self.checkpoint_dir)  # a kill inside an earlier save: its leftovers, put back or removed
        self.dist.barrier()
        if resume:
            resume_trainer(self)
        elif list_checkpoints(self.checkpoint_dir):
            raise ConfigError(f"{self.out_dir} already holds checkpoints of a run; pass --resume (resume=True) to "
                              "continue it, or choose another output folder")
        if self.dist.is_main:  # lines a stopped run logged past the step this one starts from (0: all of them)
            trim_metrics(self.out_dir / "metrics.jsonl", self.step)
        # data not in memory (a packed dataset): read ahead by worker processes, replaying the sampler (loader.py)
        self.loader = stream_loader(self.data, self.sampler, micro_positions(
            config.batch_size, self.dist.world_size, self.dist.rank, config.accumulate), self.device, self.taskset)
        self.loss_module: nn.Module = _LossModule(self.model, config.loss)
        if self.dist.enabled:
            self.loss_module = self._wrap_ddp()

    # -- setup -----------------------------------------------------------------------------------------
    def _checkpoint_config(self) -> ConfigDict:
        return {"model": self.model.config(), "run": self.run_config, "dataset_info": self.data.info,
                "world_size": self.dist.world_size, MARK_KEY: MARK}

    def _wrap_ddp(self) -> nn.Module:
        """DistributedDataParallel around the loss; parameters no step uses (e.g. features no head reads) are
        detected with a probe step so DDP is told to expect them."""
        probe = self._local_batch(torch.arange(min(2, len(self.data.splits.train))), torch.Generator().manual_seed(0))
        t = torch.ones(len(next(iter(probe.values()))), dtype=torch.long, device=self.device)
        eps = torch.zeros(len(t), *self.taskset.latent.shape, device=self.device)
        buffers = {k: v.clone() for k, v in self.model.named_buffers()}  # the probe must leave no trace
        self.loss_module(probe, t, eps).loss.backward()
        unused = any(p.grad is None for p in self.model.parameters() if p.requires_grad)
        self.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            for k, v in self.model.named_buffers():
                v.copy_(buffers[k])
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(self.loss_module, device_ids=ids, find_unused_parameters=unused)

    # -- one step ----------------------------------------------------------------------------------------
    def _local_batch(self, indices: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        batch = (self.loader.batch(indices) if self.loader is not None
                 else self.data.batch(self.data.splits.train, indices))
        return model_inputs(self.taskset, derive_batch(self.taskset, batch, generator))

    def _train_step(self) -> tuple[LossOutput, float]:
        cfg, rank, world = self.config, self.dist.rank, self.dist.world_size
        seed, n = cfg.seed, self.step
        torch.manual_seed(mix_seed(seed, n, 1000 + rank))  # dropout and anything else on the global RNG
        noise_gen = torch.Generator().manual_seed(mix_seed(seed, n, 0))
        derive_gen = torch.Generator().manual_seed(mix_seed(seed, n, 1 + rank))
        global_idx = self.sampler.next_global()
        # this rank's examples: its part of each micro-step's slice of the global batch (accumulate = 1: the r-th
        # slice); derived modalities are drawn for all of them at once, as without accumulation
        local = torch.cat(micro_positions(cfg.batch_size, world, rank, cfg.accumulate))
        batch = self._local_batch(global_idx[local], derive_gen)
        # t, eps and the known parts hidden, drawn for the whole global batch and sliced (whatever the processes
        # and micro-steps)
        ts, B = self.taskset, cfg.batch_size
        t = torch.randint(1, ts.forward_process().T + 1, (B,), generator=noise_gen)[local].to(self.device)
        eps = torch.randn(B, *ts.latent.shape, generator=noise_gen)[local].to(self.device)
        hide = torch.rand(B, len(ts.aggregated), generator=noise_gen)[local] if ts.known_input else None
        set_lr(self.optimizer, lr_at(cfg, n))
        out = self._accumulate_gradients(batch, t, eps, hide)
        norm = clip_gradients(self.model, cfg.grad_clip, cfg.grad_clip_scope)
        # One host-device synchronisation per step, after backward so that every rank reaches the gradient
        # all-reduce: whether the loss is finite on every rank, and the gradient norm (the same on every rank).
        loss_bad, norm_bad, grad_norm = self.dist.all_max(torch.stack([
            (~torch.isfinite(out.loss.detach())).float(), (~torch.isfinite(norm)).float(), norm.float()])).tolist()
        if loss_bad or norm_bad:  # the update of this step is discarded
            self.optimizer.zero_grad(set_to_none=True)
            raise diverged(self.taskset, out, grad_norm, self.step, bool(loss_bad), self.last_checkpoint)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        check_parameters(self.model, self.step, lr_at(self.config, self.step), self.last_checkpoint)
        self.emas.update(self.model)
        return out, grad_norm

    def _accumulate_gradients(self, batch: Mapping[str, torch.Tensor], t: torch.Tensor, eps: torch.Tensor,
                              hide: torch.Tensor | None) -> LossOutput:
        """Backward over ``accumulate`` micro-batches (mtd_core/training/accumulate.py); the step's loss and terms."""
        def autocast() -> contextlib.AbstractContextManager[object]:
            return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.bf16)
        return accumulate_gradients(self.model, self.loss_module, batch, t, eps, hide, self.config.accumulate, autocast)

    # -- the loop ------------------------------------------------------------------------------------------
    def fit(self, until: int | None = None) -> TrainResult:
        """Train to ``config.steps`` (or to step ``until``), then save a checkpoint and a sample grid.

        SIGINT and SIGTERM stop the run after the current step with a checkpoint (a second SIGINT aborts at
        once). A non-finite loss raises :class:`NonFiniteLossError` without saving the bad step.
        """
        cfg = self.config
        target = min(cfg.steps, until) if until is not None else cfg.steps
        self._start_logs()
        self.model.train()
        restore = self._install_signal_handlers()
        bar = self._progress_bar(target)
        start, start_step = time.perf_counter(), self.step
        window_t, window_n = start, 0
        status = "finished" if target == cfg.steps else "paused"
        try:
            while self.step < target:
                if self.dist.any(self._stop is not None):
                    status = "interrupted"
                    break
                out, grad_norm = self._train_step()
                self.step += 1
                self.examples_seen += cfg.batch_size
                window_n += cfg.batch_size
                if bar is not None:
                    bar.update(1)
                    if self.step % BAR_EVERY == 0:  # this rank's loss; the logged one is averaged over ranks
                        rate = window_n / max(time.perf_counter() - window_t, 1e-9)
                        bar.set_postfix(loss=f"{float(out.loss.detach()):.4f}", ex_s=f"{rate:.0f}", refresh=False)
                if self.step % cfg.log_every == 0 or self.step == target:
                    now = time.perf_counter()
                    rate = window_n / max(now - window_t, 1e-9)
                    self._log(out, grad_norm, rate, self.elapsed_s + now - start, bar)
                    window_t, window_n = now, 0
                if cfg.sample_every and self.step % cfg.sample_every == 0 and self.step != target:
                    self.sample_grid()
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.step != target:
                    self.save(self.elapsed_s + time.perf_counter() - start)
            took = time.perf_counter() - start
            self.elapsed_s += took
            # A step already saved (--resume of a finished run, a stop right after a periodic save) is not written
            # again: replacing a checkpoint by an identical one only risks it. The signal handlers stay in place
            # until the checkpoint is written, so a second Ctrl-C during the save aborts it cleanly (exit 130).
            saved = self.step == self._saved_step
            ckpt = self.checkpoint_dir / f"step_{self.step:08d}" if saved else self.save(self.elapsed_s)
        finally:
            if bar is not None:
                bar.close()
            self.tensorboard.close()
            restore()
        if status == "interrupted" and self.dist.is_main:
            print(f"mtd: stopped by {self._stop} at step {self.step}; checkpoint saved to {ckpt}.\n"
                  f"Continue with the same command plus --resume.")
        elif status == "finished" and cfg.sample_n:
            self.sample_grid()
        rate = (self.step - start_step) * cfg.batch_size / max(took, 1e-9)
        return TrainResult(step=self.step, status=status, checkpoint=ckpt, metrics=dict(self.metrics),
                           elapsed_s=self.elapsed_s, examples_per_s=rate, grid=self.last_grid)

    def _start_logs(self) -> None:
        """config.json (rank 0) and the TensorBoard writer (logs.py), at the start of :meth:`fit`."""
        if self.dist.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            write_atomic(self.out_dir / "config.json", json.dumps(self.run_config, indent=1, sort_keys=True))
        self.tensorboard.open(self.step)

    def request_stop(self, reason: str = "request") -> None:
        """Stop after the current step with a checkpoint (what SIGINT/SIGTERM do)."""
        self._stop = reason

    def _install_signal_handlers(self) -> Callable[[], None]:
        return install_stop_handlers(lambda: self._stop is not None, self.request_stop, self.dist.is_main)

    def _progress_bar(self, target: int) -> ProgressBar | None:
        return progress_bar(self.config.progress and self.dist.is_main, target, self.step)

    def _log(self, out: LossOutput, grad_norm: float, rate: float, elapsed: float, bar: ProgressBar | None) -> None:
        values = {"loss": float(out.loss.detach()), **{f"loss_{k}": v for k, v in out.terms.items()},
                  "grad_norm": grad_norm}
        values = self.dist.mean(values)
        self.metrics = {"step": self.step, **values, "lr": lr_at(self.config, self.step - 1),
                        "examples_per_s": rate, "elapsed_s": elapsed}
        if not self.dist.is_main:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.out_dir / "metrics.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(self.metrics) + "\n")
        self.tensorboard.write(self.metrics)
        if bar is not None:
            bar.set_postfix(loss=f"{values['loss']:.4f}", ex_s=f"{rate:.0f}")

    # -- outputs -------------------------------------------------------------------------------------------
    def save(self, elapsed_s: float | None = None) -> Path:
        """Save a checkpoint of the current step (rank 0 writes; every rank waits). Returns its folder."""
        if self.dist.is_main:
            trainer_state = {"sampler": self.sampler.state_dict(), "ema_updates": self.ema.updates if self.ema else 0,
                             "elapsed_s": self.elapsed_s if elapsed_s is None else elapsed_s,
                             "examples_seen": self.examples_seen, "metrics": self.metrics}
            ckpt = Checkpoint(step=self.step, model=self.model.state_dict(), config=self._checkpoint_config(),
                              ema=self.ema.state_dict() if self.ema else None, optimizer=self.optimizer.state_dict(),
                              rng=capture_rng_state(), trainer=trainer_state,
                              assets=self.model.assets(), emas=self.emas.further())
            self.last_checkpoint = save_checkpoint(self.checkpoint_dir, ckpt, keep_last=self.config.keep_last)
        self._saved_step = self.step
        self.dist.barrier()
        return self.checkpoint_dir / f"step_{self.step:08d}"

    def sample_grid(self, n: int | None = None, path: str | Path | None = None) -> Path | None:
        """Generate ``n`` joint samples with the EMA weights and write them as a captioned PNG grid (rank 0)."""
        from mtd_core.sampling.generate import generate

        n = n or self.config.sample_n
        if not self.dist.is_main or not n:
            self.dist.barrier()
            return None
        path = Path(path) if path is not None else self.out_dir / "samples" / f"step_{self.step:08d}.png"
        g = torch.Generator(self.device).manual_seed(self.config.seed)
        ctx = self.ema.applied(self.model) if self.ema is not None else contextlib.nullcontext()
        with ctx:
            out = generate(self.model, n=n, sampler=self.config.sample_sampler, steps=self.config.sample_steps,
                           generator=g, progress=False)
        self.model.train()
        cells = sample_cells(self.taskset, out.samples, self.class_names)
        ncols = max(1, math.ceil(math.sqrt(n)))
        save_png(path, render_grid(cells, ncols, title=f"step {self.step}"))
        self.last_grid = path
        self.dist.barrier()
        return path
