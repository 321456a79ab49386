"""One generic engine for every method: set-up, train_one_epoch, evaluate, checkpoint/resume, fit.

    run = setup(config)            # data, method, optimiser, schedule, loaders, run directory (or resume)
    fit(config) -> final metrics   # epochs of train_one_epoch + evaluate_run, checkpoints, report

CUDA: bf16 autocast, channels_last, optional torch.compile (each child module of the method, in place),
DDP under torchrun (gloo on CPU, nccl on CUDA; see training.distributed for per-sample state). The device
choice and its reason are logged (training.device), with one line when a CUDA recipe runs on a CPU.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from pipeline.contract.classes import class_names
from pipeline.contract.errors import ConfigError, FerError
from training import distributed as ddp
from training.checkpoint import LAST, load_checkpoint, save_checkpoint, set_rng_state
from training.config import TrainConfig, build_method_config, save_config, validate_choices
from training.data import PreparedVersion, SplitData
from training.device import check_step_memory, choose_device, configure_runtime, seed_everything
from training.evaluate import branch_accuracies, classification_metrics, flip_recovery, js_divergence_bits, predict
from training.loader import build_sampler, check_needs, eval_loader, to_device, train_loader
from training.methods import DataInfo, Method, StepInfo, method_class
from training.optim import build_optimizer, build_scheduler, lr_factor  # noqa: F401 (re-exported)
from training.preflight import check_against_version, check_run_dir, check_settings
from training.report import MetricsLogger, write_report
from training.run_lock import RunLock

log = logging.getLogger(__name__)

ENGINE_VERSION = "1.0"


@dataclass
class TrainState:
    step: int = 0          # optimiser steps done
    epoch: int = 0         # current epoch (0-based)
    position: int = 0      # batches of `epoch` already consumed
    history: list = field(default_factory=list)  # evaluation records


@dataclass
class Run:
    config: TrainConfig
    dist: ddp.DistInfo
    device: torch.device
    run_dir: Path
    version: PreparedVersion
    train: SplitData
    test: SplitData
    method: Method
    step_module: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    sampler: object
    train_loader: torch.utils.data.DataLoader
    eval_loaders: dict
    logger: MetricsLogger
    state: TrainState
    total_steps: int
    run_lock: RunLock | None = None     # rank 0 owns the run folder while it trains

    def autocast(self):
        if self.device.type == "cuda" and self.config.runtime.bf16:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @property
    def channels_last(self) -> bool:
        return self.device.type == "cuda" and self.config.runtime.channels_last


class _TrainStep(nn.Module):
    """Makes training_step the forward, so DDP and torch.compile see it."""

    def __init__(self, method: Method):
        super().__init__()
        self.method = method

    def forward(self, batch: dict, info: StepInfo) -> dict:
        return self.method.training_step(batch, info)


def make_run_dir(config: TrainConfig, dist: ddp.DistInfo) -> Path:
    root = Path(config.runtime.runs_root or os.environ.get("FER_RUNS") or
                Path(__file__).resolve().parent.parent / "runs")
    run_id = config.runtime.run_id or f"{config.dataset}-{config.method}-{config.noise}-{time.strftime('%Y%m%d-%H%M%S')}"
    if dist.is_main and not config.runtime.resume:
        base, k = run_id, 1
        while (root / run_id).exists() and not config.runtime.run_id:
            run_id, k = f"{base}-{k}", k + 1
    run_id = ddp.broadcast_object(run_id)
    return root / run_id


def data_info(config: TrainConfig, version: PreparedVersion, train: SplitData) -> tuple[DataInfo, dict]:
    graphs = {space: version.train_graph(space, train) for space in version.graph_spaces()}
    info = DataInfo(
        num_classes=version.num_classes, num_train=len(train),
        class_counts=tuple(int(c) for c in train.class_counts(version.num_classes)),
        num_landmarks=version.num_landmarks, train_labels=torch.from_numpy(train.label.copy()),
        graphs={s: (torch.from_numpy(n), torch.from_numpy(w)) for s, (n, w) in graphs.items()},
        has_va=version.va is not None, has_votes=version.votes is not None, image_size=config.data.image_size)
    return info, graphs


def setup(config: TrainConfig) -> Run:
    """Build everything a run needs; resumes from config.runtime.resume when set."""
    validate_choices(config)
    check_settings(config)
    method_cls = method_class(config.method)
    device = choose_device(config)
    dist = ddp.init_distributed(device.type)
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    configure_runtime(config, device)
    version = PreparedVersion.open(config.dataset, config.version, config.artifacts_root, config.manifests_root)
    train, test = version.split_data("train", config.noise), version.eval_split(config.noise)
    check_against_version(config, version)
    info, graphs = data_info(config, version, train)
    seed_everything(config.runtime.seed)  # same initial weights on every rank
    method = method_cls(build_method_config(config), info).to(device)
    check_needs(method.needs, version, config.method)  # the instance's needs: its config may narrow them
    if device.type == "cuda" and config.runtime.channels_last:
        method = method.to(memory_format=torch.channels_last)
    seed_everything(config.runtime.seed + dist.rank)
    step_module: nn.Module = _TrainStep(method)
    if dist.enabled:
        step_module = nn.parallel.DistributedDataParallel(
            step_module, broadcast_buffers=False, find_unused_parameters=config.runtime.ddp_find_unused)
    if config.runtime.compile:
        for child in method.children():
            child.compile()
    sampler = build_sampler(config, method.needs, version, train, dist, graphs)
    total = len(sampler) * config.epochs
    check_step_memory(config, method, len(sampler.plan(sampler.epoch)[0].indices), device)
    optimizer = build_optimizer(method, config, device)
    run_dir = make_run_dir(config, dist)
    check_run_dir(run_dir)
    config = config_replace(config, runtime={"run_id": run_dir.name, "runs_root": str(run_dir.parent)})
    eval_loaders = {"test": eval_loader(config, version, test, device)} if dist.is_main else {}
    if train.flipped.any() and dist.is_main:  # rank 0 evaluates; the others wait at a barrier
        flipped = SplitData("train-flipped", config.noise, train.sample_id[train.flipped],
                            train.label[train.flipped], train.clean_label[train.flipped])
        eval_loaders["flipped"] = eval_loader(config, version, flipped, device)
    if dist.is_main and getattr(method, "eval_branches", None) and "val" in version.splits() and test.name != "val":
        # a method with evaluation branches is scored per branch on validation each epoch (epoch_diagnostics)
        eval_loaders["val"] = eval_loader(config, version, version.split_data("val", config.noise), device)
    run_lock = RunLock(run_dir) if dist.is_main else None   # refuses while another trainer holds the folder
    try:
        if dist.is_main:
            save_config(config, run_dir / "config.yaml")
        run = Run(config, dist, device, run_dir, version, train, test, method, step_module, optimizer,
                  build_scheduler(optimizer, config, len(sampler), total), sampler,
                  train_loader(config, version, train, method.needs, sampler, device), eval_loaders,
                  MetricsLogger(run_dir if dist.is_main else None, config.runtime.tensorboard), TrainState(), total,
                  run_lock)
        if config.runtime.resume:
            resume(run, config.runtime.resume)
    except BaseException:
        if run_lock is not None:
            run_lock.release()
        raise
    return run


def resume(run: Run, path: str) -> None:
    ckpt = load_checkpoint(path)
    if ckpt["dataset_version"] != run.version.version:
        raise ConfigError(f"checkpoint {path} was trained on {run.config.dataset} version {ckpt['dataset_version']}, "
                          f"this run opened {run.version.version}; pass --set version={ckpt['dataset_version']}")
    run.method.load_state_dict(ckpt["method"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.scheduler.load_state_dict(ckpt["scheduler"])
    run.sampler.load_state_dict(ckpt["sampler"])
    run.state = TrainState(ckpt["step"], ckpt["epoch"], ckpt["position"], list(ckpt["history"]))
    set_rng_state(ckpt["rng"])
    if run.dist.rank > 0:  # rank 0's RNG was saved; keep the others distinct
        torch.manual_seed(run.config.runtime.seed + 1000 * run.dist.rank + run.state.step)
    log.info("resumed from %s at epoch %d, batch %d, step %d", path, run.state.epoch, run.state.position,
             run.state.step)


def save(run: Run, name: str = LAST) -> None:
    if not run.dist.is_main:
        return
    s = run.state
    save_checkpoint(run.run_dir / "checkpoints" / name, method=run.method, optimizer=run.optimizer,
                    scheduler=run.scheduler, sampler_state=run.sampler.state_dict(s.position), step=s.step,
                    epoch=s.epoch, position=s.position, history=s.history, config=run.config.to_dict(),
                    dataset_version=run.version.version)


@dataclass
class _Window:
    """Training numbers since the last metrics record (one record per runtime.log_every steps)."""

    losses: list = field(default_factory=list)      # per step: {name: scalar tensor}
    correct: list = field(default_factory=list)     # per step: batch accuracy on the training labels
    images: int = 0
    start: float = field(default_factory=time.perf_counter)

    def add(self, out: dict, batch: dict) -> None:
        self.losses.append({k: v.detach() for k, v in out.items()
                            if k != "logits" and torch.is_tensor(v) and v.dim() == 0})
        if "logits" in out and out["logits"].shape[0] == batch["label"].shape[0]:
            self.correct.append((out["logits"].detach().argmax(1) == batch["label"]).float().mean())
        self.images += batch["label"].shape[0]


def _log_window(run: Run, window: _Window, bar) -> _Window:
    """Write the window's means to metrics.jsonl and the progress bar; returns a fresh window."""
    record = {"kind": "train", "step": run.state.step, "epoch": run.state.epoch}
    for key in window.losses[0]:
        record[key] = float(torch.stack([part[key] for part in window.losses]).float().mean())
    if not math.isfinite(record["loss"]):
        raise FerError(f"the training loss became {record['loss']} at step {run.state.step}; lower optim.lr, "
                       f"set optim.grad_clip, or disable bf16 (--set runtime.bf16=false)")
    if window.correct:
        record["train_acc"] = float(torch.stack(window.correct).float().mean())
    record["lr"] = run.optimizer.param_groups[0]["lr"]
    record["images_per_s"] = window.images * run.dist.world_size / max(time.perf_counter() - window.start, 1e-9)
    run.logger.log(record)
    bar.set_postfix(loss=f"{record['loss']:.4f}", acc=f"{record.get('train_acc', float('nan')):.3f}",
                    img_s=f"{record['images_per_s']:.0f}")
    return _Window()


def train_step(run: Run, batch: dict, info: StepInfo) -> dict:
    """One optimiser step on a device batch: forward (autocast), backward, clip, step, schedule, hooks."""
    with run.autocast():
        out = run.step_module(batch, info)
    run.optimizer.zero_grad(set_to_none=True)
    out["loss"].backward()
    if run.config.optim.grad_clip > 0:
        nn.utils.clip_grad_norm_(run.method.parameters(), run.config.optim.grad_clip)
    run.optimizer.step()
    run.scheduler.step()
    run.method.after_optimizer_step(info)
    return out


def train_one_epoch(run: Run) -> bool:
    """Train the rest of run.state.epoch under a progress bar; True when max_steps stopped it early."""
    cfg, state = run.config, run.state
    run.sampler.set_epoch(state.epoch, state.position)
    run.method.train()
    bar = tqdm(total=run.sampler.remaining(), desc=f"epoch {state.epoch + 1}/{cfg.epochs}", unit="batch",
               disable=not (cfg.runtime.progress and run.dist.is_main), dynamic_ncols=True)
    window = _Window()
    for raw in run.train_loader:
        batch = to_device(raw, run.device, run.channels_last)
        out = train_step(run, batch, StepInfo(state.epoch, state.step, run.total_steps, cfg.epochs))
        state.step, state.position = state.step + 1, state.position + 1
        window.add(out, batch)
        bar.update(1)
        if state.step % cfg.runtime.log_every == 0:
            window = _log_window(run, window, bar)
        if cfg.runtime.ckpt_every_steps and state.step % cfg.runtime.ckpt_every_steps == 0:
            save(run)
        if cfg.runtime.max_steps and state.step >= cfg.runtime.max_steps:
            bar.close()
            return True
    if window.losses:
        _log_window(run, window, bar)
    bar.close()
    return False


def epoch_diagnostics(run: Run) -> dict:
    """The method's on_epoch_end numbers and, where setup built a validation loader (a method with evaluation
    branches on a version with a val split), each branch's validation accuracy as `val_accuracy_<branch>`."""
    diagnostics = run.method.on_epoch_end(run.state.epoch, run.run_dir) or {}
    if "val" in run.eval_loaders:
        scores = branch_accuracies(run.method, run.eval_loaders["val"], run.device, run.version.num_classes,
                                   channels_last=run.channels_last, autocast=run.autocast)
        diagnostics.update({f"val_accuracy_{branch}": value for branch, value in scores.items()})
    return diagnostics


def evaluate_run(run: Run, diagnostics: dict | None = None) -> dict:
    """Test accuracy / mean class accuracy / confusion; recovered and memorised flipped training samples.

    `diagnostics` are the method's on_epoch_end numbers when the caller already ran it for this epoch;
    otherwise (an evaluation mid-epoch, e.g. after runtime.max_steps) the hook runs here.
    """
    if diagnostics is None:
        diagnostics = epoch_diagnostics(run)
    record = {"kind": "eval", "step": run.state.step, "epoch": run.state.epoch, **diagnostics}
    if run.dist.is_main:
        kw = {"channels_last": run.channels_last, "autocast": run.autocast}
        test = predict(run.method, run.eval_loaders["test"], run.device, **kw)
        metrics = classification_metrics(test["label"], test["logits"].argmax(1), run.version.num_classes)
        record.update({f"test_{k}" if k in ("accuracy", "mean_class_accuracy") else k: v for k, v in metrics.items()})
        if "flipped" in run.eval_loaders:
            flipped = predict(run.method, run.eval_loaders["flipped"], run.device, **kw)
            recovery = flip_recovery(flipped["logits"].argmax(1), flipped["label"], flipped["clean_label"])
            record.update({k: recovery[k] for k in ("n_flipped", "recovered", "memorised")})
        record.update(distribution_metrics(run))
        run.logger.log({k: v for k, v in record.items() if k not in ("confusion", "per_class_accuracy")})
        log.info("epoch %d/%d: test accuracy %.4f, mean class accuracy %.4f%s", run.state.epoch,
                 run.config.epochs, record["test_accuracy"], record["test_mean_class_accuracy"],
                 f", flipped recovered {record['recovered']:.3f}" if "recovered" in record else "")
    ddp.barrier()
    return record


def distribution_metrics(run: Run) -> dict:
    """For a method that keeps per-sample label distributions [N_train, C]: flip recovery of their argmax
    (`target_recovered`) and their Jensen-Shannon divergence in bits from the votes (`votes_js_bits`)."""
    targets = run.method.target_distributions()
    if targets is None:
        return {}
    t = targets.detach().float().cpu().numpy()  # [N_train, C]
    out = {}
    if run.train.flipped.any():
        out["target_recovered"] = flip_recovery(t.argmax(1), run.train.label, run.train.clean_label)["recovered"]
    if run.version.votes is not None:
        out["votes_js_bits"] = float(js_divergence_bits(t, run.version.votes[run.train.sample_id]).mean())
    return out


def fit(config: TrainConfig) -> dict:
    """Train `config` to the end (or to runtime.max_steps); returns the last evaluation record and `run_dir`."""
    run = setup(config)
    try:
        return {**_fit(run), "run_dir": str(run.run_dir)}
    finally:
        run.logger.close()
        if run.run_lock is not None:
            run.run_lock.release()
        ddp.shutdown()


def _fit(run: Run) -> dict:
    cfg, state = run.config, run.state
    final: dict = {}
    evaluated_at = -1
    while state.epoch < cfg.epochs:
        stopped = train_one_epoch(run)
        if stopped:
            break
        state.epoch, state.position = state.epoch + 1, 0
        diagnostics = epoch_diagnostics(run)   # every epoch, every rank (validation branches: rank 0)
        if state.epoch % cfg.runtime.eval_every == 0 or state.epoch == cfg.epochs:
            final, evaluated_at = evaluate_run(run, diagnostics), state.step
        elif diagnostics and run.dist.is_main:
            run.logger.log({"kind": "epoch", "step": state.step, "epoch": state.epoch, **diagnostics})
            state.history.append({k: v for k, v in final.items() if k not in ("confusion", "per_class_accuracy")})
        save(run)
    if evaluated_at != state.step:
        final = evaluate_run(run)
        state.history.append({k: v for k, v in final.items() if k not in ("confusion", "per_class_accuracy")})
    save(run)
    if run.dist.is_main:
        _write_outputs(run, final)
    return final


def _write_outputs(run: Run, final: dict) -> None:
    cfg = run.config
    summary = {"run_id": run.run_dir.name, "dataset": cfg.dataset, "dataset_version": run.version.version,
               "method": cfg.method, "noise": cfg.noise, "steps": run.state.step, "epochs_done": run.state.epoch,
               "engine_version": ENGINE_VERSION, "final": final}
    (run.run_dir / "results.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    if cfg.runtime.report:
        header = {k: summary[k] for k in ("dataset", "dataset_version", "method", "noise", "steps")}
        write_report(run.run_dir, final, class_names(run.version.num_classes), header)
    log.info("run %s done: test accuracy %.4f", run.run_dir, final.get("test_accuracy", float("nan")))


def config_replace(config: TrainConfig, **sections) -> TrainConfig:
    """dataclasses.replace for nested sections: config_replace(cfg, runtime={'max_steps': 3})."""
    changes = {}
    for key, value in sections.items():
        current = getattr(config, key)
        changes[key] = dataclasses.replace(current, **value) if dataclasses.is_dataclass(current) else value
    return dataclasses.replace(config, **changes)
