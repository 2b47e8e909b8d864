"""Prompt templates for text queries and zero-shot classes (a subset of CLIP's ImageNet ensemble)."""

from __future__ import annotations

from tagalong.runtime.errors import InvalidArgument

# From the CLIP paper's prompt-engineering notebook: averaging these beats any single prompt.
ZERO_SHOT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a blurry photo of a {}.",
    "a low resolution photo of a {}.",
    "a bad photo of a {}.",
    "a cropped photo of a {}.",
    "a close-up photo of a {}.",
    "a bright photo of a {}.",
    "a dark photo of a {}.",
    "a photo of the {}.",
    "a good photo of a {}.",
    "a photo of a small {}.",
    "a photo of a large {}.",
    "a jpeg corrupted photo of a {}.",
    "a pixelated photo of a {}.",
    "art of a {}.",
    "a rendering of a {}.",
)

# A free-text query is already a description: a light ensemble only.
SEARCH_TEMPLATES: tuple[str, ...] = ("{}", "a photo of {}.", "an image of {}.")


def fill(templates: list[str] | tuple[str, ...], phrase: str) -> list[str]:
    """Every template with `phrase` in place of "{}"; INVALID_ARGUMENT for a template without "{}"."""
    out = []
    for t in templates:
        if "{}" not in t:
            raise InvalidArgument(f"template {t!r} has no '{{}}' placeholder for the class name")
        out.append(t.replace("{}", phrase))
    return out


def check_class_names(names: list[str]) -> list[str]:
    if len(names) < 2:
        raise InvalidArgument("zero-shot needs at least two class names")
    for n in names:
        if not n.strip():
            raise InvalidArgument("class names must be non-empty")
    if len(set(names)) != len(names):
        raise InvalidArgument("class names repeat")
    return names
