"""The label audit: which training labels of a prepared version are likely wrong.

    python -m training.audit --dataset synthetic --noise sym-0.30 [--folds 5] [--config F] [--set k=v ...]

K-fold out-of-fold class probabilities from the trainer's own engine (each fold is an ordinary, seeded,
resumable run), scored with cleanlab; neighbour label disagreement in each graph space of the version;
cleanlab Datalab's outlier and near-duplicate findings on the version's own KNN graphs; one combined score
(`training.audit.signals.combine`). Outputs live beside runs, addressed by (version, variant, audit hash):
`<runs root>/audits/<dataset>/<version>/<variant>/<audit hash>/`; the version itself is never written.

Modules: `config` (options, the audit hash, where outputs go), `variants` (label sets an audit writes: the
fold variants the folds train on and the cleaned variants `<variant>+audit-<hash>-drop|relabel`, which
training.data resolves like any variant), `folds` (out-of-fold probabilities), `signals` (scores),
`report` (report.html), `run` (the whole audit), `__main__` (the command line).

This package's __init__ imports nothing heavy: training.data imports `training.audit.variants` lazily.
"""
