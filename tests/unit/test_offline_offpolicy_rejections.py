"""eval offpolicy of a candidate that rejects some requests (a semantic policy's threshold,
a guard): each rejection was counted as a choice of '(experts absent from the logs)' and the
verdict said the candidate 'sends N% of requests to experts the logging policy never
explored', though it names no expert for them. The result now counts the rejections
(``rejected`` in the JSON) and says that they are rejections, which the logs cannot judge."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from expertgate.cli import main


def test_rejections_are_said_as_such(tmp_path: Path, capsys) -> None:
    probs = {"a": 0.7, "b": 0.3}
    rows = [{"request_id": f"r{i}", "endpoint": "chat", "status": "ok", "policy": "auto",
             "text": ("solve the maths equation" if i % 2 else "write a poem about the sea")
             + f" {i}" if i % 5 else f"zzqx unrelated gibberish {i}",
             "expert": "a" if i % 4 else "b", "feedback_score": float(i % 3 == 0),
             "cost_usd": 0.001, "propensity": probs["a" if i % 4 else "b"],
             "action_probs": probs, "candidates": ["a", "b"]} for i in range(40)]
    logs = tmp_path / "export.jsonl"
    logs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = {"embedder": {"kind": "hashing"},
           "experts": [{"name": n, "api_base": f"http://127.0.0.1:9/{n}/v1"} for n in "ab"],
           "policies": [{"name": "sem", "router": "semantic", "params": {"threshold": 0.3},
                         "routes": [{"name": "maths", "expert": "a",
                                     "examples": ["solve the maths equation"]},
                                    {"name": "poems", "expert": "b",
                                     "examples": ["write a poem about the sea"]}]}]}
    conf = tmp_path / "g.yaml"
    conf.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "ope.json"
    rc = main(["eval", "offpolicy", "--logs", str(logs), "--router", "sem", "--config",
               str(conf), "--boot", "50", "--json", str(out),
               "--cache-dir", str(tmp_path / "c")])
    captured = capsys.readouterr()
    res = json.loads(out.read_text())
    assert res["rejected"] == 8, captured.err
    assert "rejects 8 of the 40" in captured.err
    assert rc in (0, 1)
