"""The VA-regressor file: what training.methods.va_regression exports and pipeline.stages.pseudo_va loads.

A TorchScript module mapping a normalised image batch [B, 3, S, S] to [B, 2] (valence, arousal in [-1, 1]),
saved with one extra file, META_FILE, holding JSON metadata:

    {"format": FORMAT, "format_version": FORMAT_VERSION, "outputs": ["valence", "arousal"],
     "output_range": [-1, 1], "backbone": ..., "input": {"image_size", "source_size", "mean", "std", ...}, ...}

The writer writes FORMAT_VERSION; the reader accepts FORMAT_VERSIONS and refuses a file lacking any of
INPUT_KEYS under "input".
"""
from __future__ import annotations

FORMAT = "fer-va-regressor"
FORMAT_VERSION = 1                  # what the exporter writes
FORMAT_VERSIONS = (1,)              # what the prepare stage reads
META_FILE = "fer_va.json"           # the TorchScript extra file holding the metadata
INPUT_KEYS = ("image_size", "source_size", "mean", "std")
