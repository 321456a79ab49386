"""Noise-robustness benchmark: every method x noise variant x seed, reported like the papers' Table 1.

    python bench/benchmark_noise.py --dataset synthetic --methods baseline,ldl_alsg,lanet,soft,ldlva \\
        --noise sym-0.30 --seeds 0,1 --config training/configs/benchmark_tiny.yaml [--jobs 2] [--equal-images]
    make benchmark-noise DATASET=synthetic METHODS=baseline,soft NOISE=sym-0.30 SEEDS=0,1   # the same

A *cell* is one (method, variant, seed) training run of the trainer (training.engine.fit). Each finished
cell is stored as JSON under `<out>/<name>_cells/`, keyed by a fingerprint of its resolved training config
and the dataset version id, so a second invocation retrains nothing that already finished (a cell whose
config or data changed is trained again; a failed cell is retried; a cell killed mid-run resumes from its
run's last checkpoint). Then the table is written: `<out>/<name>.md` (mean +- std over seeds of test
accuracy, mean class accuracy, flip recovery, memorised share and training seconds, one row per method, one column per variant),
`<name>.csv` (long format), `<name>.png` (bars with std error bars) and `<name>.json` (every cell, the
aggregates and the machine).

Flip recovery: the share of flipped training samples (noisy label != clean label) whose clean class the
trained model predicts (training.evaluate.flip_recovery; evaluated without augmentation).

Methods with several evaluation branches (`eval_branches` and `set_eval_branch`, e.g. SOFT's student and
teacher) are evaluated with each branch on the validation split, the better one is kept (and saved in the
run's checkpoint) and the cell records which. Without a validation split the configured branch is kept
(SOFT: `eval_branch`, default student); the test split never chooses anything, and the table says so.
The engine also scores every branch on validation at each epoch end (`val_accuracy_<branch>` in metrics.jsonl;
SOFT's diagnostics count the epochs in which its teacher leads).

`--jobs N` trains N cells at once, each in its own (spawned) process with one torch thread; cells are
seeded, so the numbers are those of a serial run. `--equal-images` adds the control `baseline@images`:
the baseline trained for (1 + K) times the epochs (K: the grouped methods' neighbours per centre), its
schedule stretched alike, so it sees as many training images as ldl_alsg / ldlva do.

The `--config` file is either a plain training-config layer (applied over every method's
configs/<method>.yaml, like `python -m training.train --config`) or has the sections
`benchmark:` (name), `train:` (that common layer) and `methods: {<method>: layer}` (per-method layers).

Modules: `plan` (what to run: cells, their configs and fingerprints), `harness` (running cells, branch
choice, the run lock, outputs), `report` (aggregation, Markdown, CSV, plot), `cli` (the command line).
"""
