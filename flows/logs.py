"""Where a command's logs go: everything to a log file under the artefact root, a clean terminal.

The terminal keeps Prefect's progress lines and warnings, never a traceback and never Prefect's own
failure records (the command ends with one `error: ...` line instead); the log file, and the Prefect API
for flow and task runs, get every record with its full traceback.

The log file goes to the first folder that takes it: `<artifacts>/_logs/`, else `<cache>/_logs/`, else
the system's temporary folder (a read-only or full artefact store must not stop `verify`, nor turn a
prepare's one-line error into a logging traceback); a log file that fails mid-run is dropped quietly.
"""
from __future__ import annotations

import datetime as _dt
import logging
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

LOGS_DIR = "_logs"
FILE_FORMAT = "%(asctime)s %(levelname)s %(processName)s/%(threadName)s %(name)s: %(message)s"


class WithoutTraceback(logging.Formatter):
    """Delegates to another formatter, leaving out exception text and stack (the record is not changed)."""

    def __init__(self, inner: logging.Formatter | None):
        super().__init__()
        self.inner = inner or logging.Formatter("%(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info = record.exc_text = record.stack_info = None
        try:
            return self.inner.format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved


class TerminalFilter(logging.Filter):
    """Prefect records below ERROR and other records from WARNING up: what the terminal showed before.

    Failures (ERROR records with a traceback, Prefect's failure records) stay off the terminal: the command
    reports them in its one `error:` line.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and record.exc_info:
            return False
        if record.name.startswith("prefect"):
            return record.levelno < logging.ERROR
        return record.levelno >= logging.WARNING


def _is_terminal(handler: logging.Handler) -> bool:
    stream = getattr(handler, "stream", None)
    return not isinstance(handler, logging.FileHandler) and stream is not None and \
        getattr(stream, "name", "") in ("<stderr>", "<stdout>")


def log_file_path(artifacts: Path, command: str) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(artifacts) / LOGS_DIR / f"{command}-{stamp}-{os.getpid()}.log"


def writable_log_path(command: str, folders: list[Path]) -> Path | None:
    """A new log file in the first of `folders` (then the system's temporary folder) that can hold one;
    None when none can."""
    for folder in [*folders, Path(tempfile.gettempdir()) / "fer-noise"]:
        path = log_file_path(folder, command)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a", encoding="utf-8"):
                pass
            return path
        except OSError:
            continue
    return None


class QuietFileHandler(logging.FileHandler):
    """A log file that, once a write fails (a full disk), is closed and skipped: never a logging traceback
    on the terminal in place of the command's one `error:` line."""

    failed = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.failed:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        self.failed = True
        try:
            self.close()
        except OSError:
            pass


@contextmanager
def routed_logs(log_path: Path | None):
    """For the block: every record (INFO and up, with tracebacks) to `log_path` (None: no file); terminal
    handlers stripped.

    Enter after Prefect is imported (its logging setup replaces the root handlers). The root logger's
    handlers, their formatters and filters are restored on exit.
    """
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    terminal = [h for h in root.handlers if _is_terminal(h)]
    added = [] if terminal else [logging.StreamHandler()]
    saved = [(h, h.formatter) for h in terminal]
    terminal_filter = TerminalFilter()
    for handler in terminal + added:
        handler.setFormatter(WithoutTraceback(handler.formatter))
        handler.addFilter(terminal_filter)
    to_file = None
    if log_path is not None:
        try:
            to_file = QuietFileHandler(log_path, encoding="utf-8")
            to_file.setFormatter(logging.Formatter(FILE_FORMAT))
            to_file.setLevel(logging.INFO)
        except OSError:
            to_file = None
    files = [] if to_file is None else [to_file]
    root.handlers[:] = [*files, *root.handlers, *added]     # the file first: it sees full records
    root.setLevel(logging.INFO)
    try:
        yield log_path
    finally:
        if to_file is not None:
            try:
                to_file.close()
            except OSError:
                pass
        for handler, formatter in saved:
            handler.setFormatter(formatter)
            handler.removeFilter(terminal_filter)
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
