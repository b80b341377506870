"""The training loop: AdamW + timm's cosine-with-warmup schedule, optional EMA, autocast, gradient
accumulation, validation with the DIS metrics, resumable checkpoints and the model in the official
key layout.

Counting: a *micro-batch* is one forward/backward; an *update* is one optimizer step
(``grad_accum`` micro-batches).  Schedules, logs, validation and checkpoints count updates.  The
data order and augmentations are a function of (seed, epoch, index) (no global random state is
used after initialisation), and a checkpoint is written only at an update boundary, so a resumed
run continues the same loss curve.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..atomic_files import atomic_write
from ..defaults import model_file
from ..loading import load_cached
from ..metrics import DISMetrics
from ..precision import resolve_device
from ..specs import LoadedModel
from .config import TrainConfig, to_dict
from .data import DatasetError, DISDataset, Item, epoch_batches, fill_depth, read_gray, scan_folders
from .losses import LossTerms, loss_terms
from .model import TrainingPDFNet, build_training_model

log = logging.getLogger("pdfnet_core")

CHECKPOINT_NAME = "last.pt"
MODEL_NAME = "model.pth"
TRAIN_LOG = "train_log.csv"
VAL_LOG = "val_log.csv"
TRAIN_COLUMNS = ("update", "epoch", "lr", "loss", "seg", "integrity", "depth", "target", "seconds")
VAL_COLUMNS = ("update", "loss", "iou", "mae", "max_f", "weighted_f", "s_measure", "mean_e", "hce")
# settings that define the run; a resumed run must keep them
_RUN_DEFINING = ("model", "revision", "size", "batch_size", "epochs", "max_steps", "lr", "min_lr", "weight_decay",
                 "warmup_steps", "grad_accum", "seed", "augment", "per_item_losses", "ema_decay")


def require_timm():
    try:   # deferred: the optional extra pdfnet[train]
        from timm.scheduler import CosineLRScheduler
        from timm.utils import ModelEmaV3
    except ImportError as exc:
        raise ImportError("training needs timm: pip install timm (or pip install 'pdfnet[train]')") from exc
    return CosineLRScheduler, ModelEmaV3


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``; None means plain float32."""
    if precision == "fp32":
        return None
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(f"fp16 autocast needs a CUDA device (got {device}); use bf16 or fp32")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("this GPU does not support bf16; use fp16 or fp32")
    return torch.bfloat16 if precision == "bf16" else torch.float16


def normalise_depth_target(depth: torch.Tensor, per_item: bool) -> torch.Tensor:
    """Min-max to [0, 1], over the batch (official) or per item; a constant map gives zeros, not NaN."""
    d = depth.float()
    dims = (1, 2, 3) if per_item else (0, 1, 2, 3)
    lo = d.amin(dim=dims, keepdim=True)
    span = d.amax(dim=dims, keepdim=True) - lo
    return torch.where(span > 0, (d - lo) / torch.where(span > 0, span, torch.ones_like(span)), torch.zeros_like(d))


def forward_loss(model: TrainingPDFNet, batch: dict, device: torch.device, amp: torch.dtype | None,
                 per_item: bool) -> tuple[LossTerms, torch.Tensor]:
    """(loss terms, final logits) of one batch."""
    image = batch["image"].to(device, non_blocking=True)
    mask = batch["mask"].to(device, non_blocking=True)
    depth = batch["depth"].to(device, non_blocking=True)
    context = torch.autocast(device.type, dtype=amp) if amp is not None else nullcontext()
    with context:
        out = model(image, depth)
    # the losses run in float32 outside autocast (their variance terms cancel badly in half precision)
    logits = [x.float() for x in out.logits]
    terms = loss_terms(logits, [x.float() for x in out.depth_logits], mask,
                       normalise_depth_target(depth, per_item), per_item=per_item)
    return terms, logits[0]


# --------------------------------------------------------------------------------------------
# validation


@torch.no_grad()
def validate(model: TrainingPDFNet, dataset: DISDataset, device: torch.device, amp: torch.dtype | None,
             per_item: bool) -> dict[str, float]:
    """Mean loss, IoU and MAE at the masks' own size; the DIS metrics too when PySODMetrics is installed."""
    try:
        metrics: DISMetrics | None = DISMetrics()
    except ImportError:   # the optional extra pysodmetrics: loss, IoU and MAE only
        metrics = None
    was_training = model.training
    model.eval()
    loss = iou = mae = 0.0
    for index in range(len(dataset)):
        batch = {k: v[None] for k, v in dataset[(0, index)].items()}
        terms, logits = forward_loss(model, batch, device, amp, per_item)
        loss += terms.total.item()
        gt = read_gray(dataset.items[index].mask)[None]
        # back to the mask's own size, as segment() returns masks
        prob = F.interpolate(logits.sigmoid(), size=gt.shape[-2:], mode="bilinear",
                             align_corners=False).clamp(0, 1).cpu()
        fg, true = prob > 0.5, gt > 0.5
        union = (fg | true).sum().item()
        iou += (fg & true).sum().item() / union if union else 1.0
        mae += (prob - gt).abs().mean().item()
        if metrics is not None:
            metrics.step(prob[0, 0].numpy(), gt[0, 0].numpy())
    model.train(was_training)
    n = max(1, len(dataset))
    row = {"loss": loss / n, "iou": iou / n, "mae": mae / n}
    if metrics is not None and metrics.count:
        scores = metrics.results()
        row.update({k: getattr(scores, k) for k in ("max_f", "weighted_f", "s_measure", "mean_e", "hce")})
    return row


# --------------------------------------------------------------------------------------------
# logs and checkpoints


class CsvLog:
    """Rows appended as they come; on resume, rows beyond the checkpoint's update are dropped."""

    def __init__(self, path: Path, columns: tuple[str, ...], keep_until: int | None):
        self.path, self.columns = path, columns
        rows = []
        if keep_until is not None and path.is_file():
            with path.open(newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["update"]) <= keep_until]
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, columns)
            writer.writeheader()
            writer.writerows(rows)

    def append(self, row: dict) -> None:
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, self.columns, extrasaction="ignore").writerow(
                {k: row.get(k, "") for k in self.columns})


def _atomic_save(obj, path: Path) -> None:
    atomic_write(path, lambda fh: torch.save(obj, fh))


@dataclass
class RunState:
    updates: int = 0
    micro: int = 0      # micro-batches done, always a multiple of grad_accum in a checkpoint


def _check_resumable(saved: dict, config: TrainConfig) -> None:
    now = to_dict(config)
    changed = [k for k in _RUN_DEFINING if saved.get(k) != now.get(k)]
    if changed:
        raise ValueError("the checkpoint was written by a run with other settings: " +
                         ", ".join(f"{k} {saved.get(k)!r} -> {now.get(k)!r}" for k in changed) +
                         "; keep them to resume, or start a new run (fine-tune from its model.pth with --init)")


# --------------------------------------------------------------------------------------------
# the run


@dataclass
class TrainResult:
    updates: int
    history: list[dict] = field(default_factory=list)      # training rows written by this process
    validation: list[dict] = field(default_factory=list)
    checkpoint: Path | None = None
    model_path: Path | None = None


def _load_depth_model(config: TrainConfig, device: torch.device) -> LoadedModel:
    """The frozen Depth-Anything-V2 for images without depth maps: --depth-weights or the default file."""
    path = model_file("depth_anything", config.depth_weights, config.models_dir, config.download or None)
    return load_cached("depth_anything", path, device=device)


def prepare_items(config: TrainConfig, device: torch.device,
                  echo: Callable[[str], None]) -> tuple[list[Item], list[Item]]:
    items = scan_folders(config.train_dirs)
    val_items = scan_folders(config.val_dirs) if config.val_dirs else []
    if len(items) < config.batch_size:
        raise DatasetError(f"the training set has {len(items)} image(s), fewer than one batch of {config.batch_size}")
    cache = config.depth_cache or config.out_dir / "depth_cache"
    depth_model: list[LoadedModel] = []

    def load() -> LoadedModel:
        if not depth_model:
            echo("loading the depth model for images without depth maps")
            depth_model.append(_load_depth_model(config, device))
        return depth_model[0]

    return fill_depth(items, cache, load), fill_depth(val_items, cache, load)


def train(config: TrainConfig, echo: Callable[[str], None] = print, stop_after: int | None = None) -> TrainResult:
    """Run (or resume) one training run; ``stop_after`` ends this process after that many updates
    (the schedule still spans the whole run; resume later with ``resume=OUT/checkpoints/last.pt``)."""
    config.validate()
    CosineLRScheduler, ModelEmaV3 = require_timm()
    device = resolve_device(config.device)
    amp = autocast_dtype(config.precision, device)
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint_path = out / "checkpoints" / CHECKPOINT_NAME
    (out / "config.json").write_text(json.dumps(to_dict(config), indent=2))

    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)
    items, val_items = prepare_items(config, device, echo)
    train_set = DISDataset(items, config.size, config.augment, config.seed)
    val_set = DISDataset(val_items, config.size, None, config.seed)

    saved = None
    if config.resume is not None:
        if not Path(config.resume).is_file():
            raise FileNotFoundError(f"no checkpoint to resume from at {config.resume}")
        saved = torch.load(config.resume, map_location="cpu", weights_only=True)
        _check_resumable(saved["config"], config)
        # the weights come from the checkpoint; the revision it resolved to decides the head layout
        start = build_training_model(config.model, revision=saved["revision"])
        start.model.load_state_dict(saved["model"])
        description = f"resuming {config.resume} at update {saved['updates']}"
    else:
        start = build_training_model(config.model, config.init, config.swin_imagenet, config.revision)
        description = start.description
    model = start.model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    per_epoch = len(train_set) // config.batch_size
    total = config.max_steps or math.ceil(config.epochs * per_epoch / config.grad_accum)
    scheduler = CosineLRScheduler(optimizer, t_initial=total, lr_min=config.min_lr, warmup_t=config.warmup_steps,
                                  warmup_lr_init=config.min_lr, t_in_epochs=False)
    ema = ModelEmaV3(model, decay=config.ema_decay) if config.ema_decay else None
    scaler = torch.amp.GradScaler(device.type) if amp == torch.float16 else None
    state = RunState()
    if saved is not None:
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        if ema is not None:
            ema.load_state_dict(saved["ema"])
        if scaler is not None and saved.get("scaler"):
            scaler.load_state_dict(saved["scaler"])
        state = RunState(saved["updates"], saved["micro"])
    else:
        scheduler.step_update(0)
    train_log = CsvLog(out / TRAIN_LOG, TRAIN_COLUMNS, state.updates if saved is not None else None)
    val_log = CsvLog(out / VAL_LOG, VAL_COLUMNS, state.updates if saved is not None else None)
    result = TrainResult(state.updates, checkpoint=checkpoint_path, model_path=out / MODEL_NAME)
    echo(f"{description}; {len(train_set)} training / {len(val_set)} validation images at {config.size}², "
         f"{total} updates of {config.batch_size * config.grad_accum} images, on {device}"
         f"{'' if amp is None else f' with {amp} autocast'}")

    def save_checkpoint() -> None:
        _atomic_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                      "scheduler": scheduler.state_dict(), "ema": ema.state_dict() if ema is not None else None,
                      "scaler": scaler.state_dict() if scaler is not None else None,
                      "updates": state.updates, "micro": state.micro, "config": to_dict(config),
                      "revision": model.net.config.revision},
                     checkpoint_path)

    def run_validation() -> None:
        if not len(val_set):
            return
        row = {"update": state.updates, **validate(ema.module if ema is not None else model, val_set, device,
                                                    amp, config.per_item_losses)}
        val_log.append(row)
        result.validation.append(row)
        echo("validation at update {update}: ".format(**row) +
             ", ".join(f"{k} {v:.4f}" for k, v in row.items() if k != "update"))

    bar = tqdm(total=total, initial=state.updates, desc="train", disable=not config.progress, dynamic_ncols=True)
    sums: dict[str, float] = {}
    started = time.perf_counter()
    stop = total if stop_after is None else min(total, state.updates + stop_after)
    try:
        while state.updates < stop:
            epoch, offset = divmod(state.micro, per_epoch)
            batches = epoch_batches(len(train_set), config.batch_size, epoch, config.seed)[offset:]
            loader = torch.utils.data.DataLoader(train_set, batch_sampler=batches, num_workers=config.num_workers,
                                                 pin_memory=device.type == "cuda")
            for batch in loader:
                terms, _ = forward_loss(model, batch, device, amp, config.per_item_losses)
                if not torch.isfinite(terms.total):
                    raise FloatingPointError(f"the loss is {terms.total.item()} at update {state.updates + 1} "
                                             f"(images {batch['index'].tolist()}); lower the learning rate or "
                                             "use fp32/bf16 instead of fp16")
                loss = terms.total / config.grad_accum
                (scaler.scale(loss) if scaler is not None else loss).backward()
                for k, v in terms.as_floats().items():
                    sums[k] = sums.get(k, 0.0) + v / config.grad_accum
                state.micro += 1
                if state.micro % config.grad_accum:
                    continue
                lr = optimizer.param_groups[0]["lr"]
                if scaler is not None:
                    scaler.unscale_(optimizer)
                if config.clip_grad is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad)
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                state.updates += 1
                scheduler.step_update(state.updates)
                if ema is not None:
                    ema.update(model, step=state.updates)
                row = {"update": state.updates, "epoch": epoch, "lr": lr, "loss": sums.pop("total"),
                       **sums, "seconds": time.perf_counter() - started}
                sums = {}
                train_log.append(row)
                result.history.append(row)
                bar.update(1)
                bar.set_postfix(loss=f"{row['loss']:.4f}", seg=f"{row['seg']:.3f}", int=f"{row['integrity']:.3f}",
                                dep=f"{row['depth']:.3f}", lr=f"{lr:.2e}")
                if state.updates % config.val_every == 0 or state.updates == total:
                    run_validation()
                if state.updates % config.save_every == 0 or state.updates in (stop, total):
                    save_checkpoint()
                if state.updates >= stop:
                    break
    except KeyboardInterrupt:
        # keep what the completed updates learned; the unfinished accumulation is redone on resume
        state.micro -= state.micro % config.grad_accum
        save_checkpoint()
        echo(f"interrupted: checkpoint at update {state.updates} in {checkpoint_path}")
        raise
    finally:
        bar.close()
    result.updates = state.updates
    if state.updates >= total:
        final = ema.module if ema is not None else model
        _atomic_save(final.official_state_dict(config.save_depth_head), out / MODEL_NAME)
        # with the head saved, the file's depth_decoder layout tells load_pdfnet the revision
        echo(f"saved {out / MODEL_NAME} (official layout, revision {model.net.config.revision}); "
             "load it with pdfnet_core.load_pdfnet")
    else:
        echo(f"stopped at update {state.updates} of {total}; resume with the checkpoint {checkpoint_path}")
    return result
