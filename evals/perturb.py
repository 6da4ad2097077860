"""Typos, the way people make them: the robustness readings of ``eval guard --typos`` and
``eval routing --typos``.

A classifier that sends "Please solve this math problem" to the math expert and "Plese slove
this math prblem" to the chemistry one (vLLM Semantic Router #952) misroutes real traffic:
users type fast. :func:`typos` makes that traffic from a clean test set, reproducibly: each
word of four letters or more is misspelt with probability ``rate`` by one keyboard slip (two
neighbouring letters swapped, one dropped, one doubled, or one replaced by a neighbouring key
on a QWERTY keyboard), never at its first letter (people seldom slip there, and readers still
recognise the word). Numbers, punctuation, whitespace and short words are left as they are.

The slips of a text depend only on the text and the seed (not on its position in a list), so
the same prompt is misspelt the same way in every split and every run, and its embedding is
cached like any other text's.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence

import numpy as np

__all__ = ["EDITS", "typos", "typos_all"]

#: the keyboard slips, one per misspelt word
EDITS = ("swap", "drop", "double", "neighbour")

_WORD = re.compile(r"[A-Za-z]{4,}")
_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")
_POS = {c: (r, i) for r, row in enumerate(_ROWS) for i, c in enumerate(row)}


def _neighbours(c: str) -> str:
    r, i = _POS[c]
    out = []
    for rr in (r - 1, r, r + 1):
        if 0 <= rr < len(_ROWS):
            for ii in (i - 1, i, i + 1):
                if 0 <= ii < len(_ROWS[rr]) and (rr, ii) != (r, i):
                    out.append(_ROWS[rr][ii])
    return "".join(out)


_NEAR = {c: _neighbours(c) for c in _POS}


def _slip(word: str, rng: np.random.Generator) -> str:
    """``word`` (four letters or more) with one slip somewhere after its first letter."""
    edit = EDITS[int(rng.integers(len(EDITS)))]
    n = len(word)
    if edit == "swap":
        i = int(rng.integers(1, n - 1))
        if word[i] != word[i + 1]:
            return word[:i] + word[i + 1] + word[i] + word[i + 2:]
        edit = "drop"  # swapping equal letters changes nothing
    i = int(rng.integers(1, n))
    c = word[i]
    if edit == "drop":
        return word[:i] + word[i + 1:]
    if edit == "double":
        return word[:i] + c + word[i:]
    near = _NEAR[c.lower()]
    k = near[int(rng.integers(len(near)))]
    return word[:i] + (k.upper() if c.isupper() else k) + word[i + 1:]


def typos(text: str, rate: float, seed: int = 0) -> str:
    """``text`` with each word of four letters or more misspelt with probability ``rate``."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"typo rate must lie in [0, 1]: {rate}")
    if rate == 0.0:
        return text
    rng = np.random.default_rng([seed, zlib.crc32(text.encode("utf-8", "surrogatepass"))])

    def one(m: re.Match[str]) -> str:
        w = m.group(0)
        return _slip(w, rng) if rng.random() < rate else w

    return _WORD.sub(one, text)


def typos_all(texts: Sequence[str], rate: float, seed: int = 0) -> list[str]:
    """:func:`typos` of every text (each independent of the others)."""
    return [typos(t, rate, seed) for t in texts]
