"""Command line: audit the training labels of one prepared version and label variant.

    python -m training.audit --dataset synthetic --noise sym-0.30 [--folds 5] [--config RECIPE.yaml]
        [--set key=value ...]        (audit keys: version seed method graphs filter_by jobs gallery
                                      neighbours_shown artifacts_root manifests_root; trainer keys: train.<key>)

Prints one line per signal (`audit <signal>: AUROC <x> precision@<n_flipped> <y>` when the variant's flips are
known, else `audit <signal>: <n> flagged`), then the report and the cleaned variants to train on.
"""
from __future__ import annotations

import argparse
import logging
import sys

from pipeline.contract.cli import Alias, ConfigArgumentParser, add_config_arguments, overrides_of
from pipeline.contract.errors import FerError

EXAMPLES = """
examples:
  python -m training.audit --dataset synthetic --noise sym-0.30
  python -m training.audit --dataset synthetic --noise asym-0.30 --folds 3 --set seed=1 --set train.epochs=20
  python -m training.audit --dataset rafdb --noise clean --config training/configs/quickstart.yaml --set jobs=2
then: make train DATASET=synthetic METHOD=baseline NOISE=<a cleaned variant printed at the end>
"""


# The one table of this command's shortcut flags: each is `--set KEY=VALUE` (in command-line order with --set).
AUDIT_ALIASES = (
    Alias("--dataset", "dataset", help="prepared dataset"),
    Alias("--noise", "noise", help="label variant to audit"),
    Alias("--folds", "folds", help="K of the K-fold out-of-fold probabilities"),
    Alias("--config", "config", help="training recipe (YAML) of the fold runs"),
)


def parse_cli(argv: list[str] | None = None) -> list[tuple[str, object]]:
    """The command line as (key, value) overrides of AuditConfig, through the one config grammar."""
    from training.audit.config import AuditConfig

    parser = ConfigArgumentParser(prog="python -m training.audit", description=__doc__.split("\n\n")[0],
                                  epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser, AUDIT_ALIASES, AuditConfig, with_config=False,
                         set_help="any audit key (dotted path, value read as YAML); trainer keys as train.<key>")
    return overrides_of(parser.parse_args(argv))


def format_lines(summary: dict) -> list[str]:
    """The per-signal lines, then where the outputs are."""
    lines = []
    for name, numbers in summary["signals"].items():
        if "auroc" in numbers:
            lines.append(f"audit {name}: AUROC {numbers['auroc']:.3f} precision@{numbers['n_flipped']} "
                         f"{numbers['precision_at_n_flipped']:.3f} ({numbers['flagged']} flagged)")
        else:
            lines.append(f"audit {name}: {numbers['flagged']} flagged")
    lines += [f"skipped: {line}" for line in summary["skipped"]]
    if not summary["graphs"]:
        lines.append("skipped: the version has no graphs (neighbour, outlier and near-duplicate signals)")
    lines.append(f"flagged {summary['flagged']} of {summary['n']} training labels; weights "
                 + ", ".join(f"{k} {v:.2f}" for k, v in summary["weights"].items()))
    lines.append(f"audit: {summary['directory']}")
    lines.append(f"report: {summary['report']}")
    for part, name in summary["cleaned_variants"].items():
        lines.append(f"cleaned ({part}): make train DATASET={summary['dataset']} NOISE={name}")
    return lines


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        from training.audit.config import audit_config
        from training.audit.run import run_audit

        summary = run_audit(audit_config(parse_cli(argv)))
    except FerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(format_lines(summary)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
