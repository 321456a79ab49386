"""CLI: python -m pipeline.sources DATASET --root ROOT --out DIR

Writes DIR/samples.parquet and DIR/quarantine.parquet and prints a summary: counts per split and
class, exclusions and quarantine by reason.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from pipeline.contract.cli import add_config_arguments, overrides_of
from pipeline.contract.config import overrides_to_dict
from pipeline.contract.errors import FerError
from pipeline.sources import prepare_source
from pipeline.specs import known_specs


def format_summary(summary: dict) -> str:
    """A human-readable table of the source summary."""
    lines = [f"dataset {summary['dataset']}: {summary['samples']} samples (fingerprint {summary['fingerprint']})"]
    if summary.get("inputs") is not None:
        lines.append(f"  input rows or files: {summary['inputs']} (= kept + quarantined + excluded)")
    for split, counts in summary["per_split"].items():
        total = sum(counts.values())
        detail = ", ".join(f"{name} {count}" for name, count in counts.items())
        lines.append(f"  {split:<5} {total:>7}  {detail}")
    for title, key in (("excluded", "exclusions"), ("quarantined", "quarantine")):
        items = summary[key]
        lines.append(f"  {title}: {sum(items.values())}" + (" (" + ", ".join(f"{k} {v}" for k, v in items.items()) + ")" if items else ""))
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipeline.sources", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", help=f"dataset name ({', '.join(known_specs())}) or a spec YAML path")
    parser.add_argument("--root", help="dataset root (default: $FER_DATA_ROOT/<dataset>; synthetic: a cache folder)")
    parser.add_argument("--out", required=True, help="output folder for samples.parquet and quarantine.parquet")
    add_config_arguments(parser, with_config=False, set_help="synthetic generator option, e.g. --set n=200 --set seed=1")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        overrides = overrides_to_dict(overrides_of(args))     # the one --set grammar (pipeline.contract.cli)
        result = prepare_source(args.dataset, args.root, args.out, overrides or None, progress=not args.quiet)
    except FerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary = result.summary()
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
