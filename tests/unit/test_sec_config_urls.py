"""Expert URLs that no call can honour are refused at load, without repeating what they
carry. A line break in an api_base went into the request line the gateway sent upstream (a
header of the operator's text there) and a space broke it (the upstream's HTML error page
came back as the client's 400); a query (``?api-key=...``, as Azure-style URLs carry) was
silently dropped from every call (the upstream was called without it) while /admin/state
showed it in clear."""

from __future__ import annotations

import pytest

from gateway.config import ConfigError, parse_config


def _refusal(url: str, field: str = "api_base") -> str:
    expert = {"name": "a", "api_base": url} if field == "api_base" else \
        {"name": "a", "replicas": ["http://127.0.0.1:18801/v1", url]}
    with pytest.raises(ConfigError) as e:
        parse_config({"experts": [expert]}, "gw.yaml")
    return str(e.value)


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:18801/v1\r\nX-Injected: yes",
    "http://127.0.0.1:18801/v1\nX-Injected: yes",
    "http://127.0.0.1:18801/v1 x",
    "http://127.0.0.1:18801/v1\t",
    "http://127.0.0.1:18801/v1\x00",
])
def test_whitespace_or_control_characters_in_an_expert_url_are_refused(url: str) -> None:
    msg = _refusal(url)
    assert "experts[0](a)" in msg and "api_base: invalid URL: it holds whitespace or a " \
        "control character" in msg
    assert "Injected" not in msg


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:18801/v1?api-key=SECRETQ",
    "https://svc:pw@example.test/v1?api-version=2024-10-21&key=SECRETQ",
    "http://127.0.0.1:18801/v1#SECRETQ",
])
def test_a_query_or_fragment_in_an_expert_url_is_refused_without_echoing_it(url: str
                                                                            ) -> None:
    msg = _refusal(url)
    assert "experts[0](a)" in msg and "api_base: invalid URL:" in msg
    assert "followed by a query (?...) or fragment (#...)" in msg
    assert "api_key_env" in msg
    assert "SECRETQ" not in msg and ":pw@" not in msg


def test_a_replica_with_a_query_is_named() -> None:
    msg = _refusal("http://127.0.0.1:18802/v1?k=SECRETQ", field="replicas")
    assert "replicas[1]" in msg and "SECRETQ" not in msg


def test_plain_urls_still_load() -> None:
    cfg = parse_config({"experts": [{"name": "a", "api_base": "https://h.example/openai/v1/"},
                                    {"name": "b", "api_base": "http://u:p%20w@10.0.0.1:8000"}]},
                       "gw.yaml")
    assert [e.bases for e in cfg.experts] == [["https://h.example/openai/v1"],
                                              ["http://10.0.0.1:8000"]]
