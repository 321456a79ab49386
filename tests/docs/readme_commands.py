"""The README's commands and the `--help` examples, and the rules the README test runs them by.

What is extracted
  README.md: every fenced block tagged ``bash``/``sh``/``shell`` (one command per line; a trailing ``\\``
  joins lines) and every ``python`` block (run whole). ``text`` blocks are output, not commands.
  --help: the lines of `python -m flows --help`, `python -m training.train --help`,
  `python -m pipeline.sources --help` and `python bench/benchmark_noise.py --help` that start with
  `python`, `make` or `torchrun` (a synopsis such as `CLI: python -m pipeline.sources DATASET ...` is no
  example).

What is skipped, always with a reason
  A block preceded by ``<!-- readme-test: skip (reason) -->`` is skipped whole. Every block whose commands
  all fall under a rule below must carry that marker, so a reader of the README sees which blocks the test
  does not run. Inside other blocks a command is skipped by the first rule its command part (the text
  before a trailing ``# comment``) matches, see SKIP_RULES: an external dataset or root, torchrun, model
  weights, a server or cluster, CUDA, and `make setup` / `make test` (they would rebuild the environment
  or recurse into this suite).

How a command is run
  In a sandbox folder shaped like a fresh clone: every top-level entry of the checkout is linked in
  (`make` runs this checkout's Makefile, `.venv/bin/python` this venv), except `artifacts/`, `runs/`
  and `data_manifests/versions/`, which are real folders of the sandbox that FER_ARTIFACTS, FER_RUNS and
  FER_MANIFESTS point at; FER_CACHE is the test session's cache, PREFECT_HOME a sandbox folder and no
  PREFECT_API_URL is set (each flow starts its own temporary server, as for a new user). Rewrites, in
  this order (REWRITES documents each):
    1. `[--opt VALUE]` (optional parts in help synopses) are dropped;
    2. placeholders: `<run-id>` becomes the newest finished run of the command's method and noise (when
       the commands before it left none, e.g. under `-m slow`, the test first trains one:
       `python -m training.train --dataset synthetic --method M --noise N --config
       training/configs/quickstart.yaml`, shrunk as in 4),
       `<id>`/`<version>` the newest prepared synthetic version;
    3. `/tmp/...` paths move into the sandbox;
    4. long commands shrink by appending (a later value wins): a synthetic prepare gets
       `--set source.n=N` (N = SMALL_N), `pipeline.sources synthetic` gets `--set n=N`, a training run
       `--epochs 1`, a noise benchmark `--set epochs=1 --out <sandbox>/bench-results`; a `make` command
       gets them inside its ARGS="...". In python blocks `source.n=<int>` becomes `source.n=N`.
  A command typed again (its comment aside) runs once; the repeats reuse its result.
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
SMALL_N = 60                      # synthetic faces in the test's prepared version (default: 200)
SHELL_LANGS = ("bash", "sh", "shell")
MARKER = re.compile(r"^<!--\s*readme-test:\s*(?P<verb>\w+)\s*(?:\((?P<reason>[^)]*)\))?\s*-->$")
HELP_COMMANDS = ("python -m flows --help", "python -m training.train --help", "python -m pipeline.sources --help",
                 "python bench/benchmark_noise.py --help")
EXAMPLE_START = re.compile(r"^(python|\.venv/bin/python|make|torchrun)\s")

# (pattern on the command part, reason): the first match skips the command.
SKIP_RULES: tuple[tuple[str, str], ...] = (
    (r"^make setup", "installs the environment this test runs in"),
    (r"^make test", "runs the test suite this test belongs to"),
    (r"/data/|--root\b|\bROOT=", "needs a dataset root (external data)"),
    (r"(--dataset[ =]|\bDATASET=)(?!synthetic\b)[\w-]", "needs an external dataset"),
    (r"\btorchrun\b", "needs torchrun (several processes, GPUs)"),
    (r"/ckpt/|model\.weights=|_checkpoint=", "needs model weights"),
    (r"^make (server|serve)\b|--dask-address|tcp://", "needs a server or a cluster"),
    (r"setup-gpu|\bcuda\b", "needs CUDA"),
)


@dataclass
class Block:
    lang: str
    line: int                     # 1-based line of the opening fence
    text: str
    section: str
    skip: str | None = None       # reason from a readme-test marker


@dataclass
class Command:
    text: str                     # as typed
    origin: str                   # "README.md:123" or the help command
    kind: str = "shell"           # shell | python
    section: str = ""
    skip: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        head = self.text.strip().splitlines()[0][:60] if self.kind == "shell" else f"python block: {self.section}"
        return f"{self.origin} {head}"


def read_blocks(path: Path = README) -> list[Block]:
    """Fenced blocks with their language, section heading and skip marker (the line just above)."""
    blocks, section, marker = [], "", None
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#") and not line.startswith("#!"):
            section = line.lstrip("#").strip()
        match = MARKER.match(line.strip())
        if match:
            if match["verb"] != "skip" or not match["reason"]:
                raise ValueError(f"{path.name}:{i + 1}: write markers as <!-- readme-test: skip (reason) -->")
            marker = match["reason"].strip()
        elif line.startswith("```"):
            lang, start, body = line[3:].strip(), i + 1, []
            i += 1
            while i < len(lines) and not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            blocks.append(Block(lang, start, "\n".join(body), section, marker))
            marker = None
        elif line.strip():
            marker = None
        i += 1
    return blocks


def split_comment(line: str) -> tuple[str, str]:
    """(command part, trailing comment) of one shell line; a `#` inside quotes is no comment."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip(), line[i:]
    return line.rstrip(), ""


def skip_reason(command: str) -> str | None:
    part = split_comment(command)[0].strip()
    for pattern, reason in SKIP_RULES:
        if re.search(pattern, part):
            return reason
    return None


def shell_lines(text: str) -> list[tuple[int, str]]:
    """(offset, command) per command line; `\\` continues a line; blank lines and comments are dropped."""
    out, pending, start = [], "", 0
    for offset, line in enumerate(text.splitlines()):
        if not pending:
            start = offset
        pending = f"{pending} {line.strip()}" if pending else line.strip()
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip()
            continue
        if pending and not pending.startswith("#"):
            out.append((start, pending))
        pending = ""
    return out


def readme_commands(path: Path = README) -> list[Command]:
    commands = []
    for block in read_blocks(path):
        if block.lang == "python":
            commands.append(Command(block.text, f"{path.name}:{block.line}", "python", block.section, block.skip))
        elif block.lang in SHELL_LANGS:
            for offset, text in shell_lines(block.text):
                skip = block.skip or skip_reason(text)
                commands.append(Command(text, f"{path.name}:{block.line + 1 + offset}", "shell", block.section, skip))
    return commands


def unmarked_blocks(path: Path = README) -> list[Block]:
    """Shell blocks whose every command is skipped by a rule but that carry no skip marker."""
    bad = []
    for block in read_blocks(path):
        if block.lang in SHELL_LANGS and block.skip is None:
            lines = shell_lines(block.text)
            if lines and all(skip_reason(text) for _, text in lines):
                bad.append(block)
    return bad


def help_examples(help_command: str, help_text: str) -> list[Command]:
    commands = []
    for line in help_text.splitlines():
        text = line.strip()
        if EXAMPLE_START.match(text):
            commands.append(Command(text, help_command, "shell", "--help", skip_reason(text)))
    return commands


# --- rewrites ------------------------------------------------------------------------------------------

def add_args(command: str, extra: str) -> str:
    """Append arguments: inside ARGS="..." of a make command (created when absent), else at the end."""
    part, comment = split_comment(command)
    if part.startswith("make "):
        match = re.search(r'ARGS="([^"]*)"', part)
        if match:
            part = part[:match.start()] + f'ARGS="{(match[1] + " " + extra).strip()}"' + part[match.end():]
        else:
            part = f'{part} ARGS="{extra}"'
    else:
        part = f"{part} {extra}"
    return f"{part}  {comment}".rstrip()


def shrink(command: str, sandbox: Path) -> str:
    """Step 4 of the module docstring: smaller data and fewer epochs for long commands."""
    part = split_comment(command)[0]
    words = shlex.split(part)
    if not words:
        return command
    if words[:2] == ["make", "prepare"] or ("flows" in words and "prepare" in words):
        return add_args(command, f"--set source.n={SMALL_N}")
    if "pipeline.sources" in words and "synthetic" in words:
        return add_args(command, f"--set n={SMALL_N}")
    if words[:2] == ["make", "train"] or "training.train" in words:
        return add_args(command, "--epochs 1")
    if words[:2] == ["make", "benchmark-noise"] or any(w.endswith("benchmark_noise.py") for w in words):
        return add_args(command, f"--set epochs=1 --out {sandbox / 'bench-results'}")
    return command


def newest_run(runs: Path, method: str, noise: str) -> str | None:
    finished = [d for d in runs.glob(f"synthetic-{method}-{noise}-*") if (d / "checkpoints" / "last.pt").is_file()]
    return max(finished, key=lambda d: d.stat().st_mtime).name if finished else None


def resumed_run(command: str) -> tuple[str, str] | None:
    """(method, noise) of the finished run a `<run-id>` placeholder stands for; None without one."""
    if "<run-id>" not in command:
        return None
    words = shlex.split(split_comment(command)[0])
    method = words[words.index("--method") + 1] if "--method" in words else "baseline"
    noise = words[words.index("--noise") + 1] if "--noise" in words else "clean"
    return method, noise


def substitute(command: str, sandbox: Path, version: str | None) -> str:
    """Steps 1-3 of the module docstring."""
    text = re.sub(r"\s*\[--[^\]]*\]", "", command)
    if "<run-id>" in text:
        method, noise = resumed_run(text)
        run = newest_run(sandbox / "runs", method, noise)
        if run is None:
            raise LookupError(f"no finished {method}/{noise} run in {sandbox / 'runs'} for <run-id>")
        text = text.replace("<run-id>", run)
    if version is not None:
        text = text.replace("<id>", version).replace("<version>", version)
    return re.sub(r"(?<![\w/.])/tmp/", f"{sandbox}/tmp/", text)


def rewrite(command: Command, sandbox: Path, version: str | None) -> str:
    if command.kind == "python":
        return re.sub(r"source\.n=\d+", f"source.n={SMALL_N}", command.text)
    return shrink(substitute(command.text, sandbox, version), sandbox)
