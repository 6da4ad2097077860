"""Off-policy evaluation and bias-corrected training on routing logs at their edges: a
candidate none of whose choices the logs observed, logs where one expert served every rated
request, a served expert the record's own propensities do not name, and the provenance of the
result JSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from evals.offpolicy import LoggedData, OffPolicyError, debiased_table, estimate, load_logged
from tests.unit.gateway_helpers import knn_artifact


def _rows(n: int, served: str = "a", probs: dict | None = None) -> list[dict]:
    probs = probs or {"a": 0.9, "b": 0.1}
    return [{"request_id": str(i), "endpoint": "chat", "status": "ok",
             "text": f"question {i} ünïcödé", "expert": served, "feedback_score": float(i % 2),
             "cost_usd": 0.001, "propensity": probs.get(served), "action_probs": probs,
             "candidates": sorted(probs)} for i in range(n)]


def _write(tmp_path, rows: list[dict]):
    p = tmp_path / "export.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return p


def _candidate(tmp_path, prefer: str):
    """A knn artifact (hashing features) that always prefers expert ``prefer`` of a, b."""
    row = [1.0, 0.0] if prefer == "a" else [0.0, 1.0]
    return knn_artifact(tmp_path / f"cand-{prefer}", ["a", "b"], [row, row])


def test_a_candidate_whose_choices_were_never_served_gets_no_estimate(tmp_path) -> None:
    """40 rated requests all served by a (b explored with probability 0.1 but never drawn);
    a candidate that always picks b has effective sample size 0. It printed 'weak overlap'
    and 'ips 0.0000 [0.0000, 0.0000]' (a certain-looking zero from no observation) and
    exited 0."""
    from expertgate.cli import main

    logs = _write(tmp_path, _rows(40))
    out = tmp_path / "ope.json"
    rc = main(["eval", "offpolicy", "--logs", str(logs), "--router",
               str(_candidate(tmp_path, "b")), "--boot", "50", "--json", str(out),
               "--cache-dir", str(tmp_path / "c")])
    res = json.loads(out.read_text())
    assert rc == 1 and res["verdict"] == "no_overlap" and res["ess"] == 0
    assert "b" in res["message"] and "none of the 40" in res["message"]
    assert all(v is None for v in res["estimates"]["quality"].values())
    # the estimator alone says the same
    data = LoggedData(["a", "b"], np.zeros((8, 2)), np.zeros(8, int), np.ones(8), np.zeros(8),
                      np.tile([0.9, 0.1], (8, 1)))
    assert estimate(data, np.tile([0.0, 1.0], (8, 1)), n_boot=20)["verdict"] == "no_overlap"


def test_offpolicy_json_records_whether_the_tree_was_dirty(tmp_path) -> None:
    """The result JSON had the commit but not the dirty flag (the code that made the figure
    may not be the committed code), unlike eval routing's and train's provenance."""
    from evals.provenance import git_state
    from expertgate.cli import main

    rows = _rows(20) + [{**r, "request_id": f"b{i}", "expert": "b", "propensity": 0.1}
                        for i, r in enumerate(_rows(20))]
    out = tmp_path / "ope.json"
    rc = main(["eval", "offpolicy", "--logs", str(_write(tmp_path, rows)), "--router",
               str(_candidate(tmp_path, "a")), "--boot", "50", "--json", str(out),
               "--cache-dir", str(tmp_path / "c")])
    res = json.loads(out.read_text())
    assert rc == 0 and res["commit"] and res["data_sha256"] and res["command"]
    assert res["dirty"] == git_state()["dirty"] and isinstance(res["dirty"], bool)


@pytest.mark.parametrize("method", ["ips", "dr", "dr_target"])
def test_a_correction_needs_two_served_experts(tmp_path, method: str) -> None:
    """Every rated request served by a: with --correction dr the router was trained anyway,
    b's column filled by a reward model that never saw one of b's outcomes (validation APGR
    -8.2 on the gateway's own log); without a correction the same logs are refused."""
    data = load_logged(_write(tmp_path, _rows(40)), lambda t: np.ones((len(t), 3)))
    with pytest.raises(OffPolicyError, match="every rated record was served by 'a'"):
        debiased_table(data, method)


def test_train_with_a_correction_refuses_logs_of_one_served_expert(tmp_path, capsys) -> None:
    from expertgate.cli import main

    rc = main(["train", "--router", "knn", "--data", str(_write(tmp_path, _rows(40))),
               "--format", "logs", "--correction", "dr", "--embedder", "hashing",
               "--out", str(tmp_path / "art"), "--cache-dir", str(tmp_path / "c")])
    assert rc == 2 and not (tmp_path / "art").exists()
    assert "every rated record was served by 'a'" in capsys.readouterr().err


def test_a_served_expert_its_record_gives_no_probability_is_named(tmp_path) -> None:
    """Records served by 'ghost' whose action_probs name only a and b (an expert renamed in
    the config, edited logs) failed with 'every served expert needs a logged propensity > 0',
    naming neither the expert nor how many records."""
    rows = _rows(10) + [{**r, "request_id": f"g{i}", "expert": "ghost"}
                        for i, r in enumerate(_rows(6))]
    with pytest.raises(OffPolicyError, match=r"'ghost' \(6 records?\)"):
        load_logged(_write(tmp_path, rows), lambda t: np.ones((len(t), 3)))


def test_a_policy_by_name_is_judged_in_its_experts_names(tmp_path) -> None:
    """eval offpolicy --router POLICY --config: a learned router whose table models the
    policy maps to its experts (models: {m-a: a, m-b: b}, as `expertgate train` writes) was
    judged in the table's names, none of which the logs hold: 'no overlap ... (experts absent
    from the logs)' on logs that explored both experts."""
    import yaml

    from expertgate.cli import main

    art = knn_artifact(tmp_path / "art", ["m-a", "m-b"], [[1.0, 0.0], [1.0, 0.0]])
    cfg = {"embedder": {"kind": "hashing"},
           "experts": [{"name": "a", "api_base": "http://127.0.0.1:9/v1"},
                       {"name": "b", "api_base": "http://127.0.0.1:9/v1"}],
           "policies": [{"name": "learned", "router": "knn", "artifact": str(art),
                         "models": {"m-a": "a", "m-b": "b"}, "fallback": ["a"]}]}
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(cfg))
    rows = _rows(30) + [{**r, "request_id": f"b{i}", "expert": "b", "propensity": 0.1}
                        for i, r in enumerate(_rows(10))]
    out = tmp_path / "ope.json"
    rc = main(["eval", "offpolicy", "--logs", str(_write(tmp_path, rows)), "--router",
               "learned", "--config", str(path), "--boot", "50", "--json", str(out),
               "--cache-dir", str(tmp_path / "c")])
    res = json.loads(out.read_text())
    assert rc == 0 and res["verdict"] != "no_overlap", res["message"]
    assert res["overlap"]["unsupported_share"] == 0


def test_a_candidate_choosing_an_expert_the_logs_never_name_is_no_overlap(tmp_path,
                                                                          capsys) -> None:
    """An artifact trained on other names (here 'c', which the logs never hold, preferred
    everywhere) was silently judged on its second choice: an estimate of a router that would
    send every request elsewhere, exit 0, against the README ('no overlap', exit 1)."""
    from expertgate.cli import main

    art = knn_artifact(tmp_path / "art", ["a", "c"], [[0.0, 1.0], [0.0, 1.0]])
    rows = _rows(30) + [{**r, "request_id": f"b{i}", "expert": "b", "propensity": 0.1}
                        for i, r in enumerate(_rows(10))]
    out = tmp_path / "ope.json"
    rc = main(["eval", "offpolicy", "--logs", str(_write(tmp_path, rows)), "--router",
               str(art), "--boot", "50", "--json", str(out), "--cache-dir", str(tmp_path / "c")])
    res = json.loads(out.read_text())
    assert rc == 1 and res["verdict"] == "no_overlap"
    assert "model(s) 'c' are no expert of these logs" in capsys.readouterr().err



def test_a_simulation_from_a_registry_name_hashes_its_data(tmp_path, monkeypatch) -> None:
    """--simulate llmrouter_nq wrote data_sha256 null: the name was hashed as a path, which
    does not exist; train and eval routing hash the folder a registry name reads."""
    from evals.datasets import registry
    from evals.offpolicy import data_sha256
    from expertgate.cli import main

    shared = Path("/work/shared/data")
    if not (shared / "llmrouter_nq").is_dir():
        pytest.skip("the shared llmrouter_nq data set is not on this machine")
    monkeypatch.setenv("EXPERTGATE_DATA_DIR", str(shared))
    out = tmp_path / "sim.json"
    assert main(["eval", "offpolicy", "--simulate", "llmrouter_nq", "--repeats", "1", "--n",
                 "40", "--boot", "50", "--json", str(out), "--cache-dir",
                 str(tmp_path / "c")]) == 0
    res = json.loads(out.read_text())
    want = data_sha256(registry.resolve_table("llmrouter_nq")[0])
    assert res["data"] == "llmrouter_nq" and want is not None and res["data_sha256"] == want
