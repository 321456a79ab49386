"""The per-version report: one self-contained report.html for a prepared dataset version.

It reads only what is in the version directory (DESIGN.md's artefact contract): class histograms per
split, exclusions and quarantine by stage and reason, face detection status, a grid of aligned crops
with landmarks drawn, action-unit distributions, the realised noise transition matrices, and per graph
its parameters, measured recall and neighbour label agreement. A section whose table is absent is
replaced by a short note. CSS is inline and plots are base64 PNG images, so the file opens anywhere
without network access or JavaScript.

    build_report(Path("artifacts/synthetic/<version>"), summary)   # -> .../report.html
"""
from __future__ import annotations

import logging
from html import escape
from pathlib import Path

from pipeline.contract.atomic import write_text
from pipeline.contract.errors import ArtifactError
from pipeline.contract.tables import MANIFEST, QUARANTINE, SAMPLES
from pipeline.report import sections
from pipeline.report.data import VersionData, load_version

log = logging.getLogger(__name__)

STAGE_VERSION = "1.0.0"
REPORT_FILE = "report.html"
SUMMARY_ROWS_OPEN = 30          # a longer run summary is folded into a <details> element

CSS = """
body { font-family: -apple-system, "Segoe UI", "DejaVu Sans", Arial, sans-serif; margin: 0 auto;
       max-width: 1180px; padding: 16px 28px 48px; color: #222; line-height: 1.4; }
h1 { margin-bottom: 4px; } h2 { border-bottom: 2px solid #4c72b0; padding-bottom: 3px; margin-top: 36px; }
h3 { margin: 18px 0 6px; }
nav a { margin-right: 14px; font-size: 0.92em; }
table { border-collapse: collapse; margin: 8px 0 14px; font-size: 0.88em; display: block; overflow-x: auto;
        max-width: 100%; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #eef2f8; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; height: auto; display: block; margin: 6px 0 12px; }
.note { color: #666; font-style: italic; } .muted { color: #777; font-size: 0.88em; }
.row { display: flex; flex-wrap: wrap; gap: 18px; align-items: flex-start; }
.row > div { flex: 0 1 auto; max-width: 100%; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(540px, 1fr)); gap: 4px 28px; }
code { background: #f3f3f3; padding: 0 3px; }
"""


def artefacts() -> tuple[str, ...]:
    """The files a version may hold: samples, quarantine, what each registered stage writes, the manifest."""
    from pipeline.stages.base import registered

    names = [SAMPLES, QUARANTINE, *(name for stage in registered() for name in stage.writes), MANIFEST]
    return tuple(dict.fromkeys(names))


def _artefact_line(directory: Path) -> str:
    """Which DESIGN artefacts the version directory holds."""
    expected = artefacts()
    present = [name for name in expected if (directory / name).exists()]
    missing = [name for name in expected if name not in present]
    return (f"<p class='muted'>Artefacts present: {escape(', '.join(present))}"
            + (f"; absent: {escape(', '.join(missing))}" if missing else "") + ".</p>")


def _header(data: VersionData, summary: dict | None) -> str:
    counts = data.samples.groupby("split").size()
    rows = [(split, int(counts[split])) for split in data.split_order()] + [("total", len(data.samples))]
    parts = [
        f"<h1>{escape(data.dataset)} <span class='muted'>version</span> <code>{escape(data.version)}</code></h1>",
        f"<p class='muted'>{escape(str(data.directory))}</p>",
        f"<p>{len(data.classes)} classes: {escape(', '.join(data.classes))}.</p>",
        sections.table(["split", "samples"], rows),
        _artefact_line(data.directory),
    ]
    summary = summary or data.manifest.get("summary")         # a re-rendered report keeps the flow's summary
    if summary:
        rows = sections.flatten(summary)
        summary_table = sections.table(["key", "value"], rows)
        parts.append(f"<h3>Run summary</h3>{summary_table}" if len(rows) <= SUMMARY_ROWS_OPEN else
                     f"<details><summary><b>Run summary</b> ({len(rows)} rows)</summary>{summary_table}</details>")
    return "\n".join(parts)


GENERAL_SECTIONS = (
    ("classes", "Classes per split", sections.classes_section),
    ("exclusions", "Exclusions and quarantine", sections.exclusions_section),
)


def report_sections() -> list[tuple]:
    """(anchor, title, section) of the report: the general ones, then each registered stage's, in order."""
    from pipeline.stages.base import registered

    return [*GENERAL_SECTIONS, *(item for stage in registered() if stage.report for item in stage.report())]


def render_report(data: VersionData, summary: dict | None = None) -> str:
    """The whole HTML document for one version."""
    chosen = report_sections()
    nav = " ".join(f"<a href='#{anchor}'>{escape(title)}</a>" for anchor, title, _ in chosen)
    body = [_header(data, summary), f"<nav>{nav}</nav>"]
    for anchor, title, make in chosen:
        try:
            content = make(data)
        except (ArtifactError, OSError, ValueError, KeyError, IndexError, TypeError) as error:   # one bad table: a note
            log.warning("report section %r failed: %s", title, error)
            content = sections.note(f"This section could not be drawn: {error}")
        body.append(f"<section id='{anchor}'><h2>{escape(title)}</h2>\n{content}\n</section>")
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<title>{escape(data.dataset)} {escape(data.version)}: dataset report</title>"
            f"<style>{CSS}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n")


def build_report(version_dir: Path, summary: dict | None = None) -> Path:
    """Write `<version_dir>/report.html` for a prepared version and return its path.

    `summary` (optional, from the prepare flow: stage timings, counts computed/reused) is shown as a
    table under the header. Only samples.parquet is required; every other table is optional.
    """
    data = load_version(version_dir)
    html = render_report(data, summary)
    path = Path(version_dir) / REPORT_FILE
    write_text(path, html)
    log.info("report for %s %s: %s (%.0f kB)", data.dataset, data.version, path, path.stat().st_size / 1024)
    return path
