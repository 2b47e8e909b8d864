"""Texts -> CLIP token ids (OpenAI's BPE, via the Rust `instant-clip-tokenizer`), padded with zeros."""

from __future__ import annotations

import html
import re
from collections.abc import Sequence

import instant_clip_tokenizer
import numpy as np

from services.embedder.manifest import TextConfig

_WHITESPACE = re.compile(r"\s+")


def basic_clean(text: str) -> str:
    """OpenAI's cleaning minus ftfy: unescape HTML twice, collapse whitespace, strip."""
    text = html.unescape(html.unescape(text))
    return _WHITESPACE.sub(" ", text).strip()


class ClipTokenizer:
    """OpenAI CLIP tokenizer: <sot> tokens <eot> then zero padding; long texts keep <eot> last."""

    def __init__(self, cfg: TextConfig | None = None) -> None:
        self.cfg = cfg or TextConfig()
        self._tok = instant_clip_tokenizer.Tokenizer()
        if (self._tok.start_of_text(), self._tok.end_of_text()) != (self.cfg.start_of_text, self.cfg.end_of_text):
            raise ValueError("the CLIP tokenizer's special tokens differ from the model's text config")

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        cleaned = [basic_clean(t) for t in texts]
        ids = self._tok.tokenize_batch(cleaned, context_length=self.cfg.context_length)
        return np.asarray(ids, dtype=np.int64)

    def encode(self, text: str) -> list[int]:
        """Token ids of one text without the special tokens."""
        return [int(t) for t in self._tok.encode(basic_clean(text).lower())]
