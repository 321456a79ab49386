"""Canonical class names and action-unit names shared by every stage and the trainer."""
from __future__ import annotations

from pipeline.contract.errors import ConfigError, choices_message

# Canonical expression classes in index order (DESIGN.md). 7-class sets drop contempt.
CANONICAL_CLASSES: tuple[str, ...] = (
    "neutral", "happiness", "sadness", "surprise", "fear", "disgust", "anger", "contempt",
)
CLASSES_7: tuple[str, ...] = CANONICAL_CLASSES[:7]

# OpenFace 2.x action units: 17 intensities (_r) and 18 presences (_c, adds AU28).
AU_INTENSITY_NAMES: tuple[str, ...] = (
    "AU01", "AU02", "AU04", "AU05", "AU06", "AU07", "AU09", "AU10", "AU12",
    "AU14", "AU15", "AU17", "AU20", "AU23", "AU25", "AU26", "AU45",
)
AU_PRESENCE_NAMES: tuple[str, ...] = (
    "AU01", "AU02", "AU04", "AU05", "AU06", "AU07", "AU09", "AU10", "AU12",
    "AU14", "AU15", "AU17", "AU20", "AU23", "AU25", "AU26", "AU28", "AU45",
)

SPLITS: tuple[str, ...] = ("train", "val", "test")

# Common spellings seen in folder datasets and label files, mapped to canonical names.
CLASS_ALIASES: dict[str, str] = {
    "neutral": "neutral", "neutrality": "neutral",
    "happiness": "happiness", "happy": "happiness", "joy": "happiness",
    "sadness": "sadness", "sad": "sadness",
    "surprise": "surprise", "surprised": "surprise",
    "fear": "fear", "fearful": "fear", "afraid": "fear",
    "disgust": "disgust", "disgusted": "disgust",
    "anger": "anger", "angry": "anger",
    "contempt": "contempt", "contemptuous": "contempt",
}


def class_names(num_classes: int) -> tuple[str, ...]:
    """Canonical class names for a 7- or 8-class view."""
    if num_classes == 8:
        return CANONICAL_CLASSES
    if num_classes == 7:
        return CLASSES_7
    raise ConfigError(choices_message("number of classes", num_classes, (7, 8)))


def canonical_class(name: str) -> str:
    """Map a class spelling ('Happy', 'angry') to its canonical name, or raise ConfigError."""
    key = name.strip().lower()
    if key not in CLASS_ALIASES:
        raise ConfigError(choices_message("class name", name, CANONICAL_CLASSES))
    return CLASS_ALIASES[key]


def class_index(name: str) -> int:
    """Canonical index of a class name or alias."""
    return CANONICAL_CLASSES.index(canonical_class(name))
