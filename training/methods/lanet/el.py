"""LA-Net expression-landmark (EL) contrastive loss: pseudo-labels, masks, memory bank, momentum encoders.

Paper (Wu and Cui, ICCV 2023, sec. 3.3): pseudo-labels come from the current targets, argmax where the
largest share exceeds delta (0.7), otherwise the sample is ambiguous (eq. 8). The positives of a
confident sample are all samples with the same pseudo-label; those of an ambiguous one are only the
other view of itself (eq. 9). Queries q^u, q^v come from two-layer projection heads on the expression
and landmark features; keys k^u, k^v from momentum (0.999) copies of the encoders on the second view;
negatives from MoCo-style memory banks (8192 keys) of the other modality. The loss is cross-modal,
L_el = L1(q^u; k^v, bank^v) + L2(q^v; k^u, bank^u), temperature 0.1 (eq. 11-13).

Ambiguity is a separate boolean mask, never a sentinel label (the official code writes -index into the
label slot, which collides with class 0 for index 0). "Same group" means: same sample (same training
index), or both confident with the same pseudo-label. Positives are the batch keys in the query's group;
negatives are the bank keys outside it (so a bank copy of the query's own sample is never a negative).
Each positive p contributes -log(e^{s_ip} / (e^{s_ip} + sum_n e^{s_in})), averaged over the query's
positives, then over queries, as in the official code. The bank starts with random unit keys that belong
to no group (they act as negatives until overwritten), as MoCo and the official code do.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

STAGE_VERSION = "1.0.0"

_MASKED_LOGIT = -1e9   # exp() of it is 0 in float32 and bfloat16


def pseudo_labels(targets: torch.Tensor, delta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """targets [B, C] -> (argmax labels [B] int64, confident [B] bool = max share > delta)."""
    share, labels = targets.detach().max(dim=1)                     # [B], [B]
    return labels, share > delta


def same_group_mask(query_labels: torch.Tensor, query_confident: torch.Tensor, query_ids: torch.Tensor,
                    key_labels: torch.Tensor, key_confident: torch.Tensor, key_ids: torch.Tensor) -> torch.Tensor:
    """[Bq, Bk] bool: key j shares query i's group (same sample id, or both confident with one label).

    An ambiguous query's group is only its own sample, whatever its argmax is.
    """
    same_sample = query_ids.unsqueeze(1) == key_ids.unsqueeze(0)                         # [Bq, Bk]
    both_confident = query_confident.unsqueeze(1) & key_confident.unsqueeze(0)          # [Bq, Bk]
    same_label = query_labels.unsqueeze(1) == key_labels.unsqueeze(0)                    # [Bq, Bk]
    return same_sample | (both_confident & same_label)


def contrastive_loss(queries: torch.Tensor, keys: torch.Tensor, positive_mask: torch.Tensor,
                     bank_keys: torch.Tensor, negative_mask: torch.Tensor, temperature: float) -> torch.Tensor:
    """Supervised MoCo-style loss of one direction (eq. 11/12).

    queries [Bq, d] and keys [Bk, d], bank_keys [M, d] are unit vectors; positive_mask [Bq, Bk];
    negative_mask [Bq, M]. Queries without any positive are left out of the mean (0 if none has one).
    """
    positive_logits = queries @ keys.T / temperature                # [Bq, Bk]
    negative_logits = queries @ bank_keys.T / temperature           # [Bq, M]
    # a large finite fill (not -inf) keeps the gradient finite for a query with no negative at all
    negative_logits = negative_logits.masked_fill(~negative_mask, _MASKED_LOGIT)
    negative_lse = torch.logsumexp(negative_logits, dim=1, keepdim=True)   # [Bq, 1]
    pair_loss = torch.logaddexp(positive_logits, negative_lse) - positive_logits   # [Bq, Bk]
    positives = positive_mask.float()
    count = positives.sum(dim=1)                                     # [Bq]
    per_query = (pair_loss * positives).sum(dim=1) / count.clamp_min(1.0)          # [Bq]
    has_positive = count > 0
    if not bool(has_positive.any()):
        return queries.sum() * 0.0
    return per_query[has_positive].mean()


class ProjectionHead(nn.Module):
    """Two-layer MLP dim -> hidden -> out, output L2-normalised (the query/key embedding)."""

    def __init__(self, dim: int, hidden: int, out: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(features), dim=-1)               # [B, out]


def frozen_copy(module: nn.Module) -> nn.Module:
    """A momentum (key) copy of `module`: same weights, no gradients."""
    twin = copy.deepcopy(module)
    for parameter in twin.parameters():
        parameter.requires_grad_(False)
    return twin


@torch.no_grad()
def momentum_update(query: nn.Module, key: nn.Module, momentum: float) -> None:
    """key <- m key + (1 - m) query for parameters; buffers (BN statistics) are copied."""
    for p_query, p_key in zip(query.parameters(), key.parameters()):
        p_key.mul_(momentum).add_(p_query.detach(), alpha=1.0 - momentum)
    for b_query, b_key in zip(query.buffers(), key.buffers()):
        b_key.copy_(b_query)


class MemoryBank(nn.Module):
    """Queues of expression and landmark keys with their pseudo-labels, ambiguity flags and sample ids.

    All state is registered buffers (checkpointed). `enqueue` writes a batch at the pointer and wraps
    around; a batch larger than the bank keeps only its last `size` rows.
    """

    def __init__(self, size: int, dim: int, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.size = size
        self.register_buffer("expression_keys", F.normalize(torch.randn(size, dim, generator=generator), dim=1))
        self.register_buffer("landmark_keys", F.normalize(torch.randn(size, dim, generator=generator), dim=1))
        self.register_buffer("labels", torch.zeros(size, dtype=torch.long))
        self.register_buffer("confident", torch.zeros(size, dtype=torch.bool))   # random keys: no group
        self.register_buffer("ids", torch.full((size,), -1, dtype=torch.long))   # -1: not a sample
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, expression_keys: torch.Tensor, landmark_keys: torch.Tensor, labels: torch.Tensor,
                confident: torch.Tensor, ids: torch.Tensor) -> None:
        """Write [B, d], [B, d], [B], [B], [B] at the pointer, wrapping around."""
        batch = expression_keys.shape[0]
        if batch > self.size:
            expression_keys, landmark_keys = expression_keys[-self.size:], landmark_keys[-self.size:]
            labels, confident, ids = labels[-self.size:], confident[-self.size:], ids[-self.size:]
            batch = self.size
        slots = (int(self.pointer) + torch.arange(batch, device=self.ids.device)) % self.size   # [B]
        self.expression_keys[slots] = expression_keys.detach().to(self.expression_keys.dtype)
        self.landmark_keys[slots] = landmark_keys.detach().to(self.landmark_keys.dtype)
        self.labels[slots] = labels.long()
        self.confident[slots] = confident.bool()
        self.ids[slots] = ids.long()
        self.pointer.fill_((int(self.pointer) + batch) % self.size)

    def negative_mask(self, query_labels: torch.Tensor, query_confident: torch.Tensor,
                      query_ids: torch.Tensor) -> torch.Tensor:
        """[Bq, M] bool: bank entries outside each query's group."""
        return ~same_group_mask(query_labels, query_confident, query_ids, self.labels, self.confident, self.ids)


def expression_landmark_loss(query_expression: torch.Tensor, query_landmark: torch.Tensor,
                             key_expression: torch.Tensor, key_landmark: torch.Tensor,
                             positive_mask: torch.Tensor, negative_mask: torch.Tensor,
                             bank: MemoryBank, temperature: float) -> torch.Tensor:
    """L_el = L1 + L2 (eq. 13): expression queries against landmark keys/bank, and the reverse."""
    loss_1 = contrastive_loss(query_expression, key_landmark, positive_mask,
                              bank.landmark_keys.clone(), negative_mask, temperature)
    loss_2 = contrastive_loss(query_landmark, key_expression, positive_mask,
                              bank.expression_keys.clone(), negative_mask, temperature)
    return loss_1 + loss_2
