"""A guard's parameters: out-of-range values are refused when it is built, and a fitted
guard (an artifact a policy serves) refuses a change that would need a refit."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import ConfigError
from routers.base import RouterError
from routers.guard import GuardRouter
from tests.unit.gateway_helpers import base_config, gateway_client
from tests.unit.test_guard_policy_models import _guard


async def test_a_served_guard_refuses_params_it_was_not_calibrated_with(
        ups, tmp_path: Path) -> None:
    # `router: guard` with `params: {target_frr: 0.3}` started and answered "calibrated to
    # 30.0% false rejections" at the threshold calibrated for 0.0; `method: msp` compared
    # msp scores with the centroid threshold: a guard that rejects at random, silently
    art = _guard(tmp_path)
    for params, names in (({"target_frr": 0.3}, "target_frr"), ({"method": "msp"}, "method"),
                          ({"k": 3, "unsafe": False}, "k, unsafe")):
        cfg = base_config(ups[0].base, ups[1].base)
        cfg["policies"] = [{"name": "auto", "router": "guard", "artifact": str(art),
                            "params": params,
                            "models": {"code": "coder", "chat": "chatter", "small": "chatter"}}]
        with pytest.raises(ConfigError, match=f"guard: {names} cannot change on a fitted"):
            async with gateway_client(cfg, tmp_path):
                pass
    # the values it was fitted with are accepted (a config that restates them)
    cfg["policies"][0]["params"] = {"target_frr": 0.0, "method": "centroid"}
    async with gateway_client(cfg, tmp_path) as (c, _):
        r = await c.post("/v1/route", json={"model": "auto", "text": "refactor this class"})
        assert r.json()["action"] == "forward"


@pytest.mark.parametrize("params, why", [
    ({"hidden": 0}, "hidden must be an integer"),
    ({"epochs": 0}, "epochs must be an integer"),
    ({"bank_size": 0}, "bank_size must be an integer"),
    ({"C": 0}, "C must be a number"),
    ({"temperature": -1}, "temperature must be a number"),
    ({"unsafe_frr": 1.5}, "unsafe_frr must be a number"),
    ({"unsafe_seeds": "how to hack a bank"}, "unsafe_seeds must be a list"),
    ({"routes": ["bank"]}, "routes must map"),
    ({"routes": {"bank": 5}}, "routes must map"),
])
def test_out_of_range_params_are_refused_before_fitting(params: dict, why: str) -> None:
    # hidden=0 failed deep in the MLP's matmul; unsafe_seeds="a text" became one seed per
    # character, each of which flagged ordinary queries as unsafe; routes=["bank"] failed
    # with "AttributeError: 'list' object has no attribute 'get'", routes={"bank": 5}
    # saved an artifact routing to the expert 5
    with pytest.raises(RouterError, match=why):
        GuardRouter(**params).check_params()
