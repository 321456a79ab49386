"""LA-Net label distribution estimation (LDE): in-batch neighbour aggregation with learned contributions.

Paper (Wu and Cui, ICCV 2023, sec. 3.2): for each sample i of the (DDP-gathered) batch, find its K
nearest neighbours by cosine similarity, self excluded, in the expression space u and, separately, in
the landmark space v. A contribution score c_ij = sigmoid(f([g1(z_i), g2(z_j)])) weights neighbour j's
prediction p_j; the aggregated distribution of one space is sum_j c_ij p_j / sum_j c_ij, and the new
estimate averages the two spaces (eq. 4). Targets are a per-sample EMA,
d_i <- omega d_i + (1 - omega) d_i_new (omega 0.9), initialised from the one-hot noisy labels, and the
prediction is pulled towards them by KL(d_i || p_i) (eq. 7).

Where the paper is silent (checked against sec. 3.1 and 4.2): whether x_i is its own neighbour (eq. 2 takes
the KNN over the batch; here it is excluded, else p_i would be 1/K of each space's estimate); the targets'
initial value (one-hot noisy labels here); eq. 5 updates once per epoch, the same as this per-visit update
when each sample is drawn once per epoch. The predictions p_j are plain softmax (no temperature), and delta
(el.py) is a grid-searched value (fig. 7) with no stated relation to the class count or the noise rate.
Since d_new averages the p_j, its max share is capped by their confidence: `last_step` keeps the last batch's
pieces for the per-epoch diagnostics (diagnostics.LDEEpochStats).

Gradients: the EMA-blended target keeps the graph of d_i_new, so L_kl trains f, g1, g2 and, through
p_j, the expression backbone (as the official code does: nothing there is detached). The stored copy of
the target is detached. `detach_neighbour_predictions` (an option, off by default) stops the gradient
through p_j. Neighbour search itself is non-differentiable (indices only).

Official-code difference (an option is not offered; the paper form is used): the official scorer is one
linear layer split into halves for g1/g2 and an MLP ending in a 2-way softmax (equivalent to a sigmoid
of a difference); here g1, g2 and f are separate MLPs with a sigmoid output, as the paper writes.
"""
from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

STAGE_VERSION = "1.0.0"

_EPS = 1e-8


def cosine_knn(features: torch.Tensor, k: int) -> torch.Tensor:
    """Indices [B, k'] of each row's k most cosine-similar other rows (self excluded), k' = min(k, B - 1).

    Ties are broken by topk's order (lowest index first on CPU). Raises when B < 2.
    """
    batch = features.shape[0]
    if batch < 2:
        raise ValueError(f"cosine_knn needs at least 2 rows to have a neighbour, got {batch}")
    k = min(k, batch - 1)
    unit = F.normalize(features.detach().float(), dim=1)           # [B, D]
    similarity = unit @ unit.T                                      # [B, B]
    similarity.fill_diagonal_(float("-inf"))                        # never its own neighbour
    return similarity.topk(k, dim=1).indices                       # [B, k]


def _mlp(dims: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(itertools.pairwise(dims)):
        layers.append(nn.Linear(d_in, d_out))
        if i < len(dims) - 2:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class ContributionScorer(nn.Module):
    """c_ij = sigmoid(f([g1(z_i), g2(z_j)])): how much neighbour j should shape sample i's distribution.

    g1, g2: two-layer MLPs dim -> hidden -> hidden; f: MLP 2*hidden -> hidden -> hidden/2 -> 1.
    """

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.g1 = _mlp([dim, hidden, hidden])
        self.g2 = _mlp([dim, hidden, hidden])
        self.f = _mlp([2 * hidden, hidden, max(1, hidden // 2), 1])

    def forward(self, features: torch.Tensor, neighbours: torch.Tensor) -> torch.Tensor:
        """features [B, D], neighbours [B, K] indices -> contributions [B, K] in (0, 1)."""
        batch, k = neighbours.shape
        centre = self.g1(features)                                  # [B, H]
        other = self.g2(features)                                   # [B, H]
        pairs = torch.cat([centre.unsqueeze(1).expand(batch, k, centre.shape[1]),  # [B, K, H]
                           other[neighbours]], dim=-1)              # [B, K, 2H]
        return torch.sigmoid(self.f(pairs).squeeze(-1))             # [B, K]


def aggregate_distributions(contributions: torch.Tensor, neighbours: torch.Tensor,
                            probabilities: torch.Tensor) -> torch.Tensor:
    """sum_j c_ij p_j / sum_j c_ij over each row's neighbours: [B, K], [B, K], [B, C] -> [B, C]."""
    weights = contributions / contributions.sum(dim=1, keepdim=True).clamp_min(_EPS)   # [B, K], rows sum to 1
    return (weights.unsqueeze(-1) * probabilities[neighbours]).sum(dim=1)             # [B, C]


def one_hot_targets(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The EMA targets' initial value: one-hot noisy labels [N] -> [N, C] float32."""
    return F.one_hot(labels.long(), num_classes).float()


def ema_blend(stored: torch.Tensor, new: torch.Tensor, omega: float) -> torch.Tensor:
    """omega * stored + (1 - omega) * new (eq. 5): [B, C] each -> [B, C], differentiable in `new`."""
    return omega * stored + (1.0 - omega) * new


def kl_to_targets(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """L_kl = mean_i KL(d_i || softmax(logits_i)) (eq. 7), batch mean; targets may carry gradient."""
    return F.kl_div(F.log_softmax(logits, dim=-1), targets, reduction="batchmean")


class LabelDistributionEstimator(nn.Module):
    """Scorers for the expression (and optionally landmark) space plus the per-sample EMA targets.

    `targets` [N_train, C] is a registered buffer, so checkpoints carry it; rows are indexed by the
    batch's `index` (position in the training split).
    """

    def __init__(self, train_labels: torch.Tensor, num_classes: int, expression_dim: int,
                 landmark_dim: int | None, k: int = 8, omega: float = 0.9, hidden: int = 256,
                 detach_neighbour_predictions: bool = False):
        super().__init__()
        self.k = k
        self.omega = omega
        self.detach_neighbour_predictions = detach_neighbour_predictions
        self.expression_scorer = ContributionScorer(expression_dim, hidden)
        self.landmark_scorer = ContributionScorer(landmark_dim, hidden) if landmark_dim else None
        self.register_buffer("targets", one_hot_targets(train_labels, num_classes))   # [N, C]
        self.last_step: dict[str, torch.Tensor] = {}    # the last batch's detached pieces, for diagnostics

    def space_estimate(self, scorer: ContributionScorer, features: torch.Tensor,
                       probabilities: torch.Tensor, space: str = "expression") -> torch.Tensor:
        """One space's aggregated distribution: features [B, D], probabilities [B, C] -> [B, C].

        The space's neighbours [B, K] and contributions [B, K] (detached) are kept in `last_step`.
        """
        neighbours = cosine_knn(features, self.k)                   # [B, K]
        contributions = scorer(features, neighbours)                # [B, K]
        self.last_step[f"{space}_neighbours"] = neighbours
        self.last_step[f"{space}_contributions"] = contributions.detach()
        return aggregate_distributions(contributions, neighbours, probabilities)

    def new_estimate(self, expression: torch.Tensor, landmark: torch.Tensor | None,
                     logits: torch.Tensor) -> torch.Tensor:
        """d_new (eq. 4): the average over the spaces in use. [B, Du], [B, Dv] | None, [B, C] -> [B, C]."""
        probabilities = torch.softmax(logits.float(), dim=-1)       # [B, C]
        self.last_step = {"probabilities": probabilities.detach()}
        if self.detach_neighbour_predictions:
            probabilities = probabilities.detach()
        if logits.shape[0] < 2:         # a lone sample has no neighbours: keep its own prediction
            return probabilities
        estimate = self.space_estimate(self.expression_scorer, expression.float(), probabilities)
        if self.landmark_scorer is not None and landmark is not None:
            landmark_estimate = self.space_estimate(self.landmark_scorer, landmark.float(), probabilities,
                                                    space="landmark")
            estimate = 0.5 * (estimate + landmark_estimate)
        self.last_step["new"] = estimate.detach()
        return estimate

    def forward(self, expression: torch.Tensor, landmark: torch.Tensor | None, logits: torch.Tensor,
                index: torch.Tensor) -> torch.Tensor:
        """Blended targets [B, C] for this batch (with gradient); the stored rows are updated (no grad).

        If an index occurs twice in the batch, the last row's value is stored.
        """
        new = self.new_estimate(expression, landmark, logits)       # [B, C]
        blended = ema_blend(self.targets[index], new, self.omega)   # [B, C]
        with torch.no_grad():
            self.targets[index] = blended.detach().to(self.targets.dtype)
        return blended
