"""A router parameter the family does not take (a typo in a config's params: or a CLI's
--param) is named with the ones it takes, not Python's words about a class's __init__."""

import pytest

from routers.base import RouterError, make_router, registered_names


def test_a_typo_is_named_with_a_suggestion_and_the_known_parameters():
    with pytest.raises(RouterError) as e:
        make_router("semantic", topk=3)
    msg = str(e.value)
    assert "unknown parameter 'topk' (did you mean 'top_k'?)" in msg
    assert "known: " in msg and "top_k" in msg
    assert "__init__" not in msg and "SemanticRouter" not in msg


def test_several_unknown_parameters_are_all_named():
    with pytest.raises(RouterError) as e:
        make_router("knn", kk=3, bogus=1, k=5)
    msg = str(e.value)
    assert "unknown parameters 'bogus', 'kk' (did you mean 'k'?)" in msg


def test_known_parameters_still_build_every_family():
    for name in registered_names():
        assert make_router(name).name == name
