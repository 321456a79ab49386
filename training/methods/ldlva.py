"""LDLVA: uncertainty-aware label distribution learning (Le et al., WACV 2023).

For a training sample i with label y_i and K neighbours j in an auxiliary space (valence-arousal on
AffectNet; any configured graph elsewhere, `graph_space`):
    a_ij = graph similarity (local similarity, exp(-d^2 / 2 sigma^2) from graphs/<space>.parquet)
    c_ij = calibration MLP([f_i, f_j]) in (0, 1)                  adaptive similarity
    w_ij = a_ij * c_ij                                            contribution of neighbour j
    t_i  = sum_j w_ij p_j / sum_j w_ij                            aggregated neighbour distribution
    d_i  = lambda_i * onehot(y_i) + (1 - lambda_i) * t_i          target; lambda_i = sigmoid(lambda_hat_i)
    L    = mean_i CE(d_i, softmax(z_i)) + gamma * L_D
    L_D  = 1/2 sum_rows lambda_r ||f_r - c_{y_r}||^2 / #rows       (lambda detached; the centres are updated
                                                                   separately and pushed apart)
where p_j and f_j are the neighbours' predictions and features (no gradient), lambda_hat is a per-sample
learnable logit trained by its own SGD on dL/d lambda_hat (lr 10; initial logit 0.5, i.e. lambda 0.62,
no momentum: the authors' RAF-DB setting; their AffectNet setting, initial logit 0.8 with momentum 0.9 and
class-balanced CE, is configs/ldlva_affectnet.yaml), and the class centres c_k (buffers, initially 0) follow the
uncertainty-weighted centre update c_k += centre_lr * sum_{r: y_r = k} lambda_r (f_r - c_k) / (1 + n_k)
(Wen et al.'s centre-loss rule) and a push step c -= push_lr * grad sum_{k<l} exp(-||c_k - c_l||^2 / D).

Where the neighbours' outputs come from (two registered methods):
    `ldlva` (what the authors' code does): each training sample's K neighbour images are loaded into the
        same batch and forwarded through the network, their outputs detached. Here that is the engine's
        grouped sampler (`needs = {"groups"}`): every group is one centre (role 0) and its neighbours
        (role > 0, weight = a_ij), from the graph named by `data.au_graph` with `data.au_neighbors`
        neighbours and `data.landmark_neighbors: 0` (configs/ldlva.yaml sets them). Only the centres get
        the classification loss; centre and neighbour rows both feed the centre update.
    `ldlva_memory`: no extra images; a per-sample memory of the latest softmax and features (buffers,
        written for every batch sample at each step) stands in for the neighbours' outputs, read through
        DataInfo.graphs[graph_space]. Neighbours not yet seen are left out; a sample with no seen
        neighbour trains on its one-hot label. Cheaper (1x instead of (K+1)x images per step), but stale
        by up to an epoch: an approximation, not the paper.

lambda's gradient is computed in closed form (`lambda_gradient`, checked against autograd in the tests),
so it needs no second backward pass and is independent of the engine's backward. Per-sample state
(lambda, its velocity, the targets, the memory) and the centres are kept identical on every DDP rank by
gathering every rank's updates (training.distributed).

Facts taken from the official code (github.com/minhnhatvt/label-distribution-learning-fer-tf) where the
paper is silent: the calibration MLP 2D -> 512 -> 256 -> 1 with batch-norm, ReLU and the output logit
floored at -1.3 before the sigmoid; lambda's optimiser and initial value; gamma 0.01; centres start at 0
and the push term's form. The official code additionally divides the centre update by the number of rows
(a 1/R smaller step than Wen et al.'s rule used here).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.contract.errors import ConfigError, choices_message
from training import distributed as ddp
from training.methods.base import DataInfo, Method, StepInfo, register_method

log = logging.getLogger(__name__)

STAGE_VERSION = "1.0.0"


# ----------------------------------------------------------------------------------------------- math
def aggregate_neighbors(centre_of_edge: torch.Tensor, neighbor_probs: torch.Tensor, contribution: torch.Tensor,
                        num_centres: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Contribution-weighted mean of neighbour distributions, per centre.

    centre_of_edge [E] int64 (which centre row each edge belongs to), neighbor_probs [E, C],
    contribution [E] >= 0. Returns (t [num_centres, C], total weight [num_centres]); a centre whose
    weights sum to 0 gets a zero row (the caller falls back to its one-hot label).
    """
    num_classes = neighbor_probs.shape[1]
    weighted = neighbor_probs * contribution.unsqueeze(1)                             # [E, C]
    sums = weighted.new_zeros(num_centres, num_classes).index_add(0, centre_of_edge, weighted)  # [N_c, C]
    totals = contribution.new_zeros(num_centres).index_add(0, centre_of_edge, contribution)     # [N_c]
    return sums / totals.clamp_min(1e-12).unsqueeze(1), totals


def mix_target(labels: torch.Tensor, neighbor_dist: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """d = lam * onehot(labels) + (1 - lam) * neighbor_dist; labels [B], neighbor_dist [B, C], lam [B]."""
    one_hot = F.one_hot(labels, neighbor_dist.shape[1]).to(neighbor_dist.dtype)       # [B, C]
    lam = lam.unsqueeze(1)                                                            # [B, 1]
    return lam * one_hot + (1.0 - lam) * neighbor_dist


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor,
                       sample_weight: torch.Tensor | None = None) -> torch.Tensor:
    """mean_i w_i * (-sum_c target_ic log softmax(logits)_ic); logits, target [B, C], weight [B]."""
    per_sample = -(target * F.log_softmax(logits, dim=1)).sum(dim=1)                 # [B]
    if sample_weight is not None:
        per_sample = per_sample * sample_weight
    return per_sample.mean()


def lambda_gradient(logits: torch.Tensor, labels: torch.Tensor, neighbor_dist: torch.Tensor,
                    lam: torch.Tensor, sample_weight: torch.Tensor | None = None) -> torch.Tensor:
    """d soft_cross_entropy(logits, mix_target(labels, neighbor_dist, sigmoid(x))) / d x at lam = sigmoid(x).

    Per sample: w_i / B * (sum_c t_ic log p_ic - log p_{i,y_i}) * lam_i (1 - lam_i); [B]. Positive when the
    network agrees more with the neighbours than with the label, so a descent step lowers lambda_i.
    """
    log_p = F.log_softmax(logits.detach().float(), dim=1)                             # [B, C]
    label_term = log_p.gather(1, labels.unsqueeze(1)).squeeze(1)                      # [B]
    grad = ((neighbor_dist.detach() * log_p).sum(dim=1) - label_term) / len(labels)   # [B]
    if sample_weight is not None:
        grad = grad * sample_weight
    return grad * lam * (1.0 - lam)


def centre_pull_loss(features: torch.Tensor, labels: torch.Tensor, centres: torch.Tensor,
                     weight: torch.Tensor) -> torch.Tensor:
    """1/2 sum_r weight_r ||f_r - c_{y_r}||^2 / R; features [R, D], labels [R], centres [C, D], weight [R]."""
    dist = (features - centres[labels]).pow(2).sum(dim=1)                             # [R]
    return 0.5 * (weight * dist).sum() / max(1, features.shape[0])


@torch.no_grad()
def centre_update(centres: torch.Tensor, features: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor,
                  lr: float) -> torch.Tensor:
    """Uncertainty-weighted centre-loss update: c_k + lr * sum_{y_r=k} w_r (f_r - c_k) / (1 + n_k)."""
    num_classes = centres.shape[0]
    diff = (features - centres[labels]) * weight.unsqueeze(1)                         # [R, D]
    sums = torch.zeros_like(centres).index_add(0, labels, diff)                       # [C, D]
    counts = torch.bincount(labels, minlength=num_classes).to(centres.dtype)          # [C]
    return centres + lr * sums / (1.0 + counts).unsqueeze(1)


def centre_push_energy(centres: torch.Tensor) -> torch.Tensor:
    """sum_{k<l} exp(-||c_k - c_l||^2 / D): large when centres are close; its gradient pushes them apart."""
    num_classes, dim = centres.shape
    sq_dist = torch.cdist(centres, centres).pow(2)                                   # [C, C]
    upper = torch.triu(torch.ones(num_classes, num_classes, dtype=torch.bool, device=centres.device), 1)
    return torch.exp(-sq_dist[upper] / dim).sum()


def centre_push(centres: torch.Tensor, lr: float) -> torch.Tensor:
    """One gradient step down `centre_push_energy`."""
    with torch.enable_grad():
        leaf = centres.detach().clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(centre_push_energy(leaf), leaf)
    return (centres - lr * grad).detach()


def balanced_class_weights(class_counts: tuple[int, ...]) -> torch.Tensor:
    """N / (C * n_k) per class (scikit-learn's 'balanced'); classes with no sample get weight 0."""
    counts = torch.tensor(class_counts, dtype=torch.float32)
    weights = counts.sum() / (len(class_counts) * counts.clamp_min(1))
    return torch.where(counts > 0, weights, torch.zeros_like(weights))


# --------------------------------------------------------------------------------------------- module
@dataclass(frozen=True)
class LdlvaConfig:
    """LDLVA hyper-parameters (the authors' RAF-DB defaults; see configs/ldlva_affectnet.yaml)."""

    backbone: str = "resnet18"
    backbone_weights: str | None = None
    graph_space: str = "va"                # DataInfo.graphs key read by ldlva_memory (ldlva: data.au_graph)
    num_neighbors: int = 8                 # K for ldlva_memory (ldlva: data.au_neighbors)
    gamma: float = 0.01                    # weight of the discriminative (centre) loss
    lambda_init_logit: float = 0.5
    lambda_lr: float = 10.0
    lambda_momentum: float = 0.0
    centre_lr: float = 0.5
    centre_push_lr: float = 0.05
    calibration_hidden: tuple = (512, 256)
    calibration_floor_logit: float | None = -1.3
    class_balanced: bool = False

    def __post_init__(self) -> None:
        if self.num_neighbors < 1:
            raise ConfigError(f"LDLVA num_neighbors must be >= 1, got {self.num_neighbors}")
        if not 0.0 <= self.lambda_momentum < 1.0:
            raise ConfigError(f"LDLVA lambda_momentum must be in [0, 1), got {self.lambda_momentum}")


class CalibrationNet(nn.Module):
    """c_ij = sigmoid(max(MLP([f_i, f_j]), floor)); pairs [E, 2D] -> [E]."""

    def __init__(self, feature_dim: int, hidden: tuple = (512, 256), floor_logit: float | None = -1.3):
        super().__init__()
        layers: list[nn.Module] = []
        width = 2 * feature_dim
        for size in hidden:
            layers += [nn.Linear(width, size), nn.BatchNorm1d(size), nn.ReLU(inplace=True)]
            width = size
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)
        self.floor_logit = floor_logit

    def forward(self, centre_features: torch.Tensor, neighbor_features: torch.Tensor) -> torch.Tensor:
        logit = self.mlp(torch.cat([centre_features, neighbor_features], dim=1)).squeeze(1)  # [E]
        if self.floor_logit is not None:
            logit = logit.clamp_min(self.floor_logit)
        return torch.sigmoid(logit)


@register_method
class LdlvaMethod(Method):
    """LDLVA with the neighbours' images in the batch (grouped batches); see the module docstring."""

    name = "ldlva"
    needs = frozenset({"groups"})
    config_class = LdlvaConfig
    neighbor_source = "batch"

    def __init__(self, config, info: DataInfo):
        super().__init__(config, info)
        config = self.config
        from training.models import build_backbone

        self.backbone, feature_dim = build_backbone(config.backbone, weights_path=config.backbone_weights)
        self.fc = nn.Linear(feature_dim, info.num_classes)
        self.calibration = CalibrationNet(feature_dim, tuple(config.calibration_hidden),
                                          config.calibration_floor_logit)
        n, c = info.num_train, info.num_classes
        self.register_buffer("lambda_logit", torch.full((n,), float(config.lambda_init_logit)))
        self.register_buffer("lambda_velocity", torch.zeros(n))
        self.register_buffer("centres", torch.zeros(c, feature_dim))
        self.register_buffer("targets", torch.zeros(n, c))          # latest target distribution per sample
        self.register_buffer("class_weights", balanced_class_weights(info.class_counts)
                             if config.class_balanced else torch.ones(c))
        self._pending: dict[str, torch.Tensor] = {}
        # diagnostics only (never trained on, not checkpointed): 1 flipped, 0 clean, -1 not seen in a batch yet
        self.register_buffer("seen_flipped", torch.full((n,), -1, dtype=torch.int8), persistent=False)

    # ---------------------------------------------------------------------------------- neighbours
    def _edges(self, batch, features, probs):
        """Grouped batch -> (centre rows [B_c], centre position per edge [E], neighbour probs [E, C],
        neighbour features [E, D], local similarity a_ij [E]); neighbour outputs detached."""
        role, group = batch["role"], batch["group"]
        centre_rows = torch.nonzero(role == 0).squeeze(1)                               # [B_c]
        neighbor_rows = torch.nonzero(role != 0).squeeze(1)                             # [E]
        position_of_group = torch.full((int(group.max()) + 1,), -1, dtype=torch.long, device=group.device)
        position_of_group[group[centre_rows]] = torch.arange(len(centre_rows), device=group.device)
        centre_of_edge = position_of_group[group[neighbor_rows]]                        # [E]
        keep = centre_of_edge >= 0
        neighbor_rows, centre_of_edge = neighbor_rows[keep], centre_of_edge[keep]
        return (centre_rows, centre_of_edge, probs[neighbor_rows], features[neighbor_rows].detach(),
                batch["weight"][neighbor_rows].float())

    def _write_memory(self, index: torch.Tensor, probs: torch.Tensor, features: torch.Tensor) -> None:
        """Per-sample memory of the latest outputs (ldlva_memory only)."""

    # ---------------------------------------------------------------------------------- training
    def training_step(self, batch: dict[str, torch.Tensor], step: StepInfo) -> dict[str, torch.Tensor]:
        cfg = self.config
        features = self.backbone(batch["image"])                                        # [R, D]
        logits = self.fc(features)                                                      # [R, C]
        probs = logits.detach().float().softmax(dim=1)                                  # [R, C]
        centre_rows, centre_of_edge, nb_probs, nb_features, similarity = self._edges(batch, features, probs)
        labels, index = batch["label"][centre_rows], batch["index"][centre_rows]        # [B_c]
        if "clean_label" in batch:
            self.seen_flipped[index] = (labels != batch["clean_label"][centre_rows]).to(torch.int8)

        if len(nb_features) > 1:
            calib = self.calibration(features[centre_rows][centre_of_edge], nb_features)  # [E]
        else:   # batch-norm cannot train on fewer than 2 pairs (early ldlva_memory steps): no calibration
            calib = torch.ones(len(nb_features), device=features.device)
        neighbor_dist, totals = aggregate_neighbors(centre_of_edge, nb_probs.float(),
                                                    similarity * calib.float(), len(centre_rows))
        one_hot = F.one_hot(labels, logits.shape[1]).float()
        neighbor_dist = torch.where((totals > 0).unsqueeze(1), neighbor_dist, one_hot)  # [B_c, C]
        lam = torch.sigmoid(self.lambda_logit[index])                                   # [B_c]
        target = mix_target(labels, neighbor_dist, lam)                                 # [B_c, C]
        centre_logits = logits[centre_rows].float()
        weight = self.class_weights[labels]
        ce = soft_cross_entropy(centre_logits, target, weight)

        # Discriminative loss over every row; in a grouped batch the neighbour rows enter the centre
        # statistics without gradient (as in the authors' code, where they are forwarded outside the tape).
        is_centre = torch.zeros(len(features), dtype=torch.bool, device=features.device)
        is_centre[centre_rows] = True
        pull_features = torch.where(is_centre.unsqueeze(1), features, features.detach()).float()  # [R, D]
        row_lambda = torch.sigmoid(self.lambda_logit[batch["index"]])                   # [R] (no grad)
        pull = centre_pull_loss(pull_features, batch["label"], self.centres, row_lambda)
        self._pending = {"index": index, "target": target.detach(),
                         "lam_grad": lambda_gradient(centre_logits, labels, neighbor_dist, lam, weight),
                         "features": pull_features.detach(), "labels": batch["label"],
                         "row_lambda": row_lambda, "probs": probs, "all_index": batch["index"]}
        return {
            "loss": ce + cfg.gamma * pull,
            "logits": logits[centre_rows].detach(),
            "ce_loss": ce.detach(),
            "centre_loss": pull.detach(),
            "lambda_mean": lam.mean(),
            "calibration_mean": calib.detach().mean() if len(calib) else torch.zeros((), device=lam.device),
            "neighbor_agreement": (neighbor_dist.argmax(1) == labels).float().mean(),
        }

    @torch.no_grad()
    def after_optimizer_step(self, step: StepInfo) -> None:
        """Apply the lambda SGD step, the centre updates and the memory writes of the last training_step,
        with every DDP rank's rows (equal batch sizes per rank, as the engine's samplers give)."""
        pending, self._pending = self._pending, {}
        if not pending:
            return
        cfg = self.config
        index, lam_grad = ddp.gather_cat(pending["index"]), ddp.gather_cat(pending["lam_grad"])
        grad = torch.zeros_like(self.lambda_logit).index_add_(0, index, lam_grad)
        self.lambda_velocity.mul_(cfg.lambda_momentum).add_(grad)
        self.lambda_logit.sub_(cfg.lambda_lr * self.lambda_velocity)
        self.targets[index] = ddp.gather_cat(pending["target"])
        features, labels = ddp.gather_cat(pending["features"]), ddp.gather_cat(pending["labels"])
        centres = centre_update(self.centres, features, labels, ddp.gather_cat(pending["row_lambda"]),
                                cfg.centre_lr)
        self.centres.copy_(centre_push(centres, cfg.centre_push_lr))
        self._write_memory(pending["all_index"], pending["probs"], pending["features"])

    # -------------------------------------------------------------------------------- evaluation
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self.fc(self.backbone(images))                                           # [B, C]

    def target_distributions(self) -> torch.Tensor | None:
        """Latest target distribution d_i per training sample (rows of never-seen samples are 0)."""
        return self.targets

    def uncertainty(self) -> torch.Tensor:
        """Per-sample lambda_i = sigmoid(lambda_hat_i) [N_train]: low means the given label is doubted."""
        return torch.sigmoid(self.lambda_logit)

    def on_epoch_end(self, epoch, out_dir) -> dict[str, float]:
        """Does the learned uncertainty find the flipped labels? lambda on flipped vs clean training samples."""
        return lambda_by_flip(self.uncertainty().detach().float().cpu(), self.seen_flipped.cpu())


def lambda_by_flip(lam: torch.Tensor, flipped: torch.Tensor) -> dict[str, float]:
    """Mean lambda [N] on flipped (flipped == 1) and clean (0) samples, and the AUROC of 1 - lambda for
    telling flipped from clean (0.5: lambda knows nothing; 1: every flipped label is doubted more than any
    clean one). Unseen samples (-1) are left out; a side with no sample gives NaN."""
    lam_f, lam_c = lam[flipped == 1].double(), lam[flipped == 0].double()
    out = {"lambda_flipped": float(lam_f.mean()) if len(lam_f) else float("nan"),
           "lambda_clean": float(lam_c.mean()) if len(lam_c) else float("nan"), "lambda_flip_auroc": float("nan")}
    if len(lam_f) and len(lam_c):                                             # Mann-Whitney U, ties halved
        from scipy.stats import rankdata

        ranks = rankdata(torch.cat([lam_c, lam_f]).numpy())                   # [Nc + Nf], 1 = smallest lambda
        rank_clean = float(ranks[:len(lam_c)].sum()) - len(lam_c) * (len(lam_c) + 1) / 2
        out["lambda_flip_auroc"] = rank_clean / (len(lam_c) * len(lam_f))     # P(lambda_flipped < lambda_clean)
    return out


@register_method
class LdlvaMemoryMethod(LdlvaMethod):
    """LDLVA with a per-sample memory of the latest predictions/features instead of neighbour images."""

    name = "ldlva_memory"
    needs = frozenset()
    neighbor_source = "memory"

    def __init__(self, config, info: DataInfo):
        super().__init__(config, info)
        cfg = self.config
        if cfg.graph_space not in info.graphs:
            raise ConfigError(choices_message("LDLVA graph_space (prepared graphs)", cfg.graph_space,
                                              sorted(info.graphs)))
        neighbors, similarity = info.graphs[cfg.graph_space]
        k = min(cfg.num_neighbors, neighbors.shape[1])
        self.register_buffer("graph_neighbors", torch.as_tensor(neighbors[:, :k], dtype=torch.long),
                             persistent=False)
        self.register_buffer("graph_similarity", torch.as_tensor(similarity[:, :k], dtype=torch.float32),
                             persistent=False)
        n, c, d = info.num_train, info.num_classes, self.centres.shape[1]
        self.register_buffer("memory_probs", torch.zeros(n, c))
        self.register_buffer("memory_features", torch.zeros(n, d, dtype=torch.float16))
        self.register_buffer("memory_seen", torch.zeros(n, dtype=torch.bool))

    def _edges(self, batch, features, probs):
        """Whole batch as centres; neighbours' outputs read from the memory (unseen / -1 slots left out)."""
        index = batch["index"]
        batch_size, k = len(index), self.graph_neighbors.shape[1]
        neighbors = self.graph_neighbors[index]                                         # [B, K], -1: none
        usable = ((neighbors >= 0) & self.memory_seen[neighbors.clamp_min(0)]).reshape(-1)  # [B*K]
        centre_of_edge = torch.arange(batch_size, device=index.device).repeat_interleave(k)[usable]
        flat = neighbors.reshape(-1)[usable]                                            # [E]
        similarity = self.graph_similarity[index].reshape(-1)[usable]                   # [E]
        centre_rows = torch.arange(batch_size, device=index.device)
        return (centre_rows, centre_of_edge, self.memory_probs[flat],
                self.memory_features[flat].to(features.dtype), similarity)

    def _write_memory(self, index: torch.Tensor, probs: torch.Tensor, features: torch.Tensor) -> None:
        ddp.sync_rows(self.memory_probs, index, probs)
        ddp.sync_rows(self.memory_features, index, features)
        ddp.sync_rows(self.memory_seen, index, torch.ones_like(index, dtype=torch.bool))
