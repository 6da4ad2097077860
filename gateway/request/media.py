"""Media URLs in chat messages: which ones the gateway lets an expert fetch.

A message part may name media by URL (``image_url``, ``audio_url``, ``video_url``, a
``file``'s URL). vLLM's media connector fetches any http(s) URL it is given, redirects
followed, with no address denylist (CVE-2025-6242; its only guard is the opt-in
``--allowed-media-domains``), and LiteLLM downloads image URLs in the gateway's own process
for providers that take images inline. So a client of the gateway could make the GPU box (or
the gateway) read cloud metadata (``http://169.254.169.254/``) or an internal service. The
gateway checks every such URL against its ``media_urls`` setting before the request goes
anywhere (:func:`check_messages`, from :func:`gateway.request.admit.admit_body`):

- ``public`` (default): ``data:`` URIs, and http(s) URLs whose host is a DNS name or a
  public IP literal. Refused: an IP literal that is loopback, private, link-local,
  unspecified, multicast, reserved or otherwise not global (IPv4, IPv6, IPv4 inside IPv6,
  and the IPv4 spellings resolvers take: ``2130706433``, ``0x7f.0.0.1``, ``0177.0.0.1``,
  ``127.1``); the names ``localhost``, ``*.localhost``, ``*.local``, ``*.internal`` (so
  ``metadata.google.internal``) and a few like them, and a name without a dot (a search
  domain makes ``metadata`` or ``redis`` an internal host); any other scheme; a URL that
  parsers read differently (a ``user@`` part, a backslash or a percent sign in the host).
  No DNS lookup is made: a public name that resolves inward, or a redirect, is the
  upstream's to refuse (vLLM's ``--allowed-media-domains``).
- ``data-only``: only ``data:`` URIs.
- ``any``: no check (the behaviour before this setting).

``media_allowed_domains`` (exact hosts and ``*.suffix``), when set, is the only set of hosts
``public`` allows, as vLLM's flag: it narrows ``public``, never opens what it refuses.

A plain URL (a DNS name) or a data: URI is allowed at a glance; at most
:data:`MAX_FULL_READS` URLs of a request may need the full reading, which costs about 20
times as much, so that a megabyte of parts holds the event loop no longer than its parse.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from gateway.errors import InvalidRequest

__all__ = ["MAX_FULL_READS", "MEDIA_MODES", "MediaPolicy", "MediaRefused", "check_messages",
           "classify", "media_policy", "parse_domains"]

MEDIA_MODES = ("public", "data-only", "any")

#: the part keys whose value is a URL (a string, or an object with ``url``): OpenAI's
#: ``image_url``, vLLM's ``audio_url`` and ``video_url`` (vLLM also reads each key on a part
#: without a ``type``), the Responses API's ``input_image`` (``image_url`` as a string) and
#: ``input_file`` (``file_url``)
_URL_KEYS = ("image_url", "audio_url", "video_url", "file_url")
#: the fields of a ``file`` part (and of ``input_file``) that hold data, an id, or a URL:
#: checked only when written as a URL (base64 data and ``file-...`` ids have no scheme)
_FILE_KEYS = ("file_data", "file_url", "file_id")
_DOT_URL = {key: f"{key}.url" for key in _URL_KEYS}

#: quoted at most this much of a URL in a refusal (a data URI can be megabytes)
_QUOTED = 100

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*):")
#: how a value of a ``file`` field starts when it is a URL: a scheme, or ``//``
_URLISH = re.compile(r"[\x00-\x20]*(?:[A-Za-z][A-Za-z0-9+.\-]*:|[/\\]{2})")
#: what WHATWG's URL parser (and Python's urlsplit) strip from a URL's ends: C0 controls and
#: space; tab and line breaks anywhere are removed by both
_C0_SPACE = "".join(map(chr, range(0x21)))
_TAB_NL = str.maketrans("", "", "\t\n\r")
#: the common media URL, which every parser reads alike: http(s), then a host of letters,
#: digits, dots, - and _, an optional port, and the end of the authority (/ ? # or the
#: end). :func:`_plain` checks the host is a DNS name (its last label starts with a letter:
#: no IPv4 address); any other URL takes :func:`classify`'s full reading (about 20 times
#: the cost: a megabyte of public IP-literal URLs held the event loop 0.7 s before
#: MAX_FULL_READS bounded them)
_PLAIN = re.compile(r"(?:https?|HTTPS?)://([A-Za-z0-9_.\-]+)(?::([0-9]{1,5}))?(?:[/?#]|\Z)")
#: media URLs of one request that may take the full reading (the others are plain)
MAX_FULL_READS = 100
#: what no host has, and what a parser would decode or stop at (inet_aton stops at a space)
_BAD_HOST = re.compile(r"[\x00-\x20\x7f%]")
_NAME = re.compile(r"[a-z0-9_\-]+(?:\.[a-z0-9_\-]+)*")
#: a last label that makes a host an IPv4 address to WHATWG and to inet_aton
_NUMERIC = re.compile(r"[0-9]+|0x[0-9a-f]*")

#: names that resolve to this machine or the private network, never public media
_INTERNAL_NAMES = frozenset({"localhost", "ip6-localhost", "ip6-loopback",
                             "localhost.localdomain"})
_INTERNAL_SUFFIXES = (".localhost", ".local", ".internal", ".localdomain", ".home.arpa",
                      ".svc")
#: the IPv6 prefix that a NAT64 gateway translates to the IPv4 address in its last 32 bits
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
#: the networks of a private site: RFC 1918, carrier-grade NAT, unique local, site-local
_PRIVATE: dict[int, tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]] = {
    4: tuple(map(ipaddress.IPv4Network, ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",
                                         "100.64.0.0/10"))),
    6: tuple(map(ipaddress.IPv6Network, ("fc00::/7", "fec0::/10")))}


class MediaRefused(InvalidRequest):
    """A media URL the gateway's ``media_urls`` setting does not allow: 400, with the part's
    path as ``param`` and ``reason`` (a short word) counted in
    ``expertgate_media_urls_refused_total``."""

    code = "media_url_not_allowed"

    def __init__(self, message: str, *, param: str, reason: str) -> None:
        super().__init__(message, param=param)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class MediaPolicy:
    mode: str = "public"
    #: hosts allowed exactly, and the suffixes (``.example.com``) of ``*.example.com``;
    #: both empty: any public host
    hosts: frozenset[str] = frozenset()
    suffixes: tuple[str, ...] = ()

    @property
    def listed(self) -> bool:
        return bool(self.hosts or self.suffixes)

    def lists(self, host: str) -> bool:
        return host in self.hosts or host.endswith(self.suffixes)


def parse_domains(text: str) -> list[str]:
    """The entries of ``media_allowed_domains`` (comma-separated), lower-cased; a ValueError
    names an entry that is not a host name or ``*.`` and one."""
    out = []
    for raw in text.split(","):
        entry = raw.strip().lower().rstrip(".")
        if not entry:
            continue
        name = entry[2:] if entry.startswith("*.") else entry
        if not _NAME.fullmatch(name):
            raise ValueError(f"{raw.strip()[:64]!r} is not a host name or *.suffix (e.g. "
                             "images.example.com, *.cdn.example.com): no scheme, port or "
                             "path")
        out.append(entry)
    return out


@functools.lru_cache(maxsize=16)
def media_policy(mode: str, domains: str) -> MediaPolicy:
    """The policy of the settings ``media_urls`` and ``media_allowed_domains``."""
    entries = parse_domains(domains)
    return MediaPolicy(mode, frozenset(e for e in entries if not e.startswith("*.")),
                       tuple(e[1:] for e in entries if e.startswith("*.")))


def check_messages(messages: Any, mode: str, domains: str = "") -> None:
    """A :class:`MediaRefused` for the first media URL of ``messages`` (a body's, as the
    client sent it) that the settings ``media_urls`` (``mode``) and
    ``media_allowed_domains`` (``domains``) do not allow. A body whose messages have no
    parts (most requests) costs a type check per message."""
    if mode == "any" or type(messages) is not list:
        return
    for m in messages:
        if type(m) is dict and type(m.get("content")) is list:
            break
    else:
        return  # no message has parts: nothing can name a URL
    policy = media_policy(mode, domains)
    full = 0
    for value, i, j, key in _urls(messages):
        if type(value) is str and _plain(value, policy):
            continue
        full += 1
        if full > MAX_FULL_READS:
            param = f"messages.{i}.content.{j}.{key}"
            raise MediaRefused(
                f"{param}: more than {MAX_FULL_READS} media URLs in one request need the "
                "gateway's full reading (an IP address, an internationalised name, a user@ "
                "part, padding, any other scheme than http(s) and data:); send at most "
                f"{MAX_FULL_READS}, name their hosts by DNS name, or send the media inline as "
                "data: URIs", param=param, reason="too-many")
        _check_value(value, i, j, key, policy)


def _urls(messages: list[Any]) -> Iterator[tuple[Any, int, int, str]]:
    """(value, message, part, field) of every media URL field of ``messages``."""
    for i, m in enumerate(messages):
        content = m.get("content") if type(m) is dict else None
        if type(content) is not list:
            continue
        for j, part in enumerate(content):
            if type(part) is not dict or (len(part) == 2 and "text" in part
                                          and part.get("type") == "text"):
                continue
            # every other part, whatever its type: vLLM reads a part's media key by the key
            # alone when the part has no type, or has a uuid beside it
            for key in _URL_KEYS:
                if key in part:
                    value = part[key]
                    if type(value) is dict:  # the object form: {"url": ...}
                        value, field = value.get("url"), _DOT_URL[key]
                    else:
                        field = key
                    if value is not None:  # vLLM's reference to media sent before
                        yield value, i, j, field
            data = part.get("file_data")  # the Responses API's input_file
            if type(data) is str and _URLISH.match(data):
                yield data, i, j, "file_data"
            file = part.get("file")
            if type(file) is dict:
                for key in _FILE_KEYS:
                    value, field = file.get(key), f"file.{key}"
                    if key == "file_url":  # a URL field, as image_url is
                        if type(value) is dict:
                            value, field = value.get("url"), "file.file_url.url"
                        if value is not None:
                            yield value, i, j, field
                    elif type(value) is str and _URLISH.match(value):
                        yield value, i, j, field  # data or an id, unless written as a URL


def _plain(url: str, policy: MediaPolicy) -> bool:
    """Whether ``url`` is allowed at a glance: a data: URI, or (``public``) the common form
    of :data:`_PLAIN`; any other takes :func:`classify`'s full reading."""
    if url.startswith(("data:", "DATA:")):
        return True  # what every mode but "any" allows (and "any" checks nothing)
    if policy.mode != "public":
        return False
    m = _PLAIN.match(url)
    if m is None:
        return False
    host, port = m.group(1).lower().rstrip("."), m.group(2)
    last = host.rpartition(".")[2]
    return (bool(last) and last[0].isalpha() and "." in host and ".." not in host
            and host[0] != "." and not (port and int(port) > 65535)
            and not (host in _INTERNAL_NAMES or host.endswith(_INTERNAL_SUFFIXES))
            and (not policy.listed or policy.lists(host)))


def _check_value(value: Any, i: int, j: int, key: str, policy: MediaPolicy) -> None:
    """Part ``j`` of message ``i``: its field ``key`` holds ``value``."""
    if type(value) is not str:
        param = f"messages.{i}.content.{j}.{key}"
        raise MediaRefused(f"{param}: a media URL must be a string (an http(s) URL or a "
                           "data: URI)", param=param, reason="malformed")
    why = classify(value, policy)
    if why is None:
        return
    param = f"messages.{i}.content.{j}.{key}"
    reason, text = why
    shown = value if len(value) <= _QUOTED else (
        f"{value[:_QUOTED]}... ({len(value)} characters)")
    if policy.mode == "data-only":
        allowed = "only data: URIs sent inline"
        setting = ("EXPERTGATE_MEDIA_URLS=public allows http(s) URLs of public hosts, =any "
                   "every URL")
    else:
        allowed = "data: URIs and http(s) URLs of public hosts" + (
            " in EXPERTGATE_MEDIA_ALLOWED_DOMAINS" if policy.listed else "")
        setting = ("EXPERTGATE_MEDIA_ALLOWED_DOMAINS lists the hosts allowed"
                   if reason == "not-listed" else
                   "EXPERTGATE_MEDIA_URLS=any lets every URL through, for trusted clients")
    raise MediaRefused(
        f"{param}: media URL {shown!r} {text}. This gateway "
        f"(EXPERTGATE_MEDIA_URLS={policy.mode}) lets an expert fetch {allowed}: send the "
        f"media inline as a data: URI, or ask its operator ({setting})",
        param=param, reason=reason)


def classify(url: str, policy: MediaPolicy) -> tuple[str, str] | None:
    """Why ``policy`` refuses ``url`` (a short reason, then words that finish "media URL
    ... "), or None when it allows it. Reads the URL as the parsers that fetch it do
    (WHATWG's, Python's urlsplit, inet_aton): a URL that two of them read differently is
    refused rather than guessed."""
    if policy.mode == "any":
        return None
    if _plain(url, policy):
        return None  # what the reading below allows too, at a fraction of its cost
    # the scheme from the URL's head: a data: URI can be megabytes, read no further
    head = url[:64].lstrip(_C0_SPACE)
    if "\t" in head or "\n" in head or "\r" in head:
        head = head.translate(_TAB_NL)
    m = _SCHEME.match(head)
    if m is None:
        return "scheme", "has no scheme (an http(s) URL or a data: URI is expected)"
    scheme = m.group(1).lower()
    if scheme == "data":
        return None
    s = url.strip(_C0_SPACE)
    if "\t" in s or "\n" in s or "\r" in s:
        s = s.translate(_TAB_NL)
    m = _SCHEME.match(s)  # the head's scheme again
    if m is None:
        return "scheme", "has no scheme (an http(s) URL or a data: URI is expected)"
    if policy.mode == "data-only":
        return "not-data", "is not a data: URI"
    if scheme not in ("http", "https"):
        return "scheme", f"uses the scheme {scheme[:16]!r} (only http, https and data are " \
                         "allowed)"
    rest = s[m.end():]
    if not rest.startswith("//") or rest[2:3] in ("/", "\\"):
        # WHATWG reads http:host, http:/host, http:\\host and http:///host as the host;
        # Python reads no host at all
        return "malformed", "does not start with scheme://host"
    end = len(rest)
    for sep in "/?#":
        k = rest.find(sep, 2)
        if k != -1 and k < end:
            end = k
    authority = rest[2:end]
    if "\\" in authority:
        # WHATWG ends the host at a backslash, Python does not: two hosts for one URL
        return "malformed", "has a backslash in its host part (parsers disagree on the host)"
    if "@" in authority:
        return "userinfo", "carries a user@ part (parsers disagree on which host it names)"
    if authority.startswith("["):
        close = authority.find("]")
        if close == -1 or not _port_ok(authority[close + 1:]):
            return "malformed", "has a malformed IPv6 host or port"
        literal = authority[1:close].split("%", 1)[0]  # a zone id names an interface
        try:
            ip6 = ipaddress.IPv6Address(literal)
        except ValueError:
            return "malformed", "has a malformed IPv6 host"
        return _ip_refusal(ip6, policy)
    host, colon, port = authority.partition(":")
    if colon and not _port_ok(":" + port):
        return "malformed", "has a malformed port"
    if not host:
        return "malformed", "has no host"
    bad = _BAD_HOST.search(host)
    if bad is not None:
        return "malformed", ("has a percent-encoded host (parsers disagree on the host)"
                             if bad.group() == "%" else
                             "has a space or a control character in its host")
    names = [host.lower()]
    if not host.isascii():
        # what a fetcher sends its resolver: IDNA's mapping turns full-width digits and dots
        # into ASCII ones (１２７。０。０。１ is 127.0.0.1) and drops soft hyphens
        try:
            names = [host.encode("idna").decode("ascii").lower()]
        except UnicodeError:
            return "malformed", "has a host that is not a valid internationalised name"
        folded = unicodedata.normalize("NFKC", host).lower().translate(_IDNA_DOTS)
        if folded.isascii():
            names.append(folded)
    for name in names:
        why = _host_refusal(name.rstrip("."), policy)
        if why is not None:
            return why
    return None


_IDNA_DOTS = str.maketrans({"\u3002": ".", "\uff0e": ".", "\uff61": "."})


def _port_ok(text: str) -> bool:
    """``text`` after the host: nothing, or ``:`` and a port (empty: the default)."""
    if not text:
        return True
    digits = text[1:]
    return text[0] == ":" and (not digits or (digits.isascii() and digits.isdigit()
                                              and len(digits) <= 5 and int(digits) <= 65535))


def _host_refusal(host: str, policy: MediaPolicy) -> tuple[str, str] | None:
    if not host:
        return "malformed", "has no host"
    labels = host.split(".")
    if _NUMERIC.fullmatch(labels[-1]):
        # a host ending in a number is an IPv4 address to WHATWG and to inet_aton (glibc's
        # resolver takes 127.1, 0x7f.1, 0177.0.0.1 and 2130706433 as 127.0.0.1)
        ip4 = _ipv4(labels)
        if ip4 is None:
            return "malformed", "has a host that is neither a name nor an IPv4 address"
        return _ip_refusal(ip4, policy)
    if not _NAME.fullmatch(host):
        return "malformed", "has a host that is not a valid DNS name"
    if host in _INTERNAL_NAMES or host.endswith(_INTERNAL_SUFFIXES):
        return "internal-name", f"names the internal host {host[:64]!r}"
    if len(labels) == 1:
        return "internal-name", (f"names the host {host[:64]!r}, which has no dot: a resolver's "
                                 "search domains make it an internal host")
    if policy.listed and not policy.lists(host):
        return "not-listed", f"names the host {host[:64]!r}, which is not in the allowed list"
    return None


def _ipv4(labels: list[str]) -> ipaddress.IPv4Address | None:
    """The address of an IPv4 host written as inet_aton and WHATWG read it: one to four
    parts, each decimal, octal (a leading 0) or hex (0x), the last filling the bytes left."""
    if len(labels) > 4:
        return None
    nums = []
    for p in labels:
        n = _ipv4_part(p)
        if n is None:
            return None
        nums.append(n)
    if any(n > 255 for n in nums[:-1]) or nums[-1] >= 256 ** (5 - len(nums)):
        return None
    value = nums[-1]
    for k, n in enumerate(nums[:-1]):
        value += n << (8 * (3 - k))
    return ipaddress.IPv4Address(value)


def _ipv4_part(p: str) -> int | None:
    if not p or len(p) > 40 or not p.isascii():
        return None
    try:
        if p.startswith("0x"):
            return int(p[2:], 16) if len(p) > 2 else 0
        if len(p) > 1 and p[0] == "0":
            return int(p, 8)
        return int(p) if p.isdigit() else None
    except ValueError:  # 08, 0xg: not a number to either parser
        return None


def _ip_refusal(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, policy: MediaPolicy
                ) -> tuple[str, str] | None:
    if isinstance(ip, ipaddress.IPv6Address) and not (ip.is_loopback or ip.is_unspecified):
        # the IPv4 address it carries first: ::ffff:127.0.0.1 is a loopback address, which
        # is what the client meant (ipaddress calls it private)
        for inner in _embedded_ipv4(ip):
            kind = _non_public(inner)
            if kind is not None:
                return kind, f"names {ip}, which carries the {kind} address {inner}"
    kind = _non_public(ip)
    if kind is not None:
        return kind, f"names {'an' if kind[0] in 'aeiou' else 'a'} {kind} address ({ip})"
    if policy.listed and not policy.lists(str(ip)):
        return "not-listed", f"names the address {ip}, which is not in the allowed list"
    return None


def _non_public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Which kind of non-public address ``ip`` is, or None for a public one."""
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if any(ip in net for net in _PRIVATE[ip.version]):
        return "private"
    if ip.is_reserved or ip.is_private or not ip.is_global:
        return "reserved"  # documentation, benchmarking, protocol assignments, class E
    return None


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 one carries (mapped, 6to4, Teredo's client, NAT64,
    IPv4-compatible), which a dual-stack host or a gateway reaches instead."""
    out = [a for a in (ip.ipv4_mapped, ip.sixtofour) if a is not None]
    if ip.teredo is not None:
        out += list(ip.teredo)
    if ip in _NAT64 or int(ip) >> 32 == 0:
        out.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return out
