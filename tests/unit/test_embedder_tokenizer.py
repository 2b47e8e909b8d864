"""The CLIP tokenizer against references: OpenAI's published ids and a BPE built from OpenAI's vocabulary."""

from __future__ import annotations

import gzip
import html
import importlib.util
import re
import subprocess
import sys
import zipfile
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

from services.embedder.manifest import TextConfig
from services.embedder.tokenizer import ClipTokenizer

SOT, EOT = 49406, 49407

# Ids published for OpenAI's tokenizer (Hugging Face CLIP docs, instant-clip-tokenizer's README).
PUBLISHED = [
    pytest.param("a photo of a cat", [320, 1125, 539, 320, 2368], id="photo-of-a-cat"),
    pytest.param("a photo of a dog", [320, 1125, 539, 320, 1929], id="photo-of-a-dog"),
    pytest.param("A person riding a motorcycle", [320, 2533, 6765, 320, 10297], id="motorcycle"),
    pytest.param("Hi there", [1883, 997], id="hi-there"),
]

SENTENCES = [
    "a photo of a cat",
    "A PHOTO of an Airplane, taken in 1998!",
    "  lots   of\twhitespace\n here ",
    "an image of a &amp; b &lt;3",
    "naïve café — déjà vu, 東京 and emoji 🐱🚀",
    "don't won't it's we're",
    "x" * 300,
    "truck automobile frog horse ship bird deer",
    "",
]


def _bytes_to_unicode() -> dict[int, str]:
    """OpenAI's reversible byte -> printable character table (from CLIP's simple_tokenizer)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


VOCAB_WHEEL = "open-clip-torch==2.32.0"
VOCAB_MEMBER = "open_clip/bpe_simple_vocab_16e6.txt.gz"
CACHE = Path(__file__).resolve().parents[2] / "var" / "cache" / "clip-vocab"


def _openai_vocab_gz() -> bytes:
    """OpenAI's BPE vocabulary (MIT), read out of the open-clip-torch wheel without installing it
    (the project never depends on open_clip): an installed copy if there is one, else the wheel fetched
    once from PyPI into var/cache with --no-deps."""
    spec = importlib.util.find_spec("open_clip")
    if spec is not None and spec.submodule_search_locations:
        return (Path(next(iter(spec.submodule_search_locations))) / "bpe_simple_vocab_16e6.txt.gz").read_bytes()
    wheels = sorted(CACHE.glob("open_clip_torch-*.whl"))
    if not wheels:
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "-d", str(CACHE), VOCAB_WHEEL], check=True, timeout=300)
        wheels = sorted(CACHE.glob("open_clip_torch-*.whl"))
    with zipfile.ZipFile(wheels[-1]) as wheel:
        return wheel.read(VOCAB_MEMBER)


@lru_cache(maxsize=1)
def _reference_tokenizer():  # type: ignore[no-untyped-def]
    """transformers' CLIPTokenizer built from OpenAI's BPE merges file (shipped, MIT, by open-clip-torch)."""
    from transformers import CLIPTokenizer

    lines = gzip.decompress(_openai_vocab_gz()).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    vocab = list(_bytes_to_unicode().values())
    vocab += [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={v: i for i, v in enumerate(vocab)}, merges=merges)


@pytest.mark.parametrize(("text", "ids"), PUBLISHED)
def test_published_ids(text: str, ids: list[int]) -> None:
    row = ClipTokenizer()([text])[0]
    assert row.dtype == np.int64 and row.shape == (77,)
    assert row[: len(ids) + 2].tolist() == [SOT, *ids, EOT]
    assert not row[len(ids) + 2 :].any()  # zero padding, as OpenAI's tokenize()


@pytest.mark.parametrize("text", SENTENCES)
def test_ids_match_a_bpe_built_from_openais_vocabulary(text: str) -> None:
    reference = _reference_tokenizer()
    # OpenAI's basic_clean + whitespace_clean (ftfy aside); the BPE itself is the reference's.
    cleaned = re.sub(r"\s+", " ", html.unescape(html.unescape(text))).strip()
    expected = reference(cleaned, truncation=True, max_length=77)["input_ids"]
    ours = ClipTokenizer()([text])[0]
    n = len(expected)
    assert ours[:n].tolist() == expected
    assert not ours[n:].any()


def test_reference_agrees_with_published_ids() -> None:
    # The reference itself is checked, so a broken reference cannot make the comparison pass.
    reference = _reference_tokenizer()
    assert reference("a photo of a cat")["input_ids"] == [SOT, 320, 1125, 539, 320, 2368, EOT]


def test_long_text_is_truncated_keeping_end_of_text_last() -> None:
    row = ClipTokenizer(TextConfig(context_length=8))(["one two three four five six seven eight nine"])[0]
    assert row.shape == (8,)
    assert row[0] == SOT and row[-1] == EOT
    assert EOT not in row[1:-1].tolist()


def test_cleaning_html_and_whitespace() -> None:
    tok = ClipTokenizer()
    a, b = tok(["fish &amp; chips", "  FISH   &   chips  "])
    assert a.tolist() == b.tolist()
