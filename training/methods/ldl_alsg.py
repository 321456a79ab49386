"""`ldl_alsg`: Label Distribution Learning on Auxiliary Label Space Graphs (Chen et al., CVPR 2020).

Batches are groups (training.samplers.GroupedBatchSampler): a centre x_i, its K_au nearest neighbours in
action-unit space (role 1) and K_lm in landmark space (role 2), each neighbour carrying its graph
similarity a_ij^t = exp(-d_ij^2 / 2 sigma_t^2) as `weight`. The loss per centre is

    CE(f(x_i), y_i) + lambda * sum_t sum_{j in N_t(i)} a_ij^t * sum_c f_c(x_j) * log(f_c(x_j) / f_c(x_i)),

with f the softmax and the neighbours' predictions detached, so the guidance term moves only the centre
towards its neighbours' distributions (the paper's task-space guidance). Both terms are averaged over
the centres of the batch. lambda = 5e-4 as in the paper; either space alone (set the other space's
neighbour count to 0 in data.au_neighbors / data.landmark_neighbors) or both. No official code exists.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.contract.errors import ConfigError, choices_message
from training.methods.base import DataInfo, Method, StepInfo, register_method
from training.models import build_backbone

ROLE_CENTRE, ROLE_AU, ROLE_LANDMARK = 0, 1, 2


@dataclass(frozen=True)
class LdlAlsgConfig:
    backbone: str = "resnet18"
    backbone_weights: str | None = None
    lam: float = 5e-4                        # weight of the graph guidance term
    spaces: tuple = ("au", "landmarks")      # which neighbour roles guide: "au" (1), "landmarks" (2)


def guidance_loss(logits: torch.Tensor, group: torch.Tensor, role: torch.Tensor, weight: torch.Tensor,
                  roles: tuple[int, ...] = (ROLE_AU, ROLE_LANDMARK)) -> torch.Tensor:
    """Mean over centres of sum_j a_ij * KL(f(x_j) || f(x_i)), neighbour predictions detached.

    logits [B, C]; group [B] group id; role [B] (0 centre); weight [B] a_ij (0 for centres).
    Each group must hold exactly one centre.
    """
    log_p = F.log_softmax(logits.float(), dim=1)  # [B, C]
    centre_rows = torch.nonzero(role == ROLE_CENTRE).squeeze(1)  # [G]
    centre_of_group = torch.full((int(group.max()) + 1,), -1, dtype=torch.long, device=logits.device)
    centre_of_group[group[centre_rows]] = centre_rows
    is_neighbour = torch.zeros_like(role, dtype=torch.bool)
    for r in roles:
        is_neighbour |= role == r
    nb = torch.nonzero(is_neighbour).squeeze(1)  # [M]
    if nb.numel() == 0:
        return log_p.sum() * 0.0
    log_q = log_p[nb].detach()                        # [M, C] neighbours, no gradient
    log_centre = log_p[centre_of_group[group[nb]]]    # [M, C] their centres
    kl = (log_q.exp() * (log_q - log_centre)).sum(1)  # [M]
    return (weight[nb].float() * kl).sum() / max(1, centre_rows.numel())


@register_method
class LdlAlsg(Method):
    """CE on group centres plus the auxiliary-label-space graph guidance."""

    name = "ldl_alsg"
    needs = frozenset({"groups"})
    config_class = LdlAlsgConfig

    def __init__(self, config, info: DataInfo):
        super().__init__(config, info)
        config = self.config
        self.backbone, dim = build_backbone(config.backbone, config.backbone_weights)
        self.classifier = nn.Linear(dim, info.num_classes)
        names = {"au": ROLE_AU, "landmarks": ROLE_LANDMARK}
        unknown = [s for s in config.spaces if s not in names]
        if unknown:
            raise ConfigError(choices_message("ldl_alsg space", unknown[0], sorted(names)))
        self.roles = tuple(names[s] for s in config.spaces)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.backbone(images))  # [B, C]

    def training_step(self, batch: dict[str, torch.Tensor], step: StepInfo) -> dict[str, torch.Tensor]:
        logits = self.predict(batch["image"])  # [B, C] centres and neighbours in one pass
        centres = batch["role"] == ROLE_CENTRE
        ce = F.cross_entropy(logits[centres].float(), batch["label"][centres])
        guide = guidance_loss(logits, batch["group"], batch["role"], batch["weight"], self.roles)
        loss = ce + self.config.lam * guide
        return {"loss": loss, "logits": logits, "ce": ce.detach(), "guidance": guide.detach(),
                **guidance_diagnostics(self.config.lam * guide.detach(), loss.detach(), batch["weight"],
                                       batch["role"])}


def guidance_diagnostics(weighted_guide: torch.Tensor, loss: torch.Tensor, weight: torch.Tensor,
                         role: torch.Tensor) -> dict[str, torch.Tensor]:
    """Is the mechanism at work? The guidance term's share of the loss, and the spread of the batch's a_ij.

    weighted_guide and loss are scalars; weight [B] a_ij, role [B] (0 centre). Neighbour slots of weight 0
    (fillers, no usable neighbour) are left out of the a_ij quantiles.
    """
    share = weighted_guide / loss.abs().clamp_min(1e-12)
    a = weight[(role != ROLE_CENTRE) & (weight > 0)].float()                  # [M]
    if a.numel() == 0:
        a = torch.zeros(1, device=weight.device)
    q = torch.quantile(a, torch.tensor([0.1, 0.5, 0.9], device=a.device))    # [3]
    return {"guidance_share": share, "aij_p10": q[0], "aij_median": q[1], "aij_p90": q[2]}
