"""`va_regression`: a valence-arousal regressor trained by the engine, exported for the prepare's pseudo_va stage.

LDLVA needs neighbours in valence-arousal space, and RAF-DB and FERPlus have no valence-arousal; the LDLVA
paper gets it for them from an existing VA regressor (pseudo-VA). This method trains one on a version that
has VA (AffectNet; the synthetic set's ground truth):

    f = backbone(x)                       # [B, D]
    v = tanh(va_head(f))                  # [B, 2] valence, arousal in [-1, 1]
    z = classifier(f)                     # [B, C] expression logits (multi-task; the engine evaluates them)
    L = L_va(v, va) + class_weight * CE(z, y)

with L_va the mean squared error (`mse`), 1 - CCC averaged over the two dimensions (`ccc`, the concordance
correlation coefficient of the batch) or their sum (`mse+ccc`); rows without VA (NaN) are left out of L_va.

`export_regressor` writes the backbone and VA head as one self-contained TorchScript file (torch.jit.trace),
with what the pipeline needs to feed it in the file's extra metadata (META_FILE: input size, the stored-crop
side the trainer resized to, normalisation, outputs, the training version and test metrics), so
`pipeline/stages/pseudo_va.py` loads it with torch.jit.load and never imports the trainer
(`export_run(run_dir, out)` exports a finished run; `python bench/pseudo_va.py` trains, exports, applies
and measures it end to end on the synthetic set).
"""
from __future__ import annotations

import copy
import io
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.contract import va_regressor
from pipeline.contract.atomic import atomic_path
from pipeline.contract.errors import ConfigError, choices_message
from training.methods.base import DataInfo, Method, StepInfo, register_method
from training.models import build_backbone

log = logging.getLogger(__name__)

VA_LOSSES = ("mse", "ccc", "mse+ccc")


# ----------------------------------------------------------------------------------------------- math
def concordance(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Lin's concordance correlation coefficient per column: [n, D], [n, D] -> [D].

    CCC = 2 cov(p, t) / (var(p) + var(t) + (mean(p) - mean(t))^2), population (1/n) moments.
    """
    mp, mt = pred.mean(0), target.mean(0)                                    # [D]
    vp, vt = pred.var(0, unbiased=False), target.var(0, unbiased=False)      # [D]
    cov = ((pred - mp) * (target - mt)).mean(0)                              # [D]
    return 2 * cov / (vp + vt + (mp - mt) ** 2).clamp_min(1e-12)


def va_loss(pred: torch.Tensor, target: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """L_va over the rows with a finite target: pred, target [B, 2] -> scalar (0 when no row has VA)."""
    keep = torch.isfinite(target).all(1)                                     # [B]
    if not keep.any():
        return pred.sum() * 0.0
    p, t = pred[keep].float(), target[keep].float()                          # [n, 2]
    loss = p.new_zeros(())
    if kind in ("mse", "mse+ccc"):
        loss = loss + F.mse_loss(p, t)
    if kind in ("ccc", "mse+ccc") and len(p) > 1:
        loss = loss + (1.0 - concordance(p, t)).mean()
    return loss


def va_metrics(pred: np.ndarray, target: np.ndarray) -> dict:
    """RMSE and CCC of valence and arousal over the rows where both are finite: [n, 2], [n, 2] -> dict."""
    pred, target = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    keep = np.isfinite(pred).all(1) & np.isfinite(target).all(1)
    p, t = torch.from_numpy(pred[keep]), torch.from_numpy(target[keep])
    rmse = ((p - t) ** 2).mean(0).sqrt() if len(p) else torch.full((2,), float("nan"))
    ccc = concordance(p, t) if len(p) > 1 else torch.full((2,), float("nan"))
    return {"n": int(keep.sum()), "rmse_valence": float(rmse[0]), "rmse_arousal": float(rmse[1]),
            "ccc_valence": float(ccc[0]), "ccc_arousal": float(ccc[1])}


# --------------------------------------------------------------------------------------------- module
@dataclass(frozen=True)
class VaRegressionConfig:
    backbone: str = "resnet18"
    backbone_weights: str | None = None
    va_loss: str = "mse"             # mse | ccc | mse+ccc
    class_weight: float = 1.0        # weight of the expression cross-entropy (0: valence-arousal only)

    def __post_init__(self) -> None:
        if self.va_loss not in VA_LOSSES:
            raise ConfigError(choices_message("va_regression va_loss", self.va_loss, VA_LOSSES))
        if self.class_weight < 0:
            raise ConfigError(f"va_regression class_weight must be >= 0, got {self.class_weight}")


class VaPredictor(nn.Module):
    """What is exported: normalised images [B, 3, H, W] -> [B, 2] valence, arousal in [-1, 1]."""

    def __init__(self, backbone: nn.Module, head: nn.Linear):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.head(self.backbone(images)))                  # [B, 2]


@register_method
class VaRegression(Method):
    """Valence-arousal regression (plus the expression classifier); see the module docstring."""

    name = "va_regression"
    needs = frozenset({"va"})
    config_class = VaRegressionConfig

    def __init__(self, config, info: DataInfo):
        super().__init__(config, info)
        self.backbone, dim = build_backbone(self.config.backbone, self.config.backbone_weights)
        self.va_head = nn.Linear(dim, 2)
        self.classifier = nn.Linear(dim, info.num_classes)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.backbone(images))                        # [B, C]

    def predict_va(self, images: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.va_head(self.backbone(images)))               # [B, 2]

    def training_step(self, batch: dict[str, torch.Tensor], step: StepInfo) -> dict[str, torch.Tensor]:
        features = self.backbone(batch["image"])                             # [B, D]
        va = torch.tanh(self.va_head(features))                              # [B, 2]
        logits = self.classifier(features)                                   # [B, C]
        loss_va = va_loss(va, batch["va"], self.config.va_loss)
        ce = F.cross_entropy(logits.float(), batch["label"])
        loss = loss_va + self.config.class_weight * ce
        return {"loss": loss, "logits": logits, "va_loss": loss_va.detach(), "ce": ce.detach()}

    def predictor(self) -> VaPredictor:
        """A CPU copy of backbone + VA head in eval mode (what `export_regressor` traces)."""
        return VaPredictor(copy.deepcopy(self.backbone), copy.deepcopy(self.va_head)).cpu().eval()


# --------------------------------------------------------------------------------------------- export
@torch.no_grad()
def predict_split_va(method: VaRegression, loader, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """(sample ids [n], predicted VA [n, 2]) over an evaluation loader (training.loader.eval_loader)."""
    from training.loader import to_device

    was_training = method.training
    method.eval()
    ids, values = [], []
    for raw in loader:
        batch = to_device(raw, device)
        values.append(method.predict_va(batch["image"]).float().cpu())
        ids.append(raw["sample_id"])
    method.train(was_training)
    return torch.cat(ids).numpy(), torch.cat(values).numpy()


def _traced_bytes(predictor: nn.Module, image_size: int, meta_json: str) -> bytes:
    """TorchScript bytes of the predictor traced on a [2, 3, S, S] batch, with the metadata as an extra file."""
    buffer = io.BytesIO()  # a buffer: a file's name would become the archive's folder name inside the bytes
    with warnings.catch_warnings():   # torch 2.13 marks TorchScript deprecated
        warnings.filterwarnings("ignore", message=r".*torch\\.jit.*deprecated", category=FutureWarning)
        traced = torch.jit.trace(predictor, torch.zeros(2, 3, image_size, image_size))
        torch.jit.save(traced, buffer, _extra_files={va_regressor.META_FILE: meta_json})
    return buffer.getvalue()


def _traced_bytes_in_fresh_process(predictor: nn.Module, image_size: int, meta_json: str) -> bytes:
    """_traced_bytes in a new interpreter: TorchScript names its classes ___torch_mangle_<n> by how many it
    compiled before in the process, so only a fresh one makes the bytes depend on the weights alone."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_traced_bytes, predictor, image_size, meta_json).result()


def export_regressor(method: VaRegression, path: str | Path, image_size: int, source_size: int,
                     extra: dict | None = None) -> Path:
    """Write the TorchScript VA regressor with its metadata (va_regressor.META_FILE); returns the path."""
    from training.augment import IMAGENET_MEAN, IMAGENET_STD

    meta = {"format": va_regressor.FORMAT, "format_version": va_regressor.FORMAT_VERSION,
            "outputs": ["valence", "arousal"],
            "output_range": [-1.0, 1.0], "backbone": method.config.backbone,
            "input": {"layout": "NCHW float32 RGB", "image_size": int(image_size), "source_size": int(source_size),
                      "preprocess": "resize the uint8 crop to source_size (bilinear, antialias, rounded to uint8), "
                                    "centre-crop image_size, divide by 255, subtract mean, divide by std",
                      "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
            **(extra or {})}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = _traced_bytes_in_fresh_process(method.predictor(), int(image_size), json.dumps(meta, sort_keys=True))
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    log.info("exported the VA regressor to %s (%s)", path, json.dumps(meta["input"]))
    return path


def export_run(run_dir: str | Path, out: str | Path) -> dict:
    """Export a finished `va_regression` run (its last checkpoint), with its test-split VA metrics in the file."""
    from training.checkpoint import load_checkpoint
    from training.config import build_method_config, config_from_dict
    from training.data import PreparedVersion
    from training.engine import data_info
    from training.loader import eval_loader

    ckpt = load_checkpoint(run_dir)
    config = config_from_dict(ckpt["config"])
    if config.method != VaRegression.name:
        raise ConfigError(f"run {run_dir} trained method {config.method!r}; export needs a {VaRegression.name!r} run")
    version = PreparedVersion.open(config.dataset, ckpt["dataset_version"], config.artifacts_root,
                                   config.manifests_root)
    info, _ = data_info(config, version, version.split_data("train", config.noise))
    method = VaRegression(build_method_config(config), info)
    method.load_state_dict(ckpt["method"])
    device = torch.device("cpu")
    ids, pred = predict_split_va(method, eval_loader(config, version, version.eval_split(config.noise), device),
                                 device)
    truth = version.va[ids] if version.va is not None else np.full_like(pred, np.nan)
    metrics = va_metrics(pred, truth)
    # what the weights came from, nothing that names this run's folder or time: the same training, the same bytes
    extra = {"trained_on": {"dataset": config.dataset, "version": version.version, "epochs": int(ckpt["epoch"]),
                            "seed": int(config.runtime.seed)}, "test_metrics": metrics}
    export_regressor(method, out, config.data.image_size, config.data.resize or version.crop_size, extra)
    return {"path": str(out), "test_metrics": metrics}
