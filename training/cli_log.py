"""Where the trainer's command logs go: the terminal gets log lines without tracebacks, a log file gets
everything (INFO and up, tracebacks included), as the flows CLI does.

The log file is `<runs root>/_logs/<command>-<time>-<pid>.log`. The runs root is known only once the config
is resolved (`runtime.runs_root`), so records are held in memory until `runs_root()` names it (or, when the
command fails before that, until it ends: then the default root, $FER_RUNS or <project>/runs, is used). A
root that cannot be written costs the file, not the command: the terminal says so in one line.
"""
from __future__ import annotations

import datetime as _dt
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOGS_DIR = "_logs"
TERMINAL_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
FILE_FORMAT = "%(asctime)s %(levelname)s %(processName)s/%(threadName)s %(name)s: %(message)s"
log = logging.getLogger("training.train")


def default_runs_root() -> Path:
    """$FER_RUNS, else <project>/runs (as the engine's run folders)."""
    return Path(os.environ.get("FER_RUNS") or Path(__file__).resolve().parent.parent / "runs")


class _Terminal(logging.Formatter):
    """The terminal format without exception text: a failure is reported by the command's `error:` line."""

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info = record.exc_text = record.stack_info = None
        try:
            return super().format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved


class _Held(logging.Handler):
    """Keeps records until the log file is known, then hands them (and every later one) to it."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []
        self.target: logging.Handler | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.target is not None:
            self.target.handle(record)
        else:
            self.records.append(record)

    def open(self, path: Path) -> bool:
        """Start writing to `path`; False (said once on the terminal) when it cannot be created."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            target = logging.FileHandler(path, encoding="utf-8")
        except OSError as exc:
            print(f"warning: the log file {path} cannot be written ({exc}); logging to the terminal only",
                  file=sys.stderr)
            self.records.clear()
            self.target = logging.NullHandler()
            return False
        target.setFormatter(logging.Formatter(FILE_FORMAT))
        for record in self.records:
            target.handle(record)
        self.records.clear()
        self.target = target
        return True

    def close(self) -> None:
        if self.target is not None:
            self.target.close()
        super().close()


class CommandLog:
    """What a command gets from `command_log`: where its log goes, and how to record its failure there."""

    def __init__(self, command: str, held: _Held):
        self.command, self._held = command, held
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        self._name = f"{command}-{stamp}-{os.getpid()}.log"
        self.path = default_runs_root() / LOGS_DIR / self._name

    def runs_root(self, root: str | Path | None) -> None:
        """The config's runs root is known: the log file goes there from now on."""
        if self._held.target is None:
            self.path = (Path(root) if root else default_runs_root()) / LOGS_DIR / self._name
            self._held.open(self.path)

    def failure(self, exc: BaseException) -> None:
        """The traceback of a failure, to the log file only (the terminal gets the `error:` line)."""
        record = log.makeRecord(log.name, logging.ERROR, __file__, 0, "%s failed", (self.command,),
                                (type(exc), exc, exc.__traceback__))
        self._held.handle(record)


@contextmanager
def command_log(command: str) -> Iterator[CommandLog]:
    """For the block: INFO records to the terminal (no tracebacks) and to the command's log file."""
    root = logging.getLogger()
    saved_level = root.level
    terminal = logging.StreamHandler(sys.stderr)
    terminal.setFormatter(_Terminal(TERMINAL_FORMAT))
    terminal.setLevel(logging.INFO)
    held = _Held()
    root.addHandler(terminal)
    root.addHandler(held)
    root.setLevel(logging.INFO)
    logged = CommandLog(command, held)
    try:
        yield logged
    finally:
        if held.target is None:
            held.open(logged.path)
        root.removeHandler(terminal)
        root.removeHandler(held)
        held.close()
        root.setLevel(saved_level)
