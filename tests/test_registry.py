import pytest

from hf_prune.registry import Registry


def test_register_and_get():
    registry = Registry("thing")
    registry.register("alpha", 1)
    assert registry.get("alpha") == 1
    assert "alpha" in registry and list(registry) == ["alpha"]


def test_refuses_duplicate_and_malformed_names():
    registry = Registry("thing")
    registry.register("alpha", 1)
    with pytest.raises(ValueError, match="already registered"):
        registry.register("alpha", 2)
    with pytest.raises(ValueError, match="invalid thing name 'Bad-Name'"):
        registry.register("Bad-Name", 3)


def test_unknown_name_lists_allowed():
    registry = Registry("thing")
    registry.register("alpha", 1)
    registry.register("beta", 2)
    with pytest.raises(ValueError, match=r"unknown thing 'gamma'; allowed: alpha, beta"):
        registry.get("gamma")
