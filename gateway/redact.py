"""Credentials never printed: one function that masks them in any text, and a log filter.

Credentials written in an expert's URL are taken out at config load (``ExpertConfig``), so the
URLs the gateway logs, shows in ``/admin/state`` or names in errors are clean by construction;
this is the second line: every client-facing error message (``gateway.errors``) and every log
line of ``expertgate serve`` (:func:`configure_logging`) goes through
:func:`redact`.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re

__all__ = ["QUIET_LOGGERS", "RedactFilter", "configure_logging", "redact"]

#: URL userinfo: everything before the host's last ``@`` (a password may hold an unencoded
#: ``@``), or, when the userinfo is ``user:password`` and the password holds an unencoded
#: ``/``, ``?`` or ``#`` (invalid, but common in generated secrets, and a URL parser then
#: reads the password as the path), everything up to the ``@`` after it. As one regex,
#: ``\b([a-z][a-z0-9+.-]*://)(?:[^/?#\s'"<>]*@|[^/?#\s@'":<>]+:[^\s@'"<>]*@)``, this took
#: quadratic time (every ``\b`` of ``a.a.a.a...`` rescans the rest; every scheme of
#: ``a://x:a://x:...`` rescans to the end of the password): 32 KB of a client's text took
#: 4 s of the event loop. :func:`_mask_userinfo` finds the same matches in one pass.
_SCHEME_RUN = re.compile(r"(?i)(?<![a-z0-9+.-])[a-z0-9+.-]++://")
_SCHEME_START = re.compile(r"(?i)\b[a-z]")
#: the characters that end each part of the userinfo: the whole of it (``@`` before one of
#: these), the user name of ``user:password``, the password
_END_ALL = re.compile(r"[/?#\s'\"<>]")
_END_USER = re.compile(r"[/?#\s@'\":<>]")
_END_PASSWORD = re.compile(r"[\s@'\"<>]")


def _mask_userinfo(text: str) -> str:
    out: list[str] = []
    done = 0  # text[:done] is in out
    # the end of the password last looked for, and where that search started: a later one
    # starting in between ends there too (no end character lies between)
    pw_from, pw_end = -1, -1
    n = len(text)
    pos = 0
    while (run := _SCHEME_RUN.search(text, pos)) is not None:
        s = run.end()
        pos = s
        start = _SCHEME_START.search(text, run.start(), s - 3)
        if start is None:  # no scheme begins in this run ("1a://")
            continue
        end = _END_ALL.search(text, s)
        at = text.rfind("@", s, end.start() if end is not None else n)
        if at < 0:
            user_end = _END_USER.search(text, s)
            if user_end is None or user_end.start() == s or text[user_end.start()] != ":":
                continue
            q = user_end.start() + 1
            if not pw_from <= q <= pw_end:
                m = _END_PASSWORD.search(text, q)
                pw_from, pw_end = q, m.start() if m is not None else n
            if pw_end == n or text[pw_end] != "@":
                continue
            at = pw_end
        out.append(text[done:start.start()])
        out.append(text[start.start():s])
        out.append("***@")
        done = pos = at + 1
    if not out:
        return text
    out.append(text[done:])
    return "".join(out)
_BEARER = re.compile(r"\b([Bb]earer)\s+[A-Za-z0-9._~+/=-]{8,}")
#: ``Basic <base64 of user:password>`` (the scheme in any case); masked only when the token
#: decodes to ``user:password``, so prose ("basic question") is left alone
_BASIC = re.compile(r"(?i)\b(basic)(\s+)([A-Za-z0-9+/]{4,}={0,2})(?![A-Za-z0-9+/=])")


def _basic(m: re.Match[str]) -> str:
    token = m.group(3)
    try:
        raw = base64.b64decode(token + "=" * (-len(token) % 4), validate=True)
    except (binascii.Error, ValueError):
        return m.group(0)
    return f"{m.group(1)}{m.group(2)}***" if b":" in raw else m.group(0)


def redact(text: str) -> str:
    """``text`` with credentials masked: URL userinfo (``http://u:pw@host`` ->
    ``http://***@host``, also when the password holds an unencoded ``/`` or ``@``), bearer
    tokens (``Bearer sk-...`` -> ``Bearer ***``) and HTTP Basic credentials
    (``Basic dTpwdw==`` -> ``Basic ***``)."""
    if "@" in text:
        text = _mask_userinfo(text)
    if "earer" in text:
        text = _BEARER.sub(r"\1 ***", text)
    if "asic" in text or "ASIC" in text:
        text = _BASIC.sub(_basic, text)
    return text


class RedactFilter(logging.Filter):
    """Masks credentials in a record's final message (installed on log handlers)."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        clean = redact(msg)
        if clean != msg:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            fmt = logging.Formatter()
            record.exc_text = redact(fmt.formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


#: libraries the upstream calls go through whose DEBUG (and, for LiteLLM, INFO) records dump
#: each request: its messages (the prompt, whatever ``log_prompts`` says) and options;
#: LiteLLM also writes them through its own handler, past :class:`RedactFilter`
QUIET_LOGGERS = ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy", "openai", "httpx", "httpcore")


def configure_logging(level: str) -> None:
    """The process log of ``expertgate serve`` (and of each of its workers): one line per
    record on stderr, every line through :class:`RedactFilter`. ``level`` is the gateway's
    own; the libraries of :data:`QUIET_LOGGERS` log warnings and errors only, so a
    ``--log-level debug`` never writes a prompt (nor LiteLLM's two lines per call at
    ``info``)."""
    logging.basicConfig(level=level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for h in logging.getLogger().handlers:
        if not any(isinstance(f, RedactFilter) for f in h.filters):
            h.addFilter(RedactFilter())
    own = logging.getLevelName(level.upper())
    floor = max(logging.WARNING, own) if isinstance(own, int) else logging.WARNING
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(floor)
