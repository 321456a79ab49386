"""LA-Net: Landmark-Aware Learning for Reliable FER under Label Noise (Wu and Cui, ICCV 2023).

Per step, on a batch (x, x', y, landmarks) gathered across DDP ranks where noted:
    u = E(x) [B, Du], logits = W u               expression backbone + classifier
    v = L(x) [B, Dv]                             landmark backbone (+ head: L_lm on the batch landmarks)
    d_new = mean over spaces of sum_j c_ij p_j / sum_j c_ij     LDE, cosine KNN (K 8) in u and in v (eq. 4)
    d = omega D[idx] + (1 - omega) d_new; D[idx] <- d            per-sample EMA targets, one-hot start (eq. 5)
    L_kl = KL(d || softmax(logits))                              (eq. 7)
    L_el = L1(q^u; k^v, bank^v) + L2(q^v; k^u, bank^u)           keys from momentum encoders on x' (eq. 11-13)
    L = L_ce + L_lm + alpha L_kl + beta L_el                     alpha 1.0, beta 0.1
The pieces live in lde.py (LDE), el.py (EL loss, memory bank, momentum encoders),
landmarks.py (L_lm heads) and diagnostics.py (per-epoch files and numbers).

Paper defaults; official-code variants as options: `landmark_head: heatmap` (19 AFLW points, Gaussian
heatmaps, adaptive wing loss; the official landmark branch also shares the ResNet stem and layer1 with the
expression branch, which is not reproduced: the branches are two backbones here) and `key_view: same`
(the official keys come from the same image, batch-shuffled, not from a second view; shuffled BN is not
reproduced). Table 2 ablation switches: `lde` (LD), `lde_landmark_space` (+LM), `el_loss` (+EL),
`el_pseudo_labels` (+PL; off: EL groups by the noisy labels, every sample confident); ABLATION_PRESETS
names the rows. `target_distributions()` returns the EMA targets [N_train, C].
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.contract.errors import ConfigError, choices_message
from training.distributed import gather_cat, gather_cat_with_grad, rank
from training.methods.base import DataInfo, Method, StepInfo, register_method
from training.methods.lanet.diagnostics import (
    LDEEpochStats,
    confident_precision,
    target_recovery,
    targets_path,
    vote_divergence,
    write_target_distributions,
)
from training.methods.lanet.el import (
    MemoryBank,
    ProjectionHead,
    expression_landmark_loss,
    frozen_copy,
    momentum_update,
    pseudo_labels,
    same_group_mask,
)
from training.methods.lanet.lde import LabelDistributionEstimator, kl_to_targets
from training.methods.lanet.parts import LandmarkBranch, build_backbone, local_rows

log = logging.getLogger(__name__)

STAGE_VERSION = "1.0.0"
LANDMARK_HEADS = ("regression", "heatmap")
LANDMARK_POINTS = ("auto", "all", "aflw19")
KEY_VIEWS = ("second", "same")
ABLATION_PRESETS: dict[str, dict[str, bool]] = {      # paper Table 2 rows
    "ld": {"lde": True, "lde_landmark_space": False, "el_loss": False, "el_pseudo_labels": False},
    "ld+lm": {"lde": True, "lde_landmark_space": True, "el_loss": False, "el_pseudo_labels": False},
    "ld+lm+el": {"lde": True, "lde_landmark_space": True, "el_loss": True, "el_pseudo_labels": False},
    "ld+lm+el+pl": {"lde": True, "lde_landmark_space": True, "el_loss": True, "el_pseudo_labels": True},
}


@dataclass(frozen=True)
class LANetConfig:
    backbone: str = "resnet18"                  # expression backbone (model.backbone by default)
    backbone_weights: str | None = None
    landmark_backbone: str | None = None        # None: same architecture as `backbone`
    landmark_backbone_weights: str | None = None    # None: `backbone_weights`
    landmark_head: str = "regression"           # regression (paper, MSE) | heatmap (official, adaptive wing)
    landmark_points: str = "auto"               # auto (heatmap: aflw19 from 68 points) | all | aflw19
    heatmap_sigma: float = 1.5                  # Gaussian sigma in heatmap pixels (stride 4)
    heatmap_width: int = 64                     # feature-pyramid channels of the heatmap head
    k: int = 8                                  # LDE neighbours per space
    omega: float = 0.9                          # EMA momentum of the targets
    score_hidden: int = 256                     # width of g1, g2, f
    detach_neighbour_predictions: bool = False  # stop gradients through p_j in the aggregation
    delta: float = 0.7                          # pseudo-label confidence threshold
    temperature: float = 0.1
    key_momentum: float = 0.999
    bank_size: int = 8192
    projection_hidden: int = 512
    projection_dim: int = 128
    alpha: float = 1.0                          # weight of L_kl
    beta: float = 0.1                           # weight of L_el
    landmark_weight: float = 1.0                # weight of L_lm
    lde: bool = True                            # LD
    lde_landmark_space: bool = True             # +LM
    el_loss: bool = True                        # +EL
    el_pseudo_labels: bool = True               # +PL
    key_view: str = "second"                    # second (image2, paper) | same (official)
    seed: int = 0                               # memory-bank initialisation

    def __post_init__(self) -> None:
        for value, choices, what in ((self.landmark_head, LANDMARK_HEADS, "LA-Net landmark_head"),
                                     (self.landmark_points, LANDMARK_POINTS, "LA-Net landmark_points"),
                                     (self.key_view, KEY_VIEWS, "LA-Net key_view")):
            if value not in choices:
                raise ConfigError(choices_message(what, value, choices))
        if not 0.0 <= self.omega < 1.0 or not 0.0 < self.key_momentum < 1.0:
            raise ConfigError(f"LA-Net omega ({self.omega}) must be in [0, 1) and key_momentum "
                              f"({self.key_momentum}) in (0, 1)")
        if self.k < 1 or self.bank_size < 1 or self.temperature <= 0:
            raise ConfigError(f"LA-Net k ({self.k}), bank_size ({self.bank_size}) and temperature "
                              f"({self.temperature}) must be positive")
        if (self.lde_landmark_space or self.el_pseudo_labels) and not self.lde:
            raise ConfigError("LA-Net lde_landmark_space (+LM) and el_pseudo_labels (+PL) need lde: true")

    @property
    def uses_landmarks(self) -> bool:
        return (self.lde and self.lde_landmark_space) or self.el_loss


@register_method
class LANet(Method):
    """LA-Net (see the module docstring)."""

    name = "lanet"
    needs = frozenset({"landmarks", "two_views"})
    config_class = LANetConfig

    def __init__(self, config, info: DataInfo):
        super().__init__(config, info)
        config = self.config
        if info.train_labels is None:
            raise ConfigError("LA-Net needs DataInfo.train_labels (the noisy labels) to initialise its targets")
        needs = set()
        self.expression_backbone, expression_dim = build_backbone(config.backbone, config.backbone_weights)
        self.classifier = nn.Linear(expression_dim, info.num_classes)
        self.landmark_branch = None
        if config.uses_landmarks:
            if info.num_landmarks < 1:
                raise ConfigError("LA-Net with the landmark space or the EL loss needs landmarks "
                                  "(DataInfo.num_landmarks is 0): prepare the dataset's landmarks stage")
            self.landmark_branch = LandmarkBranch(config, info.num_landmarks)
            needs.add("landmarks")
        landmark_dim = self.landmark_branch.feature_dim if self.landmark_branch is not None else None
        self.lde = None
        if config.lde:
            self.lde = LabelDistributionEstimator(
                info.train_labels, info.num_classes, expression_dim,
                landmark_dim if config.lde_landmark_space else None, k=config.k, omega=config.omega,
                hidden=config.score_hidden, detach_neighbour_predictions=config.detach_neighbour_predictions)
        if config.el_loss:
            self._build_el(expression_dim, landmark_dim)
            if config.key_view == "second":
                needs.add("two_views")
        if info.has_votes:
            needs.add("votes")
        self.needs = frozenset(needs)
        self._register_diagnostics(info)

    def _build_el(self, expression_dim: int, landmark_dim: int) -> None:
        cfg = self.config
        self.expression_projection = ProjectionHead(expression_dim, cfg.projection_hidden, cfg.projection_dim)
        self.landmark_projection = ProjectionHead(landmark_dim, cfg.projection_hidden, cfg.projection_dim)
        self.key_expression_backbone = frozen_copy(self.expression_backbone)
        self.key_landmark_branch = frozen_copy(self.landmark_branch)
        self.key_expression_projection = frozen_copy(self.expression_projection)
        self.key_landmark_projection = frozen_copy(self.landmark_projection)
        self.bank = MemoryBank(cfg.bank_size, cfg.projection_dim, seed=cfg.seed)

    def _momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.expression_backbone, self.key_expression_backbone),
                (self.landmark_branch, self.key_landmark_branch),
                (self.expression_projection, self.key_expression_projection),
                (self.landmark_projection, self.key_landmark_projection)]

    def _register_diagnostics(self, info: DataInfo) -> None:
        """Per-sample facts seen in batches, for on_epoch_end only (never used for training)."""
        n, c = info.num_train, info.num_classes
        self.register_buffer("noisy_labels", info.train_labels.long().clone())
        self.register_buffer("seen_sample_ids", torch.full((n,), -1, dtype=torch.long))
        self.register_buffer("seen_clean_labels", torch.full((n,), -1, dtype=torch.long))
        self.register_buffer("seen_votes", torch.zeros((n if info.has_votes else 0, c)))
        self.lde_stats = LDEEpochStats(self.config.delta)

    # ------------------------------------------------------------------------------------ training
    @torch.no_grad()
    def _record(self, batch: dict[str, torch.Tensor], index: torch.Tensor) -> None:
        """Store the gathered batch's sample ids, clean labels and votes at their rows `index` [Bg]."""
        self.seen_sample_ids[index] = gather_cat(batch["sample_id"]).long()
        if "clean_label" in batch:
            self.seen_clean_labels[index] = gather_cat(batch["clean_label"]).long()
        if "votes" in batch and self.seen_votes.shape[0]:
            self.seen_votes[index] = gather_cat(batch["votes"]).float()

    def training_step(self, batch: dict[str, torch.Tensor], step: StepInfo) -> dict[str, torch.Tensor]:
        cfg = self.config
        images, labels, index = batch["image"], batch["label"], batch["index"]
        expression = self.expression_backbone(images)               # [B, Du]
        logits = self.classifier(expression)                        # [B, C]
        parts = {"ce": F.cross_entropy(logits, labels)}
        landmark = None
        if self.landmark_branch is not None:
            landmark, parts["lm"] = self.landmark_branch.features_and_loss(images, batch["landmarks"])
        all_index = gather_cat(index)                               # [Bg]
        self._record(batch, all_index)
        all_targets = None
        if self.lde is not None:
            all_targets = self.lde(gather_cat_with_grad(expression),
                                   gather_cat_with_grad(landmark) if cfg.lde_landmark_space else None,
                                   gather_cat_with_grad(logits), all_index)          # [Bg, C]
            parts["kl"] = kl_to_targets(logits, local_rows(all_targets))
            self.lde_stats.update(self.lde.last_step, gather_cat(labels).long(),
                                  gather_cat(batch["clean_label"]).long() if "clean_label" in batch else None)
        if cfg.el_loss:
            parts["el"] = self._el_loss(batch, expression, landmark, all_targets, all_index)
        weights = {"ce": 1.0, "lm": cfg.landmark_weight, "kl": cfg.alpha, "el": cfg.beta}
        loss = sum(weights[name] * value for name, value in parts.items())
        out = {"loss": loss, "logits": logits}
        out.update({f"loss_{name}": value.detach() for name, value in parts.items()})
        return out

    def _el_loss(self, batch: dict[str, torch.Tensor], expression: torch.Tensor, landmark: torch.Tensor,
                 all_targets: torch.Tensor | None, all_index: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if cfg.el_pseudo_labels:
            all_labels, all_confident = pseudo_labels(all_targets, cfg.delta)     # [Bg], [Bg]
        else:
            all_labels = gather_cat(batch["label"]).long()
            all_confident = torch.ones_like(all_labels, dtype=torch.bool)
        query_expression = self.expression_projection(expression)  # [B, d]
        query_landmark = self.landmark_projection(landmark)        # [B, d]
        key_images = batch.get("image2", batch["image"]) if cfg.key_view == "second" else batch["image"]
        with torch.no_grad():
            key_expression = gather_cat(self.key_expression_projection(self.key_expression_backbone(key_images)))
            key_landmark = gather_cat(self.key_landmark_projection(self.key_landmark_branch.features(key_images)))
        labels, confident, ids = local_rows(all_labels), local_rows(all_confident), local_rows(all_index)
        positive = same_group_mask(labels, confident, ids, all_labels, all_confident, all_index)   # [B, Bg]
        negative = self.bank.negative_mask(labels, confident, ids)                             # [B, M]
        loss = expression_landmark_loss(query_expression, query_landmark, key_expression, key_landmark,
                                        positive, negative, self.bank, cfg.temperature)
        self.bank.enqueue(key_expression, key_landmark, all_labels, all_confident, all_index)
        return loss

    @torch.no_grad()
    def after_optimizer_step(self, step: StepInfo) -> None:
        if self.config.el_loss:
            for query, key in self._momentum_pairs():
                momentum_update(query, key, self.config.key_momentum)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.expression_backbone(images))    # [B, C]

    # --------------------------------------------------------------------------------- diagnostics
    def target_distributions(self) -> torch.Tensor | None:
        return None if self.lde is None else self.lde.targets

    def on_epoch_end(self, epoch: int, out_dir: Path) -> dict[str, float]:
        if self.lde is None:
            return {}
        targets = self.lde.targets.detach().float().cpu()          # [N, C]
        noisy = self.noisy_labels.cpu()
        metrics = {f"target_{k}": v for k, v in
                   target_recovery(targets, noisy, self.seen_clean_labels.cpu()).items()}
        confidence = targets.max(dim=1).values
        metrics["target_mean_confidence"] = float(confidence.mean())
        metrics["target_ambiguous_share"] = float((confidence <= self.config.delta).float().mean())
        metrics["target_confident_precision"] = confident_precision(targets, self.seen_clean_labels.cpu(),
                                                                    self.config.delta)
        metrics.update(self.lde_stats.pop())
        if self.seen_votes.shape[0]:
            metrics.update(vote_divergence(targets, noisy, self.seen_votes.cpu()))
        if rank() == 0:
            write_target_distributions(targets_path(out_dir, epoch), self.seen_sample_ids.cpu(), targets, noisy,
                                       {"epoch": epoch, "method": self.name, "stage_version": STAGE_VERSION})
        return metrics
