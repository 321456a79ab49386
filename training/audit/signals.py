"""Scores for every training face's given label: higher means more suspect.

Signals (names as printed and as columns `score_<name>` / `flag_<name>` of audit.parquet, '-' read as '_'):
  cleanlab            1 - cleanlab.rank.get_label_quality_scores(labels, out-of-fold probabilities) (its
                      default, self-confidence); flags: cleanlab.filter.find_label_issues on the same.
  neighbours-<space>  the a_ij-weighted share of the face's graph neighbours whose given label differs from
                      its own, in each graph space of the version (read with pipeline.contract.graphs.read_graph;
                      neighbours outside the audited faces are left out); flags: more than half differ.
  outlier-<space>     1 - cleanlab Datalab's outlier score on the version's own KNN graph (distances as a
                      scipy CSR matrix); flags: Datalab's outlier issues. It describes the face, not its label.
  near_duplicate-<space>  1 - Datalab's near-duplicate score on that graph; flags: its near-duplicate issues.
  combined            the fixed rule of `combine` below, then cleanlab on its result.

The combined rule, fixed before any measurement and using only the given labels (never the true ones): each
label source s (the out-of-fold probabilities P_0 and each graph's neighbour label distribution P_space, both
[n, C]) gets the reliability w_s = max(0, (a_s - c) / (1 - c)), where a_s = mean_i P_s[i, y_i] is how much
probability the source gives the given labels and c = sum_k pi_k^2 is what a source blind to the faces
would give (pi: the given-label shares): a chance-corrected agreement, like Cohen's kappa. The combined
distribution is P = sum_s w_s P_s / sum_s w_s (the out-of-fold probabilities alone when every w_s is 0);
its score is 1 - cleanlab's label quality on P (so it is the w-weighted mean of the sources' 1 - P_s[i, y_i]),
its flags are cleanlab.filter.find_label_issues on P, and the suggested label is argmax P. The outlier and
near-duplicate findings stay out of it: they say a face is unusual or repeated, not that its label is wrong.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from pipeline.contract import graphs as contract_graphs

log = logging.getLogger(__name__)

FLOOR = 1e-6   # probability floor before cleanlab (a neighbour distribution can hold exact zeros)


@dataclass(frozen=True)
class GraphView:
    """One graph space restricted to the audited faces: row i is audited face i."""

    space: str
    neighbours: np.ndarray   # [n, K] int64 positions among the audited faces, -1 where none
    similarity: np.ndarray   # [n, K] float32 a_ij, 0 where none
    distances: np.ndarray    # [n, K] float32, inf where none


def read_graph_view(path, space: str, sample_id: np.ndarray, num_samples: int) -> GraphView:
    """The graph file at `path` (the one reader) mapped onto the audited faces `sample_id` (sorted [n])."""
    graph = contract_graphs.read_graph(path, with_distances=True)
    position = np.full(num_samples, -1, np.int64)
    position[sample_id] = np.arange(len(sample_id))
    rows = np.full(num_samples, -1, np.int64)
    rows[graph.sample_id] = np.arange(len(graph.sample_id))
    present = rows[sample_id] >= 0                                    # [n] faces the graph has a row for
    ids = np.where(present[:, None], graph.neighbors[np.maximum(rows[sample_id], 0)], -1)   # [n, K] sample ids
    nbr = np.where((ids >= 0) & (ids < num_samples), position[np.clip(ids, 0, num_samples - 1)], -1)
    nbr[nbr == np.arange(len(sample_id))[:, None]] = -1               # never its own neighbour
    keep = nbr >= 0
    order = np.argsort(~keep, axis=1, kind="stable")                   # usable first, nearest first
    nbr = np.take_along_axis(nbr, order, 1)
    keep = np.take_along_axis(keep, order, 1)
    sim = np.where(keep, np.take_along_axis(graph.similarity[np.maximum(rows[sample_id], 0)], order, 1), 0.0)
    dist = np.where(keep, np.take_along_axis(graph.distances[np.maximum(rows[sample_id], 0)], order, 1), np.inf)
    return GraphView(space, nbr, sim.astype(np.float32), dist.astype(np.float32))


def neighbour_distribution(view: GraphView, labels: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """([n, C] a_ij-weighted given-label distribution of each face's neighbours, [n] bool has neighbours).

    A face whose usable neighbours all have a_ij = 0 gets the unweighted share; one without usable
    neighbours gets the given-label shares (and counts as having none).
    """
    keep = view.neighbours >= 0                                         # [n, K]
    onehot = np.zeros(view.neighbours.shape + (num_classes,))           # [n, K, C]
    n_idx, k_idx = np.nonzero(keep)
    onehot[n_idx, k_idx, labels[view.neighbours[keep]]] = 1.0
    weight = view.similarity.astype(np.float64) * keep                  # [n, K]
    zero = weight.sum(1) <= 0
    weight[zero] = keep[zero]                                           # all a_ij = 0: unweighted share
    total = weight.sum(1, keepdims=True)                                # [n, 1]
    prior = np.bincount(labels, minlength=num_classes) / len(labels)    # [C]
    dist = np.where(total > 0, (weight[:, :, None] * onehot).sum(1) / np.maximum(total, 1e-12), prior)
    return dist, keep.any(1)


def uniform_knn_graph(view: GraphView):
    """(scipy CSR [n, n] of distances with the same k usable neighbours per row, k); (None, 0) when k is 0.

    cleanlab reads a precomputed kNN graph row by row with the same count per row, nearest first; rows keep
    their first k usable neighbours, k being the smallest usable count.
    """
    from scipy.sparse import csr_matrix

    k = int((view.neighbours >= 0).sum(1).min()) if len(view.neighbours) else 0
    if k == 0:
        return None, 0
    n = len(view.neighbours)
    dist = np.maximum(view.distances[:, :k].astype(np.float64), 0.0)   # [n, k]
    graph = csr_matrix((dist.ravel(), view.neighbours[:, :k].ravel(), np.arange(0, n * k + 1, k)), shape=(n, n))
    return graph, k


def datalab_findings(labels: np.ndarray, probs: np.ndarray, view: GraphView) -> dict | None:
    """cleanlab Datalab's outlier and near-duplicate issues on the graph: scores, flags, duplicate sets."""
    from cleanlab import Datalab

    graph, k = uniform_knn_graph(view)
    if graph is None:
        log.info("graph %s: a face has no usable neighbour; Datalab's outlier and near-duplicate checks skipped",
                 view.space)
        return None
    lab = Datalab(data={"label": labels}, label_name="label", verbosity=0)
    lab.find_issues(pred_probs=probs, knn_graph=graph,
                    issue_types={"outlier": {"k": k}, "near_duplicate": {"k": k}})
    issues = lab.get_issues()
    sets = lab.get_info("near_duplicate")["near_duplicate_sets"]
    conflict = np.array([bool(len(s)) and bool((labels[np.asarray(s, np.int64)] != labels[i]).any())
                         for i, s in enumerate(sets)])
    return {"outlier_score": 1.0 - issues["outlier_score"].to_numpy(float),
            "outlier_flag": issues["is_outlier_issue"].to_numpy(bool),
            "near_duplicate_score": 1.0 - issues["near_duplicate_score"].to_numpy(float),
            "near_duplicate_flag": issues["is_near_duplicate_issue"].to_numpy(bool),
            "near_duplicate_conflict": issues["is_near_duplicate_issue"].to_numpy(bool) & conflict}


def _present(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels renumbered over the classes present, [n, C'] probabilities over them, the present classes)."""
    classes = np.unique(labels)
    index = np.full(probs.shape[1], -1)
    index[classes] = np.arange(len(classes))
    p = np.maximum(probs[:, classes], 0.0) + FLOOR                      # [n, C']
    return index[labels], p / p.sum(1, keepdims=True), classes


def cleanlab_scores(labels: np.ndarray, probs: np.ndarray, filter_by: str) -> tuple[np.ndarray, np.ndarray]:
    """([n] 1 - cleanlab label quality, [n] cleanlab label-issue flags) of `labels` under `probs` [n, C]."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    y, p, _ = _present(labels, probs)
    quality = get_label_quality_scores(y, p)
    flags = find_label_issues(y, p, filter_by=filter_by)
    return 1.0 - quality, np.asarray(flags, bool)


def reliability(probs: np.ndarray, labels: np.ndarray) -> float:
    """Chance-corrected agreement of a label source with the given labels (see the module docstring)."""
    shares = np.bincount(labels, minlength=probs.shape[1]) / len(labels)   # [C]
    chance = float((shares ** 2).sum())
    agree = float(probs[np.arange(len(labels)), labels].mean())
    return max(0.0, (agree - chance) / (1.0 - chance)) if chance < 1.0 else 0.0


def combine(sources: dict[str, np.ndarray], labels: np.ndarray, first: str) -> tuple[np.ndarray, dict]:
    """([n, C] reliability-weighted mean of the sources' distributions, {source: weight}) (module docstring)."""
    weights = {name: reliability(p, labels) for name, p in sources.items()}
    total = sum(weights.values())
    if total <= 0:
        log.info("no label source agrees with the given labels above chance; the combination is %s alone", first)
        weights = {name: float(name == first) for name in sources}
        total = 1.0
    mixed = sum(w * sources[name] for name, w in weights.items()) / total   # [n, C]
    return mixed, {name: w / total for name, w in weights.items()}


@dataclass
class Signals:
    """Every score and flag of one audit, row i = audited face i."""

    scores: dict = field(default_factory=dict)      # signal -> [n] float, higher = more suspect
    flags: dict = field(default_factory=dict)       # signal -> [n] bool
    extra: dict = field(default_factory=dict)       # other per-face columns (near-duplicate conflicts)
    suggested: np.ndarray | None = None             # [n] suggested label (argmax of the combination)
    combined_probs: np.ndarray | None = None        # [n, C]
    weights: dict = field(default_factory=dict)     # source -> weight in the combination
    skipped: list = field(default_factory=list)     # one line per signal that could not be computed


def compute_signals(labels: np.ndarray, oof: np.ndarray, views: list[GraphView], filter_by: str) -> Signals:
    """All signals of `labels` [n] given out-of-fold probabilities `oof` [n, C] and the graph views."""
    out = Signals()
    out.scores["cleanlab"], out.flags["cleanlab"] = cleanlab_scores(labels, oof, filter_by)
    sources = {"cleanlab": oof}
    present_labels, present_probs, _ = _present(labels, oof)
    for view in views:
        dist, has = neighbour_distribution(view, labels, oof.shape[1])
        name = f"neighbours-{view.space}"
        out.scores[name] = 1.0 - dist[np.arange(len(labels)), labels]
        out.flags[name] = has & (out.scores[name] > 0.5)
        if not has.all():
            log.info("graph %s: %d audited faces have no usable neighbour (given-label shares used)",
                     view.space, int((~has).sum()))
        sources[name] = dist
        found = datalab_findings(present_labels, present_probs, view)
        if found is None:
            out.skipped.append(f"outlier/near-duplicate on {view.space}: a face has no usable neighbour")
            continue
        for kind in ("outlier", "near_duplicate"):
            out.scores[f"{kind}-{view.space}"] = found[f"{kind}_score"]
            out.flags[f"{kind}-{view.space}"] = found[f"{kind}_flag"]
        out.extra[f"near_duplicate_conflict_{view.space}"] = found["near_duplicate_conflict"]
    mixed, out.weights = combine(sources, labels, "cleanlab")
    out.combined_probs = mixed
    out.scores["combined"], out.flags["combined"] = cleanlab_scores(labels, mixed, filter_by)
    out.suggested = mixed.argmax(1)
    return out


def truth_metrics(score: np.ndarray, flipped: np.ndarray, flags: np.ndarray | None = None) -> dict:
    """AUROC and precision@n_flipped of a score against the known flips; precision/recall of its flags."""
    from sklearn.metrics import roc_auc_score

    n_flipped = int(flipped.sum())
    order = np.argsort(-score, kind="stable")           # ties: the face listed first ranks first
    out = {"n_flipped": n_flipped, "auroc": float(roc_auc_score(flipped, score)),
           "precision_at_n_flipped": float(flipped[order[:n_flipped]].mean())}
    if flags is not None:
        out.update({"flagged": int(flags.sum()), "flag_precision": float(flipped[flags].mean()) if flags.any()
                    else float("nan"), "flag_recall": float(flags[flipped].mean())})
    return out
