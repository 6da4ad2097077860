"""Typos for the robustness readings (evals.perturb): one keyboard slip per misspelt word."""

from __future__ import annotations

import re

import pytest

from evals.perturb import typos, typos_all


def _damerau(a: str, b: str) -> int:
    """Optimal-string-alignment distance (adjacent transpositions count one)."""
    d = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(len(a) + 1):
        d[i][0] = i
    for j in range(len(b) + 1):
        d[0][j] = j
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1,
                          d[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
    return d[len(a)][len(b)]


TEXT = ("Please solve the following mathematical problem step by step: the perimeters "
        "of two squares ABCD and PQRS are 3:2, and their sum is 30. Find each perimeter!")


def test_every_long_word_gets_exactly_one_slip_after_its_first_letter() -> None:
    out = typos(TEXT, 1.0, seed=3)
    words_in, words_out = TEXT.split(" "), out.split(" ")
    assert len(words_in) == len(words_out)  # whitespace untouched: word for word
    for a, b in zip(words_in, words_out, strict=True):
        core = re.fullmatch(r"([A-Za-z]*)(.*)", a)
        assert core is not None
        if len(core.group(1)) >= 4:
            assert b != a and _damerau(a, b) == 1 and b[0] == a[0]
        else:  # short words, numbers, punctuation: as they were
            assert b == a


def test_rate_zero_is_the_text_and_the_slips_are_reproducible() -> None:
    assert typos(TEXT, 0.0) == TEXT
    assert typos(TEXT, 0.3, seed=1) == typos(TEXT, 0.3, seed=1)
    assert typos(TEXT, 0.3, seed=1) != typos(TEXT, 0.3, seed=2)
    # a text's slips do not depend on its place in a list (the same prompt in every split)
    assert typos_all(["hello there world", TEXT], 0.5, 7)[1] == typos_all([TEXT], 0.5, 7)[0]


def test_the_share_of_misspelt_words_follows_the_rate() -> None:
    words = ("keyboard", "question", "router", "expert", "answer") * 2
    # distinct texts (a number is never slipped): 2,000 words, each slipped or not
    texts = [f"{i} " + " ".join(words) for i in range(200)]
    out = typos_all(texts, 0.2, seed=11)
    changed = sum(a != b for t, o in zip(texts, out, strict=True)
                  for a, b in zip(t.split(), o.split(), strict=True))
    assert abs(changed / (200 * len(words)) - 0.2) < 0.03


def test_case_and_non_latin_text_survive() -> None:
    out = typos("KEYBOARD Ünïcödé 東京 🙂", 1.0, seed=0).split()
    assert out[0] != "KEYBOARD" and out[0].isupper()
    # words outside [A-Za-z] are not slipped (the letters between the accents are short)
    assert out[1:] == ["Ünïcödé", "東京", "🙂"]


def test_a_rate_outside_zero_one_is_refused() -> None:
    with pytest.raises(ValueError, match="typo rate"):
        typos("hello", 1.5)
