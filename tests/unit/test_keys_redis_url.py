"""``expertgate keys add|revoke`` take the Redis URL from EXPERTGATE_REDIS_URL, as ``serve``
and ``logs export`` do: ``--redis-url`` was required, so a URL with a password went on the
command line, which ps shows to every user of the machine."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest

from expertgate.cli import main as cli


class _Redis:
    urls: ClassVar[list[str]] = []
    options: ClassVar[list[dict[str, Any]]] = []

    @classmethod
    def from_url(cls, url: str, **kw: Any) -> _Redis:
        cls.urls.append(url)
        cls.options.append(kw)
        return cls()

    def pipeline(self) -> _Redis:
        return self

    def delete(self, *keys: Any) -> int:
        return 1

    def hset(self, *a: Any, **kw: Any) -> int:
        return 1

    def hget(self, *a: Any) -> None:  # keys add asks whose the key is first: nobody's
        return None

    def execute(self) -> list[Any]:
        return []

    def close(self) -> None:
        pass


@pytest.fixture
def fake_redis(monkeypatch: pytest.MonkeyPatch) -> type[_Redis]:
    import redis

    _Redis.urls = []
    _Redis.options = []
    monkeypatch.setattr(redis, "Redis", _Redis)
    return _Redis


@pytest.mark.parametrize("command", [["add", "--name", "t"], ["revoke"]])
def test_keys_take_the_redis_url_from_the_environment(
        command: list[str], fake_redis: type[_Redis], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXPERTGATE_REDIS_URL", "redis://:secret@127.0.0.1:6390/0")
    assert cli(["keys", *command, "--key", "sk-1"]) == 0
    assert fake_redis.urls == ["redis://:secret@127.0.0.1:6390/0"]
    assert cli(["keys", *command, "--key", "sk-1", "--redis-url", "redis://other:1/0"]) == 0
    assert fake_redis.urls[-1] == "redis://other:1/0"  # the option still wins
    # bounded: a Redis that drops packets is an error in seconds, not after ~2 minutes
    assert all(o["socket_connect_timeout"] <= 10 and o["socket_timeout"] <= 30
               for o in fake_redis.options)


@pytest.mark.parametrize("command", [["add", "--name", "t"], ["revoke"]])
def test_keys_without_any_redis_url_say_where_to_give_one(
        command: list[str], fake_redis: type[_Redis], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("EXPERTGATE_REDIS_URL", raising=False)
    assert cli(["keys", *command, "--key", "sk-1"]) == 2
    err = capsys.readouterr().err
    assert "--redis-url" in err and "EXPERTGATE_REDIS_URL" in err
    assert fake_redis.urls == []
