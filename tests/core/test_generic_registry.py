"""sslcore.registry: a generic name -> object registry filled by decorators."""

from __future__ import annotations

import pytest

from sslcore.data.sources import SOURCES
from sslcore.methods import METHODS, SimCLR
from sslcore.registry import Registry


def _registry() -> Registry[type]:
    reg: Registry[type] = Registry("widget")

    @reg.register("alpha")
    class Alpha: ...

    @reg.register("beta")
    class Beta: ...

    return reg


def test_register_returns_the_object_and_get_finds_it() -> None:
    reg: Registry[type] = Registry("widget")

    class Gamma: ...

    assert reg.register("gamma")(Gamma) is Gamma
    assert reg.get("gamma") is Gamma
    assert "gamma" in reg
    assert "delta" not in reg


def test_names_are_sorted_and_iterable() -> None:
    reg = _registry()
    assert reg.names() == ["alpha", "beta"]
    assert list(reg) == ["alpha", "beta"]


def test_duplicate_name_raises_and_keeps_the_first() -> None:
    reg = _registry()
    first = reg.get("alpha")
    with pytest.raises(KeyError, match="widget 'alpha' is already registered"):

        @reg.register("alpha")
        class Other: ...

    assert reg.get("alpha") is first


def test_unknown_name_suggests_and_lists_choices() -> None:
    reg = _registry()
    with pytest.raises(KeyError) as info:
        reg.get("alpah")
    message = str(info.value)
    assert "unknown widget 'alpah'" in message
    assert "did you mean 'alpha'?" in message
    assert "choose one of: alpha, beta" in message


def test_unknown_name_without_close_match_has_no_suggestion() -> None:
    with pytest.raises(KeyError) as info:
        _registry().get("zzzz")
    assert "did you mean" not in str(info.value)
    assert "choose one of: alpha, beta" in str(info.value)


def test_project_registries_are_filled_by_their_decorators() -> None:
    assert METHODS.get("simclr") is SimCLR
    assert {"digits", "folder"} <= set(SOURCES.names())
