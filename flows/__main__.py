"""Command line of the flows: `python -m flows prepare ...` and `python -m flows serve ...`.

    python -m flows prepare --dataset synthetic                       # the embedded dataset, offline
    python -m flows prepare --dataset rafdb --root /data/RAF-DB/basic --config my.yaml --set landmarks.backend=dlib
    python -m flows prepare --dataset affectnet --dask-address tcp://scheduler:8786
    python -m flows serve --dataset rafdb --root /data/RAF-DB/basic --cron "0 3 * * *"   # needs `make server`
    python -m flows verify --dataset synthetic [--version V]          # re-hash a version against its lock

A failing command ends with one `error: ...` line; the full log (tracebacks included) is written to
<artifacts>/_logs/<command>-<time>-<pid>.log (or, when the artefact store is read-only or full, under the
cache or the system's temporary folder: flows.logs). A full disk, a read-only store or a missing
permission is one line naming the path.
"""
from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import sys
from pathlib import Path

from flows.runtime import configure_prefect
from pipeline.contract.cli import Alias, ConfigArgumentParser, add_config_arguments, overrides_of
from pipeline.report.build import REPORT_FILE

# The one table of the prepare command's shortcut flags: each is `--set KEY=VALUE` (pipeline.config.PrepareConfig).
PREPARE_ALIASES = (
    Alias("--dataset", "dataset", help="dataset spec name (default: synthetic)"),
    Alias("--root", "root", help="dataset root (default: $FER_DATA_ROOT/<dataset>)"),
)


def _add_prepare_args(parser: argparse.ArgumentParser) -> None:
    from pipeline.config import PrepareConfig

    add_config_arguments(parser, PREPARE_ALIASES, PrepareConfig,
                         config_help="YAML prepare config (see data_manifests/prepare/); e.g. --set graphs.k=8")
    parser.add_argument("--dask-address", help="run tasks on an existing Dask cluster (tcp://HOST:PORT)")
    parser.add_argument("--dask-workers", type=int, default=0, help="start a local Dask cluster with N workers")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ConfigArgumentParser(prog="python -m flows", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=ConfigArgumentParser)
    _add_prepare_args(commands.add_parser("prepare", help="prepare a dataset version"))
    serve = commands.add_parser("serve", help="serve a scheduled deployment of the prepare flow")
    _add_prepare_args(serve)
    schedule = serve.add_mutually_exclusive_group(required=True)
    schedule.add_argument("--cron", help="cron schedule, e.g. '0 3 * * *'")
    schedule.add_argument("--interval", type=float, help="schedule every N seconds")
    serve.add_argument("--name", help="deployment name (default: prepare-<dataset>)")
    serve.add_argument("--watch", help="also run when this label file or folder changes (e.g. the dataset root)")
    serve.add_argument("--watch-every", type=float, default=30.0, help="seconds between checks of --watch")
    verify = commands.add_parser("verify", help="re-hash a prepared version against its lock; non-zero on drift")
    verify.add_argument("--dataset", default="synthetic", help="dataset name (default: synthetic)")
    verify.add_argument("--version", default="latest", help="version id (default: the latest lock)")
    verify.add_argument("--root", help="dataset root, when the lock's is not under FER_CACHE / FER_DATA_ROOT")
    verify.add_argument("--outputs-only", action="store_true", help="skip the source files (labels, images)")
    return parser.parse_args(argv)


def format_summary(summary: dict) -> str:
    lines = [f"dataset   {summary['dataset']}", f"version   {summary['version']}", f"artefacts {summary['path']}"]
    if summary.get("reused"):
        lines.append("status    complete already: nothing recomputed")
    for stage, value in (summary.get("computed") or {}).items():
        lines.append(f"  {stage:<13} {value}")
    source = summary.get("source") or {}
    for split, counts in (source.get("per_split") or {}).items():
        lines.append(f"  {split:<5} {sum(counts.values()):>7} samples")
    if source.get("quarantine"):
        lines.append(f"  quarantined at source: {source['quarantine']}")
    report = Path(summary["path"]) / REPORT_FILE
    if report.is_file():
        lines.append(f"report    {report}   (open it in a browser)")
    return "\n".join(lines)


def _verify(args: argparse.Namespace) -> int:
    from pipeline.verify import verify_version

    drift = verify_version(args.dataset, args.version, args.root, sources=not args.outputs_only)
    print("\n".join(drift.lines()))
    return 0 if drift.ok else 1


def _prepare_or_serve(args: argparse.Namespace) -> dict | None:
    from pipeline.config import load_prepare_config
    from pipeline.contract.storage import require_writable_roots

    config = load_prepare_config(args.config, overrides_of(args))
    require_writable_roots()             # a read-only store: one line, before Prefect starts
    if args.command == "serve":
        from flows.schedule import serve_prepare

        serve_prepare(config, name=args.name, cron=args.cron, interval=args.interval, watch=args.watch,
                      watch_every_s=args.watch_every)
        return None
    from flows.prepare import run_prepare

    return run_prepare(config, dask_address=args.dask_address, dask_workers=args.dask_workers)


def _run(args: argparse.Namespace) -> int:
    if args.command == "verify":
        return _verify(args)
    summary = _prepare_or_serve(args)
    if summary is not None:
        print(json.dumps(summary, indent=2, default=str) if args.json else format_summary(summary))
    return 0


def storage_message(exc: OSError) -> str | None:
    """The one line of a write that failed for want of room or permission; None for other OS errors."""
    from pipeline.contract.lock import artifacts_root, cache_root, manifests_root
    from pipeline.contract.storage import NO_SPACE, no_space

    if exc.errno in NO_SPACE:
        return str(no_space(exc.filename or artifacts_root()))
    roots = [Path(os.path.abspath(root)) for root in (artifacts_root(), manifests_root(), cache_root())]
    in_a_store = exc.filename is not None and any(
        root == path or root in path.parents for root in roots for path in [Path(os.path.abspath(exc.filename))])
    if exc.errno == errno.EROFS or exc.errno in (errno.EACCES, errno.EPERM) and in_a_store:
        where = f" {exc.filename}" if exc.filename else ""
        return (f"cannot write{where}: {exc.strerror}; make it writable, or point FER_ARTIFACTS / FER_MANIFESTS / "
                f"FER_CACHE at a writable folder, and run again")
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_prefect()
    if args.command != "verify":
        import prefect.main  # noqa: F401  - sets up Prefect's logging; routed_logs must come after it

    from flows.logs import routed_logs, writable_log_path
    from pipeline.contract.errors import FerError
    from pipeline.contract.lock import artifacts_root, cache_root

    log_path = writable_log_path(args.command, [artifacts_root(), cache_root()])
    where = f"traceback in {log_path}" if log_path else "no log file could be written"
    with routed_logs(log_path):
        try:
            return _run(args)
        except FerError as exc:
            logging.getLogger("flows").error("%s failed", args.command, exc_info=True)
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print(f"error: interrupted (log: {log_path or 'none'})", file=sys.stderr)
            return 130
        except Exception as exc:     # noqa: BLE001 - a bug: one line here, the traceback in the log
            logging.getLogger("flows").error("%s failed", args.command, exc_info=True)
            message = storage_message(exc) if isinstance(exc, OSError) else None
            if message is not None:
                print(f"error: {message}", file=sys.stderr)
                return 2
            print(f"error: {type(exc).__name__}: {exc} ({where})", file=sys.stderr)
            return 1


if __name__ == "__main__":
    sys.exit(main())
