"""A media URL the gateway allows names a public host to every parser that may fetch it.

The expert's server or LiteLLM fetches the URL, not the gateway, each through its own URL
parser: Python's ``urlsplit`` (vLLM's checks), yarl (aiohttp, vLLM's media connector),
urllib3 (requests) and httpx (LiteLLM); then glibc's ``inet_aton`` reads a numeric host
(``127.1``, ``0x7f.1``). Whatever host any of them reads from a URL that
:func:`gateway.request.media.classify` allows must be public: a URL they read differently
(``http://example.com\\@127.0.0.1/``: urllib3 reads example.com, the others 127.0.0.1)
must be refused, never guessed. Generated from the pieces such tricks are made of.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from urllib.parse import urlsplit

import httpx
import urllib3.util
import yarl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.request.media import MediaPolicy, classify

#: parser -> (scheme, host) of a URL, as it reads them
PARSERS: dict[str, Callable[[str], tuple[str | None, str | None]]] = {
    "urlsplit": lambda u: (urlsplit(u).scheme, urlsplit(u).hostname),
    "yarl": lambda u: (yarl.URL(u).scheme, yarl.URL(u).host),
    "urllib3": lambda u: (urllib3.util.parse_url(u).scheme, urllib3.util.parse_url(u).host),
    "httpx": lambda u: (httpx.URL(u).scheme, httpx.URL(u).host),
}

_INTERNAL = ("localhost", ".localhost", ".local", ".internal")


def _not_public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address):
        inner = [a for a in (ip.ipv4_mapped, ip.sixtofour) if a is not None]
        if any(_not_public(a) for a in inner):
            return True
    return (ip.is_loopback or ip.is_private or ip.is_link_local or ip.is_multicast
            or ip.is_reserved or ip.is_unspecified or not ip.is_global)


def _inward(host: str | None) -> bool:
    """Whether a fetcher given ``host`` (as a parser read it) reaches this machine or the
    private network: by its address, or by an internal or dotless name."""
    if not host:
        return False  # no host: the fetch fails
    h = host.strip("[]").split("%", 1)[0]
    if not h.isascii():
        try:
            h = h.encode("idna").decode("ascii")  # what the resolver is asked
        except UnicodeError:
            return False  # no resolver is asked
    h = h.lower().rstrip(".")
    try:
        return _not_public(ipaddress.ip_address(h))
    except ValueError:
        pass
    try:
        return _not_public(ipaddress.IPv4Address(socket.inet_aton(h)))
    except OSError:
        pass
    return h == "localhost" or h.endswith(_INTERNAL) or "." not in h


def _hosts(url: str) -> dict[str, str | None]:
    """The host each parser reads from ``url`` when it reads an http(s) URL (a fetcher
    decodes a data: URI, and fetches no other scheme)."""
    out = {}
    for name, parse in PARSERS.items():
        try:
            scheme, host = parse(url)
        except Exception:  # the parser refuses it: nothing is fetched
            continue
        if (scheme or "").lower() in ("http", "https"):
            out[name] = host
    return out


SCHEMES = ["http", "HTTP", "https", "hTtPs", "ftp", "data", "file", ""]
SEPARATORS = ["://", ":/", ":", ":///", ":\\\\", ":/\\", "://\\", ":\\/"]
USERINFO = ["", "a@", "a:b@", "example.com@", "127.0.0.1:80@", "@", "a@b@"]
HOSTS = ["example.com", "127.0.0.1", "127.1", "2130706433", "0x7f.0.0.1", "0177.0.0.1",
         "0x7f000001", "169.254.169.254", "169.254.43518", "10.1", "0", "0.0.0.0",
         "[::1]", "[::ffff:127.0.0.1]", "[::ffff:7f00:1]", "[fe80::1%25eth0]",
         "[2002:7f00:1::]", "localhost", "LOCALHOST.", "metadata.google.internal",
         "metadata", "８.８.８.８", "１２７.０.０.１", "127。0。0。1", "%31%32%37.0.0.1",
         "ex%41mple.com", "8.8.8.8", "[2606:4700::1111]", "1.1.1.1", "example.com.",
         "a.local", "xn--bcher-kva.example", "bücher.example", "127.0.0.1 ", " 127.0.0.1",
         "127.0.0.1\t", "local\u00adhost", "0x7f.1", "127.0.0.1.", ""]
PUBLIC = ["example.com", "8.8.8.8", "[2606:4700::1111]", "cdn.example.org", "1.1.1.1"]
PORTS = ["", ":80", ":", ":8080", ":0x50", ":80:80", ":99999"]
TAILS = ["", "/", "/a.png", "#@example.com", "?@example.com", "\\@example.com/",
         "@evil.example/", "/@127.0.0.1", "\\", " /x", "%2F@127.0.0.1/"]
#: one character a trick may slip in anywhere
NOISE = ["", "\\", "@", "/", ":", "#", "?", "%", " ", "\t", "\n", "[", "]", ".", "0", "\x00",
         "\u3002", "\uff0e"]


def _mostly(usual: str, others: list[str]) -> st.SearchStrategy[str]:
    """``usual`` half the time: most drawn URLs are plain http ones, with one trick in."""
    return st.one_of(st.just(usual), st.sampled_from(others))


@st.composite
def urls(draw: st.DrawFn) -> str:
    pieces = [draw(_mostly("http", SCHEMES)), draw(_mostly("://", SEPARATORS)),
              draw(_mostly("", USERINFO)),
              draw(st.one_of(st.sampled_from(PUBLIC), st.sampled_from(HOSTS))),
              draw(_mostly("", PORTS)), draw(st.sampled_from(TAILS))]
    url = "".join(pieces)
    for _ in range(draw(st.integers(0, 2))):
        k = draw(st.integers(0, len(url)))
        url = url[:k] + draw(st.sampled_from(NOISE)) + url[k:]
    return draw(st.sampled_from(["", " ", "\t"])) + url


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow],
          derandomize=True)
@given(urls())
def test_an_allowed_url_names_a_public_host_to_every_parser(url: str) -> None:
    if classify(url, MediaPolicy()) is not None:
        return
    inward = {name: host for name, host in _hosts(url).items() if _inward(host)}
    assert not inward, (url, inward)


def _assert_safe(url: str) -> bool:
    """Whether ``url`` is allowed; if it is, no parser reads an inward host from it."""
    if classify(url, MediaPolicy()) is not None:
        return False
    inward = {name: host for name, host in _hosts(url).items() if _inward(host)}
    assert not inward, (url, inward)
    return True


def test_one_character_slipped_anywhere_into_a_public_url() -> None:
    """Every position of a few public URLs, each of the trick characters inserted there
    or put in place of the character there, and every userinfo, port and tail after each
    host: what a bypass is made of, tried exhaustively."""
    allowed = 0
    for base in ("http://example.com:80/a.png?x=1#y", "http://8.8.8.8/a",
                 "https://[2606:4700::1111]:443/a"):
        for k in range(len(base) + 1):
            for c in [*NOISE, "127.0.0.1", "@127.0.0.1", "%40", "\u200b", "\u00ad"]:
                allowed += _assert_safe(base[:k] + c + base[k:])
                allowed += _assert_safe(base[:k] + c + base[k + 1:])
    for user in USERINFO:
        for host in HOSTS + PUBLIC:
            for port in PORTS:
                for tail in TAILS:
                    allowed += _assert_safe(f"http://{user}{host}{port}{tail}")
    assert allowed > 1000  # the property was tested on allowed URLs, not only refusals


def test_the_oracle_sees_the_tricks_the_parsers_fall_for() -> None:
    """The property is not vacuous: each of these reads inward to some parser, and each is
    refused."""
    for url in ["http://example.com\\@127.0.0.1/", "http://%31%32%37.0.0.1/",
                "http://127.1/", "http://0x7f.1/", "http://[::ffff:127.0.0.1]/",
                "http://local\u00adhost/", "http://metadata/"]:
        assert any(_inward(h) for h in _hosts(url).values()), url
        assert classify(url, MediaPolicy()) is not None, url
