"""The README's loop trains a router on the demo's own routing log (experts ``smollm2`` and
``gemma3``) and serves the policy ``expertgate train`` prints, whose experts point at the
demo's llama.cpp servers: each expert the demo has must point at that expert's own server
(examples/demo-local.yaml: smollm2 on 8101, gemma3 on 8102), not at whichever port its
place in the sorted table gave it."""

from __future__ import annotations

from pathlib import Path

import yaml

from expertgate.cli.train import policy_snippet


def _bases(snippet: str) -> dict[str, str]:
    return {e["name"]: e["api_base"] for e in yaml.safe_load(snippet)["experts"]}


def _demo_ports() -> dict[str, str]:
    demo = Path(__file__).resolve().parents[2] / "examples" / "demo-local.yaml"
    return {e["name"]: e["api_base"] for e in yaml.safe_load(demo.read_text())["experts"]}


def test_a_router_trained_on_the_demos_log_points_each_expert_at_its_own_server(
        tmp_path: Path) -> None:
    """Sorted, gemma3 came first and got 8101: served as printed, every request the router
    sent to gemma3 was answered by SmolLM2's server (llama.cpp ignores the model name)."""
    bases = _bases(policy_snippet("knn", tmp_path, ["gemma3", "smollm2"], "hashing", {}))
    assert bases == _demo_ports()


def test_another_model_beside_a_demo_expert_takes_a_port_the_demo_expert_does_not_use(
        tmp_path: Path) -> None:
    bases = _bases(policy_snippet("knn", tmp_path, ["gemma3", "my-model"], "hashing", {}))
    assert bases["gemma3"] == _demo_ports()["gemma3"]
    assert bases["my-model"] == "http://127.0.0.1:8101/v1"
    bases = _bases(policy_snippet("knn", tmp_path, ["a", "b", "smollm2"], "hashing", {}))
    assert bases == {"a": "http://127.0.0.1:8102/v1", "b": "http://127.0.0.1:8103/v1",
                     "smollm2": "http://127.0.0.1:8101/v1"}


def test_a_table_of_other_models_keeps_its_ports_in_order(tmp_path: Path) -> None:
    bases = _bases(policy_snippet("knn", tmp_path, ["gpt-4-1106-preview",
                                                    "mistralai/Mixtral-8x7B-Instruct-v0.1"],
                                  "hashing", {}))
    assert list(bases.values()) == ["http://127.0.0.1:8101/v1", "http://127.0.0.1:8102/v1"]
