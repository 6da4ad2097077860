"""The unsafe lexicon's anchor prefilter (``routers.guard._ANCHORS``): the regular expression
runs only where an anchor word lets a match start, and the verdicts are the ones reading
every character gave (the implementation before the prefilter is kept below, verbatim, as
the reference). Texts written for this test from the patterns' own words; no unsafe data
set was used.

``python -m tests.unit.test_s21_guard_lexicon_prefilter`` (from the repository root, the data
sets in ../shared/data) prints the speed-up."""

from __future__ import annotations

import random
import re
import sys
import threading
import time
from re import _parser as sre_parse  # type: ignore[attr-defined]
from typing import Any

import pytest

from routers import guard
from routers.guard import (
    _ANCHOR_BACK,
    _END_MARGIN,
    _LAST_WORD,
    _PEOPLE_WORD,
    _THING_SET,
    _THINGS,
    _UNSAFE_RE,
    UNSAFE_CHUNK,
    UNSAFE_OVERLAP,
    UNSAFE_PATTERNS,
    UnsafeScanStopped,
    _fold,
    _match_starts,
    unsafe_text,
)

# ----------------------------------------------------------- the reference (before 2026-12)


def reference_unsafe_text(text: str) -> bool:
    if len(text) <= UNSAFE_CHUNK + UNSAFE_OVERLAP:
        return _reference_span(text, 0, len(text))
    text = " ".join(text.split())
    n = len(text)
    for lo in range(0, n, UNSAFE_CHUNK):
        hi = min(n, lo + UNSAFE_CHUNK + UNSAFE_OVERLAP)
        if _reference_span(text, lo, hi):
            return True
        if hi == n:
            break
    return False


def _reference_span(text: str, lo: int, hi: int) -> bool:
    last = hi >= len(text)
    for m in _UNSAFE_RE.finditer(text, lo, hi):
        if not last and m.end() > hi - _END_MARGIN:
            continue
        if m.lastgroup not in ("dehum", "should"):
            return True
        w = _LAST_WORD.search(text, max(0, m.start() - 40), m.start())
        word = w.group(1).lower() if w is not None else ""
        if m.lastgroup == "should" and word not in _THING_SET:
            return True
        if m.lastgroup == "dehum" and _PEOPLE_WORD.fullmatch(word):
            return True
    return False


# ------------------------------------------------------------ matches drawn from a pattern

#: what re.IGNORECASE also takes for these letters (and str.lower does not all give)
_ODD_CASE = {"k": "\u212a", "i": "\u0131\u0130", "s": "\u017f"}
_SPACES = (" ", " ", " ", "  ", "\n", "\t", " \n ", "\u00a0", "\u2003", "\x1c")


def _draw(node: Any, rng: random.Random) -> str:
    """A random string the parsed regular expression ``node`` (re's parser) matches, but
    for its assertions (checked afterwards), in random case."""
    out = []
    for op, av in node:
        name = str(op)
        if name == "LITERAL":
            c = chr(av)
            r = rng.random()
            if c in _ODD_CASE and r < 0.1:
                c = rng.choice(_ODD_CASE[c])
            elif r < 0.3:
                c = c.upper()
            out.append(c)
        elif name == "IN":
            out.append(_draw_in(av, rng))
        elif name == "BRANCH":
            out.append(_draw(rng.choice(av[1]), rng))
        elif name == "SUBPATTERN":
            out.append(_draw(av[3], rng))
        elif name in ("MAX_REPEAT", "MIN_REPEAT"):
            lo, hi, sub = av
            k = rng.randint(lo, min(hi, lo + 3))
            out.extend(_draw(sub, rng) for _ in range(k))
        elif name in ("AT", "ASSERT_NOT", "ASSERT"):
            continue
        else:  # pragma: no cover - a construct the patterns do not use yet
            raise AssertionError(f"draw: {name}")
    return "".join(out)


def _draw_in(items: Any, rng: random.Random) -> str:
    op, av = rng.choice(items)
    name = str(op)
    if name == "CATEGORY":
        assert str(av) == "CATEGORY_SPACE"
        return rng.choice(_SPACES)
    if name == "RANGE":
        return chr(rng.randint(*av))
    assert name == "LITERAL", name
    return chr(av)


def _matches_of(i: int, rng: random.Random, n: int) -> list[str]:
    """``n`` random strings that pattern ``i`` matches whole."""
    pattern = re.compile(UNSAFE_PATTERNS[i], re.IGNORECASE)
    tree = sre_parse.parse(UNSAFE_PATTERNS[i], re.IGNORECASE)
    out: list[str] = []
    while len(out) < n:
        s = _draw(tree, rng)
        if pattern.fullmatch(s):
            out.append(s)
    return out


def _anchor_positions(text: str) -> set[int]:
    f = _fold(text)
    at: set[int] = set()
    for a in _ANCHOR_BACK:
        i = f.find(a)
        while i >= 0:
            at.update(range(i, i + len(a)))
            i = f.find(a, i + 1)
    return at


@pytest.mark.parametrize("i", range(len(UNSAFE_PATTERNS)))
def test_no_pattern_matches_once_its_anchors_are_struck_out(i: int) -> None:
    # a pattern edited with a word the anchors miss fails here (the prefilter would pass
    # over every match of it)
    rng = random.Random(100 + i)
    for s in _matches_of(i, rng, 300):
        flat = " ".join(s.split())
        assert _UNSAFE_RE.search(flat), s
        stripped = flat
        while at := _anchor_positions(stripped):
            stripped = "".join(c for k, c in enumerate(stripped) if k not in at)
        assert _UNSAFE_RE.search(stripped) is None, (s, stripped)


@pytest.mark.parametrize("i", range(len(UNSAFE_PATTERNS)))
def test_every_match_start_is_tried(i: int) -> None:
    # where a match of any pattern starts, whatever word or sign stands before it, is one of
    # the positions the regular expression is tried at (its anchor lies close enough after)
    rng = random.Random(200 + i)
    filler = ["please", "review", "my", "pull", "request", "today"]
    for s in _matches_of(i, rng, 300):
        flat = " ".join(s.split())
        head = " ".join(rng.choice(filler) for _ in range(rng.randint(0, 30)))
        head += rng.choice((" ", ", ", ". ", " (", "\u2014", " \"", ""))
        text = " ".join(f"{head}{flat} {' '.join(filler * 20)}".split())
        at = text.index(flat)
        if _UNSAFE_RE.match(text, at) is None:  # "today" + "i will kill you"
            continue
        starts = _match_starts(text, 0, len(text))
        assert starts is not None
        assert any(first <= at <= last for first, last in starts), (text, at, starts)


# ---------------------------------------------------------------------------- unicode case


def test_the_fold_keeps_the_length_and_turns_what_ignorecase_matches_into_ascii() -> None:
    every = "".join(chr(c) for c in range(sys.maxunicode + 1) if not 0xD800 <= c <= 0xDFFF)
    assert len(_fold(every)) == len(every)
    letters = re.compile("[a-z]", re.IGNORECASE)
    odd = {m.group() for m in letters.finditer(every)} - set(
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
    assert odd == {"\u0130", "\u0131", "\u017f", "\u212a"}  # what _FOLD and lower() cover
    for c in odd:
        (x,) = [x for x in "abcdefghijklmnopqrstuvwxyz" if re.fullmatch(x, c, re.IGNORECASE)]
        assert _fold(c) == x
    for c in "\x1c\u00a0\u2003\u0085":  # whitespace to str.split is whitespace to \s
        assert re.fullmatch(r"\s", c) and c.isspace()


@pytest.mark.parametrize("phrase", [
    "I will \u212aill you", "looking up a \u017fuicide method", "\u0130 am going to kill you",
    "how can I po\u0131son someone", "women are \u017fTUPID", "I hate \u0131mmigrants",
    "they are VERMIN", "\u212aILL ALL THE COPS",
])
def test_odd_case_letters_are_flagged_as_before(phrase: str) -> None:
    pad = "please review my pull request today " * 300
    for text in (phrase, f"{pad}{phrase} {pad}", f"{pad[:UNSAFE_CHUNK - 20]} {phrase} {pad}"):
        assert reference_unsafe_text(text) is True
        assert unsafe_text(text) is True


# --------------------------------------------------------------------- same verdicts, fuzzed

_GROUP_WORDS = ("women", "woman", "men", "man", "gays", "gay", "lesbians", "homosexuals",
                "trans", "transgender", "jews", "jewish", "muslims", "christians", "hindus",
                "immigrants", "refugees", "foreigners", "black", "blacks", "white", "whites",
                "asians", "arabs", "mexicans", "africans", "disabled", "retards", "persons",
                "humans", "folks", "kids", "children", "babies", "cops", "police", "policemen",
                "politicians", "everybody", "they", "he", "she", "he's", "people", "them")
_PATTERN_WORDS = tuple(sorted({w for p in UNSAFE_PATTERNS
                               for w in re.findall(r"[a-z][a-z']+", p.replace("?", ""))}))
_FILLER = ("the", "code", "review", "weather", "bombshell", "killer", "studied", "changed",
           "whatever", "stable", "Vegas", "skill", "diet", "screenshot", "shelter", "proof",
           "a", "i", "I", "to", "be", "is", "are", "all", "my", "someone", "you", "myself",
           "nerve", "agent", "method", "stand", "can't", "plague", "disease", "cancer")
_VOCAB = (*_PATTERN_WORDS, *_ANCHOR_BACK, *_THINGS, *_GROUP_WORDS, *_FILLER)
_SEPS = (" ",) * 12 + ("  ", "\n", "\t", ", ", ". ", "-", "--", " - ", "'", "(", ") ",
                       "\u00a0", "\u2003", "_", "é")


def _word(rng: random.Random) -> str:
    w = rng.choice(_VOCAB)
    r = rng.random()
    if r < 0.05:
        return w.upper()
    if r < 0.1:
        return w.title()
    if r < 0.14:
        for c, odd in _ODD_CASE.items():
            w = w.replace(c, rng.choice(odd))
    return w


_PLAIN = ("please", "review", "my", "pull", "request", "and", "tell", "me", "what", "the",
          "weather", "is", "like", "today", "in", "Paris", "with", "this", "function")


def _words(rng: random.Random, n: int, spaces_only: bool = False, share: float = 1.0) -> str:
    """``n`` words, ``share`` of them from the patterns' words (the others plain)."""
    out = []
    for _ in range(n):
        out.append(_word(rng) if rng.random() < share else rng.choice(_PLAIN))
        out.append(" " if spaces_only else rng.choice(_SEPS))
    return "".join(out)


def _phrases(rng: random.Random) -> list[str]:
    return [s for i in range(len(UNSAFE_PATTERNS)) for s in _matches_of(i, rng, 12)]


def test_the_same_verdicts_on_short_texts() -> None:
    rng = random.Random(21)
    phrases = _phrases(rng)
    verdicts = []
    for k in range(3000):
        text = _words(rng, rng.randint(1, 40))
        if k % 2:
            text += rng.choice(phrases) + rng.choice(_SEPS) + _words(rng, rng.randint(0, 8))
        want = reference_unsafe_text(text)
        assert unsafe_text(text) is want, text
        verdicts.append(want)
    assert 0.2 < sum(verdicts) / len(verdicts) < 0.8  # both verdicts are tried, often


def test_the_same_verdicts_on_long_texts_and_across_chunk_boundaries() -> None:
    rng = random.Random(2112)
    phrases = _phrases(rng)
    # a harmless text the phrases are placed in: anchors ("die" of "studied" aside) but
    # never a match
    harmless = ("please review my pull request and tell me what the weather is like today "
                * 4 + "the process must be killed and the bomb shelter is stable obesity is "
                "a disease ")
    # what a developer kills "should die"; "today are vermin": passed over
    misses = [s for s in phrases if re.fullmatch(UNSAFE_PATTERNS[0], s, re.IGNORECASE)]
    misses += [f"{rng.choice(_THINGS)} {s}" for s in phrases
               if re.fullmatch(UNSAFE_PATTERNS[1], s, re.IGNORECASE)]
    assert not any(reference_unsafe_text(f"today {s}") for s in misses)
    verdicts = []
    t_end = time.monotonic() + 15
    runs = 0
    while runs < 400 and time.monotonic() < t_end:
        runs += 1
        kind = runs % 4
        if kind == 0:  # words from the patterns, anywhere, with whitespace runs
            text = _words(rng, rng.randint(1800, 4000), share=rng.choice((0.05, 0.2, 1.0)))
        elif kind == 1:  # a harmless text with a phrase straddling a chunk's edge
            base = (harmless * 200)[: rng.randint(UNSAFE_CHUNK + UNSAFE_OVERLAP + 1, 30_000)]
            phrase = " ".join(rng.choice(phrases).split())
            edge = UNSAFE_CHUNK * rng.randint(1, max(1, len(base) // UNSAFE_CHUNK))
            at = max(0, edge - rng.randint(0, UNSAFE_OVERLAP + 40))
            text = f"{base[:at]}{rng.choice(_SEPS)}{phrase}{rng.choice(_SEPS)}{base[at:]}"
        elif kind == 2:  # only single spaces: the phrases' words straddle every edge
            text = _words(rng, rng.randint(1800, 4000), spaces_only=True,
                          share=rng.choice((0.05, 0.2, 1.0)))
        else:  # near-misses (no people before "are vermin", "should die") and maybe a hit
            base = (harmless * 200)[: rng.randint(10_000, 30_000)]
            cuts = sorted(rng.randint(0, len(base)) for _ in range(30))
            parts = [base[a:b] for a, b in zip([0, *cuts], [*cuts, len(base)], strict=True)]
            inserts = [rng.choice(misses) for _ in range(30)]
            if rng.random() < 0.6:
                inserts[rng.randrange(30)] = rng.choice(phrases)
            text = "".join(f"{p} {s} " for p, s in zip(parts, [*inserts, ""], strict=True))
        want = reference_unsafe_text(text)
        assert unsafe_text(text) is want, (kind, text)
        verdicts.append(want)
    assert runs >= 100
    assert 0.2 < sum(verdicts) / len(verdicts) < 0.95


def test_a_text_dense_with_anchors_is_read_whole_with_the_same_verdict() -> None:
    rng = random.Random(5)
    harmless = [a for a in _ANCHOR_BACK if a not in ("myself", "suicide method")]
    text = " ".join(rng.choice(harmless) for _ in range(6000))
    assert _match_starts(text, 0, UNSAFE_CHUNK + UNSAFE_OVERLAP) is None
    assert unsafe_text(text) is reference_unsafe_text(text) is False
    text += " they should all be shot"
    assert unsafe_text(text) is reference_unsafe_text(text) is True


# ------------------------------------------------------------------------- stopping a scan

_LONG = "please review my pull request today " * 3000  # 108,000 characters, 14 chunks


def _count_chunks(monkeypatch: pytest.MonkeyPatch, after: int | None = None,
                  stop: threading.Event | None = None) -> list[int]:
    read: list[int] = []
    real = guard._match_starts

    def counted(text: str, lo: int, hi: int) -> list[tuple[int, int]] | None:
        read.append(lo)
        if stop is not None and len(read) == after:
            stop.set()
        return real(text, lo, hi)

    monkeypatch.setattr(guard, "_match_starts", counted)
    return read


def test_a_scan_past_its_deadline_reads_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    read = _count_chunks(monkeypatch)
    with pytest.raises(UnsafeScanStopped):
        unsafe_text(_LONG + "they are vermin", deadline=time.monotonic() - 1)
    assert read == []
    assert unsafe_text(_LONG + "they are vermin", deadline=time.monotonic() + 60)
    assert len(read) == 14
    # a short text is one chunk: read whatever the deadline
    assert unsafe_text("they are vermin", deadline=time.monotonic() - 1)


def test_a_stopped_scan_ends_within_one_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    stop = threading.Event()
    read = _count_chunks(monkeypatch, after=3, stop=stop)
    with pytest.raises(UnsafeScanStopped, match="stopped after 24,576 of"):
        unsafe_text(_LONG + "they are vermin", stop=stop)
    assert read == [0, UNSAFE_CHUNK, 2 * UNSAFE_CHUNK]
    assert isinstance(UnsafeScanStopped(), TimeoutError)  # the gateway's 504 path


# ----------------------------------------------------------------------------- the figures


def _bench(argv: list[str] | None = None) -> None:  # pragma: no cover - run by hand
    """Time the scan before (the reference above) and now on four texts, best of 5; with
    ``--json PATH`` also write the figures with the commit, machine, data checksum and
    command (docs/results/guard-scan/)."""
    import argparse
    import glob
    import json
    import sys
    from pathlib import Path

    from evals.provenance import git_state, path_sha256
    from expertgate.bench.proc import machine_info

    ap = argparse.ArgumentParser(prog="python -m tests.unit.test_s21_guard_lexicon_prefilter")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args(argv)
    git = git_state()
    parts, total = [], 0
    for path in sorted(glob.glob("../shared/data/routellm/mmlu/responses/*.csv")):
        with open(path, encoding="utf-8") as fh:
            parts.append(fh.read())
        total += len(parts[-1])
        if total >= 910_000:
            break
    rng = random.Random(1)
    harmless = [a for a in _ANCHOR_BACK if a not in ("myself", "suicide method")]
    prose = " ".join("".join(parts)[:910_000].split()).split()
    texts = {
        "MMLU responses, 910,000 characters": "".join(parts)[:910_000],
        "anchor words only, 1,000,000 characters":
            " ".join(rng.choice(harmless) for _ in range(200_000))[:1_000_000],
        "prose, one word in 30 an anchor, 1,000,000 characters":
            " ".join(rng.choice(harmless) if rng.random() < 1 / 30 else rng.choice(prose)
                     for _ in range(200_000))[:1_000_000],
        # about the worst: each chunk is read whole, after its anchors were looked for
        "'kill' every sixth word, 1,000,000 characters":
            ("kill " + "review " * 5) * 25_000,
    }
    rows = []
    for name, text in texts.items():
        best = {}
        for f in (reference_unsafe_text, unsafe_text):
            ts = []
            for _ in range(5):
                t0 = time.perf_counter()
                verdict = f(text)
                ts.append(time.perf_counter() - t0)
            best[f.__name__] = (min(ts), verdict)
        (old, v0), (new, v1) = best.values()
        assert v0 is v1
        print(f"{name}: before {old:.3f} s, now {new:.3f} s (now/before {new / old:.2f}), "
              f"verdict {v1}")
        rows.append({"text": name, "characters": len(text), "before_s": old, "now_s": new,
                     "now_over_before": new / old, "verdict": v1})
    if args.json:
        out = {"benchmark": "guard-lexicon-scan", "git": git, "machine": machine_info(),
               "command": "python -m tests.unit.test_s21_guard_lexicon_prefilter "
                          + " ".join(sys.argv[1:] if argv is None else argv),
               "data": path_sha256("../shared/data/routellm/mmlu/responses"),
               "repeats": 5, "statistic": "best of 5, seconds, one thread", "rows": rows}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":  # pragma: no cover
    _bench()
