"""A chat message's media URL is one the gateway lets an expert fetch (``media_urls``).

vLLM's media connector fetches any http(s) URL a message part names, redirects followed,
with no address denylist: any client of the gateway could make the GPU box read cloud
metadata (``http://169.254.169.254/``) or an internal service. The gateway refuses such a
URL with a 400 naming the part before the request goes anywhere; every spelling of an
internal address that a resolver or a URL parser takes is refused, not only the plain one.

``.venv/bin/python -m tests.unit.test_s21_media_urls`` prints the check's cost on typical
bodies.
"""

from __future__ import annotations

import time
import timeit
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.config import Settings
from gateway.request.media import (
    MAX_FULL_READS,
    MediaPolicy,
    MediaRefused,
    check_messages,
    classify,
    media_policy,
)
from tests.unit.gateway_helpers import base_config, gateway_client, raw_doubles

PUBLIC = MediaPolicy()

#: (URL, the reason ``public`` refuses it): every spelling of an inward address
REFUSED = [
    # the plain ones
    ("http://169.254.169.254/latest/meta-data/", "link-local"),
    ("http://127.0.0.1:8000/v1/models", "loopback"),
    ("http://10.0.0.5/", "private"),
    ("http://172.16.0.1/", "private"),
    ("http://192.168.1.1/", "private"),
    ("http://100.64.0.1/", "private"),  # carrier-grade NAT, shared address space
    ("http://0.0.0.0:8000/", "unspecified"),
    ("http://224.0.0.1/", "multicast"),
    ("http://240.0.0.1/", "reserved"),
    ("http://255.255.255.255/", "reserved"),
    ("http://198.18.0.1/", "reserved"),  # benchmarking: not global
    # the IPv4 spellings inet_aton and WHATWG's parser take
    ("http://2130706433/", "loopback"),  # decimal
    ("http://0x7f000001/", "loopback"),  # one hex number
    ("http://0x7f.0.0.1/", "loopback"),
    ("http://0X7F.0.0.1/", "loopback"),
    ("http://0177.0.0.1/", "loopback"),  # octal
    ("http://017700000001/", "loopback"),
    ("http://127.1/", "loopback"),  # short: the last part fills the bytes left
    ("http://127.0.1/", "loopback"),
    ("http://10.1/", "private"),
    ("http://169.254.43518/", "link-local"),  # 169.254.169.254 as a.b.c16
    ("http://0/", "unspecified"),
    ("http://0x/", "unspecified"),  # WHATWG: an empty hex number is 0
    ("http://127.0.0.1./", "loopback"),  # a trailing dot
    ("http://0x7f.1/", "loopback"),
    # IPv6, and IPv4 inside IPv6
    ("http://[::1]/", "loopback"),
    ("http://[::]/", "unspecified"),
    ("http://[0:0:0:0:0:0:0:1]:8080/", "loopback"),
    ("http://[fe80::1]/", "link-local"),
    ("http://[fe80::1%25eth0]/", "link-local"),  # a zone id
    ("http://[fc00::1]/", "private"),
    ("http://[fd12:3456::1]/", "private"),
    ("http://[fec0::1]/", "private"),  # site-local (deprecated, still routed inward)
    ("http://[ff02::1]/", "multicast"),
    ("http://[::ffff:127.0.0.1]/", "loopback"),  # IPv4-mapped
    ("http://[::ffff:7f00:1]/", "loopback"),
    ("http://[::ffff:169.254.169.254]/", "link-local"),
    ("http://[::127.0.0.1]/", "loopback"),  # IPv4-compatible
    ("http://[2002:a9fe:a9fe::]/", "link-local"),  # 6to4 of 169.254.169.254
    ("http://[64:ff9b::a9fe:a9fe]/", "link-local"),  # NAT64 of 169.254.169.254
    ("http://[2001:db8::1]/", "reserved"),  # documentation
    # names
    ("http://localhost/", "internal-name"),
    ("http://LOCALHOST:8000/", "internal-name"),
    ("http://localhost./", "internal-name"),
    ("http://api.localhost/", "internal-name"),
    ("http://printer.local/", "internal-name"),
    ("http://metadata.google.internal/computeMetadata/v1/", "internal-name"),
    ("http://redis.svc/", "internal-name"),
    ("http://metadata/computeMetadata/v1/", "internal-name"),  # the search domain's
    ("http://１２７.０.０.１/", "loopback"),  # full-width: IDNA maps it to ASCII
    ("http://127\u30020\u30020\u30021/", "loopback"),  # ideographic full stops
    ("http://local\u00adhost/", "internal-name"),  # a soft hyphen IDNA drops
    # schemes
    ("file:///etc/passwd", "scheme"),
    ("ftp://example.com/a.png", "scheme"),
    ("gopher://127.0.0.1:6379/_INFO", "scheme"),
    ("dict://127.0.0.1:11211/", "scheme"),
    ("jar:http://example.com/a.jar!/", "scheme"),
    ("127.0.0.1/a.png", "scheme"),  # no scheme
    ("//127.0.0.1/a.png", "scheme"),  # scheme-relative
    ("", "scheme"),
    # upper case and padding are read as the fetchers read them
    ("HTTP://127.0.0.1/", "loopback"),
    ("HtTpS://169.254.169.254/", "link-local"),
    ("  http://127.0.0.1/  ", "loopback"),
    ("\t\x00http://127.0.0.1/\n", "loopback"),
    ("http://12\n7.0.0.1/", "loopback"),  # a line break inside: both parsers remove it
    # what parsers read differently
    ("http://example.com@127.0.0.1/", "userinfo"),
    ("http://user:pass@example.com/", "userinfo"),
    ("http://127.0.0.1:80@example.com/", "userinfo"),
    ("http://127.0.0.1#@example.com", "loopback"),  # the fragment ends the host
    ("http://127.0.0.1?@example.com", "loopback"),
    ("http://127.0.0.1/@example.com", "loopback"),
    ("http://example.com\\@127.0.0.1/", "malformed"),  # Python's host: 127.0.0.1
    ("http://127.0.0.1\\@example.com/", "malformed"),  # WHATWG's host: 127.0.0.1
    ("http:\\\\127.0.0.1/", "malformed"),
    ("http:/127.0.0.1/", "malformed"),
    ("http:127.0.0.1/", "malformed"),
    ("http:///127.0.0.1/", "malformed"),  # WHATWG skips the third slash
    ("http://%31%32%37.0.0.1/", "malformed"),  # WHATWG decodes the host
    ("http://127.0.0.1 .example.com/", "malformed"),  # inet_aton stops at the space
    ("http://exa mple.com/", "malformed"),
    ("http://1.2.3.4.5/", "malformed"),  # ends in a number: an IPv4 address, or nothing
    ("http://08.0.0.1/", "malformed"),  # 8 is no octal digit
    ("http://256.0.0.1/", "malformed"),
    ("http://example.0x10/", "malformed"),
    ("http://a..b.example.com/", "malformed"),
    ("http://example.com:99999/", "malformed"),
    ("http://example.com:80a/", "malformed"),
    ("http://[::1/", "malformed"),
    ("http://[::1]x/", "malformed"),
    ("http://[not:an:address]/", "malformed"),
    ("http:///", "malformed"),
    ("http://:80/", "malformed"),
]

ALLOWED = [
    "https://upload.wikimedia.org/wikipedia/commons/a/a7/Camponotus_flavomarginatus_ant.jpg",
    "http://example.com/a.png",
    "https://EXAMPLE.com/A.PNG",
    "https://example.com./a.png",
    "https://cdn.example.com:8443/a.png?sig=abc&x=1#frag",
    "https://example.com/@user/a.png",  # an @ in the path is no user part
    "http://8.8.8.8/a.png",
    "http://1.1.1.1:8080/a.png",
    "http://[2606:4700:4700::1111]/a.png",
    "http://bücher.example/a.png",  # an internationalised name
    "http://xn--bcher-kva.example/a.png",
    "  https://example.com/a.png  ",
    "data:image/png;base64,iVBORw0KGgo=",
    "DATA:image/png;base64,iVBORw0KGgo=",
    "data:audio/wav;base64," + "A" * 10_000,
]


def _reason(url: str, policy: MediaPolicy) -> str | None:
    why = classify(url, policy)
    return why[0] if why is not None else None


@pytest.mark.parametrize(("url", "reason"), REFUSED)
def test_public_refuses_every_spelling_of_an_inward_address(url: str, reason: str) -> None:
    assert _reason(url, PUBLIC) == reason, (url, classify(url, PUBLIC))


@pytest.mark.parametrize("url", ALLOWED)
def test_public_allows_data_uris_and_public_hosts(url: str) -> None:
    assert classify(url, PUBLIC) is None


def test_data_only_allows_only_data_uris() -> None:
    p = MediaPolicy("data-only")
    assert classify("data:image/png;base64,AAAA", p) is None
    assert classify("https://example.com/a.png", p) == ("not-data", "is not a data: URI")
    assert _reason("http://169.254.169.254/", p) == "not-data"


def test_any_checks_nothing() -> None:
    p = MediaPolicy("any")
    for url, _ in REFUSED:
        assert classify(url, p) is None
    messages = [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://169.254.169.254/"}}]}]
    check_messages(messages, "any")  # no refusal


def test_the_allowed_domains_narrow_public_and_never_open_what_it_refuses() -> None:
    p = media_policy("public", "images.example.com, *.cdn.example.org")
    assert classify("https://images.example.com/a.png", p) is None
    assert classify("https://eu.cdn.example.org/a.png", p) is None
    assert classify("https://a.b.cdn.example.org/a.png", p) is None
    # *.suffix is the names below it, not the suffix itself (list both for both)
    assert _reason("https://cdn.example.org/a.png", p) == "not-listed"
    assert _reason("https://example.com/a.png", p) == "not-listed"
    assert _reason("https://evilcdn.example.org/a.png", p) == "not-listed"
    assert _reason("https://images.example.com.evil.net/a.png", p) == "not-listed"
    assert _reason("http://8.8.8.8/a.png", p) == "not-listed"
    assert classify("data:image/png;base64,AAAA", p) is None
    internal = media_policy("public", "*.internal")
    assert _reason("http://metadata.google.internal/", internal) == "internal-name"
    assert media_policy("public", "8.8.8.8").lists("8.8.8.8")


def test_the_settings_read_the_mode_and_the_domains_from_the_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().media_urls == "public"
    monkeypatch.setenv("EXPERTGATE_MEDIA_URLS", "data-only")
    monkeypatch.setenv("EXPERTGATE_MEDIA_ALLOWED_DOMAINS",
                       " Images.Example.com, *.CDN.example.org. ")
    s = Settings()
    assert s.media_urls == "data-only"
    assert s.media_allowed_domains == "images.example.com,*.cdn.example.org"
    monkeypatch.setenv("EXPERTGATE_MEDIA_URLS", "none")
    with pytest.raises(ValueError, match="media_urls"):
        Settings()
    monkeypatch.setenv("EXPERTGATE_MEDIA_URLS", "any")
    monkeypatch.setenv("EXPERTGATE_MEDIA_ALLOWED_DOMAINS", "https://images.example.com/")
    with pytest.raises(ValueError, match="not a host name"):
        Settings()


def _refusal(messages: list[Any], mode: str = "public", domains: str = "") -> MediaRefused:
    with pytest.raises(MediaRefused) as e:
        check_messages(messages, mode, domains)
    return e.value


def _user(*parts: Any) -> dict[str, Any]:
    return {"role": "user", "content": list(parts)}


META = "http://169.254.169.254/latest/meta-data/"


@pytest.mark.parametrize(("part", "param"), [
    ({"type": "image_url", "image_url": {"url": META}}, "image_url.url"),
    ({"type": "image_url", "image_url": META}, "image_url"),  # the string form
    ({"image_url": META}, "image_url"),  # vLLM's part without a type
    ({"type": "text", "text": "x", "uuid": "u", "image_url": META}, "image_url"),
    ({"type": "input_image", "image_url": META}, "image_url"),  # the Responses API's
    ({"type": "video_url", "video_url": {"url": META}}, "video_url.url"),
    ({"video_url": META}, "video_url"),
    ({"type": "audio_url", "audio_url": {"url": META}}, "audio_url.url"),
    ({"audio_url": META}, "audio_url"),
    ({"type": "file", "file": {"file_data": META}}, "file.file_data"),
    ({"type": "file", "file": {"file_id": META}}, "file.file_id"),
    ({"type": "file", "file": {"file_url": META}}, "file.file_url"),
    ({"type": "input_file", "file_url": META}, "file_url"),
    ({"type": "input_file", "file_data": META}, "file_data"),
])
def test_every_part_that_names_a_url_is_checked(part: dict[str, Any], param: str) -> None:
    messages = [{"role": "system", "content": "be brief"},
                _user({"type": "text", "text": "what is this?"}, part)]
    e = _refusal(messages)
    assert e.param == f"messages.1.content.1.{param}"
    assert e.status == 400 and e.type == "invalid_request_error"
    assert e.code == "media_url_not_allowed" and e.reason == "link-local"


def test_parts_without_urls_and_every_role_are_walked() -> None:
    ok = [{"type": "text", "text": "hi"},
          {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
          {"type": "file", "file": {"file_data": "JVBERi0xLjQK", "filename": "a.pdf"}},
          {"type": "file", "file": {"file_id": "file-abc123"}},
          {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA",
                                              "detail": "low"}},
          {"type": "image_url", "image_url": None, "uuid": "cached"},  # vLLM: by uuid
          "a bare string part"]
    check_messages([_user(*ok), {"role": "assistant", "content": "ok"},
                    {"role": "tool", "content": None, "tool_call_id": "x"}, "not a dict"],
                   "public")
    # an assistant's or a tool's content parts are walked too
    e = _refusal([_user(*ok), {"role": "tool", "tool_call_id": "t", "content": [
        {"type": "image_url", "image_url": {"url": "http://localhost/x.png"}}]}])
    assert e.param == "messages.1.content.0.image_url.url" and e.reason == "internal-name"


def test_a_url_that_is_not_a_string_is_refused() -> None:
    e = _refusal([_user({"type": "image_url", "image_url": {"url": ["http://x.example/"]}})])
    assert e.param == "messages.0.content.0.image_url.url" and e.reason == "malformed"
    assert "must be a string" in e.message


def test_the_message_says_why_and_which_setting_allows_it_without_echoing_a_huge_url(
        ) -> None:
    e = _refusal([_user({"type": "image_url", "image_url": {"url": META}})])
    assert "link-local address (169.254.169.254)" in e.message
    assert "EXPERTGATE_MEDIA_URLS=public" in e.message and "data: URI" in e.message
    assert "EXPERTGATE_MEDIA_URLS=any" in e.message
    huge = "http://127.0.0.1/" + "a" * 500_000
    e = _refusal([_user({"type": "image_url", "image_url": {"url": huge}})])
    assert len(e.message) < 1000 and "(500017 characters)" in e.message
    e = _refusal([_user({"image_url": "https://other.example.com/a.png"})], "public",
                 "images.example.com")
    assert e.reason == "not-listed" and "EXPERTGATE_MEDIA_ALLOWED_DOMAINS" in e.message


def test_at_most_max_full_reads_urls_need_the_full_reading() -> None:
    """A URL that is not plain (an IP literal, an internationalised name, padding) costs
    about 20 times a plain one: a megabyte of public IP-literal URLs held the event loop
    0.7 s. The 101st such URL of a request is refused, saying why; plain URLs and data:
    URIs do not count."""
    plain = [{"type": "image_url", "image_url": {"url": f"https://h{k}.example.com/a.png"}}
             for k in range(300)]
    literal = [{"image_url": f"http://8.8.{k // 250}.{k % 250}/a.png"}
               for k in range(MAX_FULL_READS)]
    data = [{"image_url": "data:,x"}] * 300
    check_messages([_user(*plain, *literal, *data)], "public")
    e = _refusal([_user(*plain, *literal, {"image_url": "http://[2606:4700::1111]/"})])
    assert e.reason == "too-many" and e.param == f"messages.0.content.{300 + MAX_FULL_READS}" \
        ".image_url"
    assert f"more than {MAX_FULL_READS} media URLs" in e.message
    # the first refusal of a URL still names that URL, whatever its place
    e = _refusal([_user(*literal[:5], {"image_url": META}, *literal)])
    assert e.reason == "link-local" and e.param == "messages.0.content.5.image_url"


@pytest.mark.parametrize("part", [
    lambda k: {"type": "image_url", "image_url": {"url": f"https://h{k}.example.com/a.png"}},
    lambda k: {"image_url": f"http://8.8.{k // 250 % 250}.{k % 250}/"},
    lambda k: {"image_url": f"http://bücher{k}.example/"},
    lambda k: {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
    lambda k: {"type": "text", "text": "x"},
], ids=["plain", "ipv4-literal", "idn", "data", "text"])
def test_a_megabyte_of_parts_is_checked_in_bounded_time(part: Any) -> None:
    """The check of a body at the default size limit holds the event loop no longer than
    the body's own validation (tens of milliseconds), whatever its parts."""
    parts, size = [], 0
    while size < 1_048_576:
        parts.append(part(len(parts)))
        size += len(orjson.dumps(parts[-1])) + 1
    messages = [_user(*parts)]
    took = []
    for _ in range(3):  # the fastest of three: another process's burst is not the code's
        t0 = time.perf_counter()
        try:
            check_messages(messages, "public")
        except MediaRefused as e:
            assert e.reason == "too-many"
        took.append(time.perf_counter() - t0)
    assert min(took) < 0.25, (len(parts), min(took))


# --------------------------------------------------------------- through the HTTP front


@pytest.fixture
async def raw_ups() -> Any:
    async for pair in raw_doubles():
        yield pair


_HEADERS = {"content-type": "application/json"}


def _body(model: str, url: str, **kw: Any) -> bytes:
    return orjson.dumps({"model": model, "messages": [_user(
        {"type": "text", "text": "describe this picture"},
        {"type": "image_url", "image_url": {"url": url}})], **kw})


def _error(r: Any) -> dict[str, Any]:
    obj = r.json()
    assert set(obj) == {"error"} and set(obj["error"]) == {"message", "type", "param", "code"}
    assert "Traceback" not in r.text
    return obj["error"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("model", ["chatter", "auto"])  # an expert by name, a policy
@pytest.mark.parametrize("stream", [False, True])
async def test_a_refused_url_never_reaches_the_upstream(raw_ups: Any, tmp_path: Path,
                                                        model: str, stream: bool) -> None:
    coder, chatter = raw_ups
    async with gateway_client(base_config(coder.base, chatter.base), tmp_path) as (c, gw):
        r = await c.post("/v1/chat/completions", content=_body(model, META, stream=stream),
                         headers=_HEADERS)
        assert r.status_code == 400, r.text
        err = _error(r)
        assert err["type"] == "invalid_request_error"
        assert err["code"] == "media_url_not_allowed"
        assert err["param"] == "messages.0.content.1.image_url.url"
        assert "169.254.169.254" in err["message"]
        metrics = gw.metrics.render().decode()
    assert coder.bodies == [] and chatter.bodies == []
    assert 'expertgate_media_urls_refused_total{reason="link-local"} 1.0' in metrics
    assert 'endpoint="chat"' in metrics and 'status="400"' in metrics
    records = [orjson.loads(line) for line in (tmp_path / "log.jsonl").read_bytes().split(
        b"\n") if line]
    assert [(r["http_status"], r["error_type"], r["expert"]) for r in records] == [
        (400, "media_url_not_allowed", None)]


async def test_an_allowed_url_is_forwarded_byte_for_byte(raw_ups: Any, tmp_path: Path
                                                         ) -> None:
    coder, chatter = raw_ups
    async with gateway_client(base_config(coder.base, chatter.base), tmp_path) as (c, gw):
        for url in ("https://example.com/cat.png", "data:image/png;base64,iVBORw0KGgo="):
            raw = _body("chatter", url, max_tokens=5)
            r = await c.post("/v1/chat/completions", content=raw, headers=_HEADERS)
            assert r.status_code == 200, r.text
            assert chatter.bodies[-1] == raw
        metrics = gw.metrics.render().decode()
    assert len(chatter.bodies) == 2 and coder.bodies == []
    assert "expertgate_media_urls_refused_total{" not in metrics


async def test_the_dry_run_refuses_what_the_live_request_would(ups: Any, tmp_path: Path
                                                                ) -> None:
    async with gateway_client(base_config(ups[0].base, ups[1].base), tmp_path) as (c, _):
        r = await c.post("/v1/route", content=_body("auto", "http://[::1]:8000/"),
                         headers=_HEADERS)
        assert r.status_code == 400, r.text
        err = _error(r)
        assert err["code"] == "media_url_not_allowed" and "loopback" in err["message"]
        r = await c.post("/v1/route", content=_body("auto", "https://example.com/a.png"),
                         headers=_HEADERS)
        assert r.status_code == 200, r.text


async def test_chat_style_embeddings_messages_are_checked(raw_ups: Any, tmp_path: Path
                                                          ) -> None:
    """vLLM's embeddings endpoint takes chat ``messages`` (with media parts) too."""
    coder, chatter = raw_ups
    cfg = base_config(coder.base, chatter.base)
    cfg["experts"][1]["embeddings"] = True
    raw = orjson.dumps({"model": "chatter", "input": "x", "messages": [
        _user({"type": "image_url", "image_url": {"url": "http://0x7f.1:6379/"}})]})
    async with gateway_client(cfg, tmp_path) as (c, _):
        r = await c.post("/v1/embeddings", content=raw, headers=_HEADERS)
        assert r.status_code == 400, r.text
        assert _error(r)["param"] == "messages.0.content.0.image_url.url"
    assert chatter.bodies == []


async def test_the_modes_through_the_front(raw_ups: Any, tmp_path: Path) -> None:
    coder, chatter = raw_ups
    cfg = base_config(coder.base, chatter.base)
    async with gateway_client(cfg, tmp_path, media_urls="data-only") as (c, _):
        r = await c.post("/v1/chat/completions",
                         content=_body("chatter", "https://example.com/a.png"),
                         headers=_HEADERS)
        assert r.status_code == 400 and "EXPERTGATE_MEDIA_URLS=data-only" in r.text
        raw = _body("chatter", "data:image/png;base64,AAAA")
        r = await c.post("/v1/chat/completions", content=raw, headers=_HEADERS)
        assert r.status_code == 200 and chatter.bodies == [raw]
    async with gateway_client(cfg, tmp_path, media_urls="any") as (c, _):
        raw = _body("chatter", META)  # the operator trusts its clients
        r = await c.post("/v1/chat/completions", content=raw, headers=_HEADERS)
        assert r.status_code == 200 and chatter.bodies[-1] == raw
    async with gateway_client(cfg, tmp_path,
                              media_allowed_domains="images.example.com") as (c, _):
        r = await c.post("/v1/chat/completions",
                         content=_body("chatter", "https://example.com/a.png"),
                         headers=_HEADERS)
        assert r.status_code == 400 and "EXPERTGATE_MEDIA_ALLOWED_DOMAINS" in r.text
        raw = _body("chatter", "https://images.example.com/a.png")
        r = await c.post("/v1/chat/completions", content=raw, headers=_HEADERS)
        assert r.status_code == 200 and chatter.bodies[-1] == raw
    assert coder.bodies == [] and len(chatter.bodies) == 3


async def test_a_refusal_charges_no_tokens(raw_ups: Any, tmp_path: Path) -> None:
    """Refused before the key's token budget is charged: a client probing URLs spends
    none of it."""
    import hashlib

    coder, chatter = raw_ups
    cfg = base_config(coder.base, chatter.base)
    cfg["api_keys"] = [{"name": "t", "sha256": hashlib.sha256(b"sk-t").hexdigest(),
                        "tokens_per_minute": 400}]
    headers = {**_HEADERS, "authorization": "Bearer sk-t"}
    async with gateway_client(cfg, tmp_path) as (c, _):
        for _ in range(5):
            r = await c.post("/v1/chat/completions",
                             content=_body("chatter", META, max_tokens=300), headers=headers)
            assert r.status_code == 400, r.text
        r = await c.post("/v1/chat/completions",
                         content=_body("chatter", "https://example.com/a.png", max_tokens=300),
                         headers=headers)
        assert r.status_code == 200, r.text
    assert coder.bodies == [] and len(chatter.bodies) == 1


def _cost() -> None:
    """The check's cost per request on typical bodies (printed, not asserted)."""
    bodies = {
        "text only, 3 messages": [{"role": "system", "content": "be brief"},
                                  {"role": "user", "content": "what is the capital of France?"},
                                  {"role": "assistant", "content": "Paris."}],
        "text parts, 2 messages": [_user({"type": "text", "text": "hi"},
                                         {"type": "text", "text": "there"}),
                                   {"role": "assistant", "content": "hello"}],
        "one image URL": [_user({"type": "text", "text": "what is this?"},
                                {"type": "image_url",
                                 "image_url": {"url": "https://example.com/cat.png"}})],
        "one data: image": [_user({"type": "text", "text": "what is this?"},
                                  {"type": "image_url",
                                   "image_url": {"url": "data:image/png;base64," + "A" * 4096}})],
    }
    for name, messages in bodies.items():
        n = 100_000
        t = min(timeit.repeat(lambda m=messages: check_messages(m, "public"), number=n,
                             repeat=5))
        print(f"{name:28s} {t / n * 1e9:8.0f} ns per request")


if __name__ == "__main__":
    _cost()
