"""``expertgate keys`` options that make sense only for some of its commands."""

from __future__ import annotations

import pytest

from expertgate.cli import main as cli


def test_keys_revoke_has_no_generate(capsys: pytest.CaptureFixture[str]) -> None:
    # `keys revoke --generate` made a new random key, printed it as "shown once", and revoked
    # that (no such key): nothing anyone meant
    with pytest.raises(SystemExit) as e:
        cli(["keys", "revoke", "--generate", "--redis-url", "redis://127.0.0.1:9/0"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--generate" in err and "shown once" not in err
