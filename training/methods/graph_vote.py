"""`graph_vote`: the control that could explain a grouped method's gain away (issue 19, item 4).

No paper's mechanism: each training face's target is the a_ij-weighted mean of its own noisy one-hot label
and its graph neighbours' noisy one-hot labels,

    t_i = (e_{y_i} + sum_t sum_{j in N_t(i)} a_ij^t e_{y_j}) / (1 + sum_t sum_{j in N_t(i)} a_ij^t),

(the face itself weighs a_ii = exp(0) = 1), and the network is trained with cross-entropy on t_i, batch by
batch in plain shuffled order. The neighbours are those LDL-ALSG's grouped batches hold: the first `k_au`
of the AU graph and the first `k_landmarks` of the landmark graph, no face twice (as in
training.samplers.group_members), -1 slots (no usable training sample) skipped. If a grouped method does
no better than this, its gain comes from its graphs' labels, not from its own term. The targets are
fixed at build time from the noisy training labels (DataInfo.train_labels) and never see clean labels.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.contract.errors import ConfigError
from training.methods.base import DataInfo, Method, StepInfo, register_method
from training.models import build_backbone


@dataclass(frozen=True)
class GraphVoteConfig:
    backbone: str = "resnet18"
    backbone_weights: str | None = None
    graph_au: str = "au"                 # graph space of the first neighbour set
    k_au: int = 4                        # neighbours taken from it (LDL-ALSG 4.2: 4)
    graph_landmarks: str = "landmarks"   # graph space of the second neighbour set
    k_landmarks: int = 4


def vote_targets(labels: torch.Tensor, num_classes: int,
                 spaces: list[tuple[torch.Tensor, torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (targets [N, C] rows summing to 1, own-label share [N]) from the noisy labels [N] and the graphs.

    spaces: (neighbours [N, K] positions or -1, similarity [N, K], k) per graph, taken in order; a neighbour
    already counted (the face itself or an earlier graph's neighbour) is skipped, walking down the K.
    """
    n = len(labels)
    onehot = F.one_hot(labels.long(), num_classes).float()                    # [N, C]
    votes = onehot.clone()                                                    # [N, C] a_ii = 1
    taken = torch.arange(n)[:, None]                                          # [N, 1] faces counted so far
    for nbr, sim, k in spaces:
        if k <= 0:
            continue
        nbr, sim = nbr.long(), sim.float()                                    # [N, K]
        new = (nbr >= 0) & ~(nbr[:, :, None] == taken[:, None, :]).any(2)     # [N, K] usable, not counted
        rank = torch.cumsum(new.long(), 1)                                    # [N, K] 1-based among the new
        use = new & (rank <= k)                                               # [N, K] first k new ones
        weight = torch.where(use, sim, torch.zeros_like(sim))                 # [N, K]
        votes += torch.einsum("nk,nkc->nc", weight, onehot[nbr.clamp(min=0)])  # [N, C]
        taken = torch.cat([taken, torch.where(use, nbr, torch.full_like(nbr, -1))], 1)
    total = votes.sum(1, keepdim=True)                                        # [N, 1]
    targets = votes / total                                                   # [N, C]
    return targets, targets.gather(1, labels.long()[:, None]).squeeze(1)


@register_method
class GraphVote(Method):
    """Cross-entropy on the a_ij-weighted vote of a face's and its neighbours' noisy labels."""

    name = "graph_vote"
    needs = frozenset()
    config_class = GraphVoteConfig

    def __init__(self, config, info: DataInfo):
        super().__init__(config, info)
        config = self.config
        if info.train_labels is None:
            raise ConfigError("graph_vote needs the training labels (DataInfo.train_labels)")
        spaces = []
        for space, k in ((config.graph_au, config.k_au), (config.graph_landmarks, config.k_landmarks)):
            if k <= 0:
                continue
            if space not in info.graphs:
                raise ConfigError(f"graph_vote needs graph {space!r} for {k} neighbours; the version has "
                                  f"{sorted(info.graphs) or 'none'} (or set method_config.k_* = 0)")
            nbr, sim = info.graphs[space]
            spaces.append((nbr, sim, k))
        if not spaces:
            raise ConfigError("graph_vote needs at least one neighbour (k_au or k_landmarks > 0)")
        self.backbone, dim = build_backbone(config.backbone, config.backbone_weights)
        self.classifier = nn.Linear(dim, info.num_classes)
        targets, own = vote_targets(info.train_labels, info.num_classes, spaces)
        self.register_buffer("targets", targets)                              # [N_train, C]
        self.register_buffer("own_share", own)                                # [N_train]

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.backbone(images))  # [B, C]

    def training_step(self, batch: dict[str, torch.Tensor], step: StepInfo) -> dict[str, torch.Tensor]:
        logits = self.predict(batch["image"])  # [B, C]
        target = self.targets[batch["index"]]  # [B, C]
        loss = -(target * F.log_softmax(logits.float(), dim=1)).sum(1).mean()
        return {"loss": loss, "logits": logits, "ce": loss.detach(),
                "own_share": self.own_share[batch["index"]].mean().detach()}

    def target_distributions(self) -> torch.Tensor:
        return self.targets

    def on_epoch_end(self, epoch, out_dir) -> dict[str, float]:
        """The vote's share for the face's own label, and how often the vote's argmax leaves it."""
        labels = self.info.train_labels.to(self.targets.device)
        return {"vote_own_share": float(self.own_share.mean()),
                "vote_changes_label": float((self.targets.argmax(1) != labels).float().mean())}
