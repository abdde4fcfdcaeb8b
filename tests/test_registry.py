"""The generic registry: registration, collisions, unknown names, broken plugins, globbing."""

from __future__ import annotations

import pytest

from bench.registry import (
    BrokenEntryError,
    DuplicateNameError,
    Registry,
    UnknownNameError,
)


def make() -> Registry[object]:
    reg: Registry[object] = Registry("widget")
    reg.register("resnet20", object())
    reg.register("resnet32", object())
    reg.register("vgg13", object())
    return reg


def test_decorator_and_direct_registration_return_the_object():
    reg: Registry[type] = Registry("widget")

    @reg.register("a")
    class A:
        pass

    b = object()
    assert reg.register("b", b) is b
    assert reg.get("a") is A
    assert reg.get("b") is b
    assert reg.names() == ["a", "b"]


def test_duplicate_name_names_both_origins():
    reg: Registry[type] = Registry("widget")

    @reg.register("same")
    class First:
        pass

    with pytest.raises(DuplicateNameError) as info:

        @reg.register("same")
        class Second:
            pass

    message = str(info.value)
    assert message.count("test_registry.py:") == 2, message
    assert "registered twice" in message


def test_unknown_name_suggests_close_names_and_lists_available():
    reg = make()
    with pytest.raises(UnknownNameError) as info:
        reg.get("resnet21")
    err = info.value
    assert sorted(err.suggestions) == ["resnet20", "resnet32"]
    assert "Did you mean 'resnet" in str(err)
    assert "Available widgets: resnet20, resnet32, vgg13." in str(err)


def test_unknown_name_with_nothing_close_has_no_suggestion():
    with pytest.raises(UnknownNameError) as info:
        make().get("transformer")
    assert info.value.suggestions == []
    assert "Did you mean" not in str(info.value)


def test_glob_filter_and_items():
    reg = make()
    assert reg.names("resnet*") == ["resnet20", "resnet32"]
    assert [n for n, _ in reg.items("vgg?3")] == ["vgg13"]
    assert reg.names("nothing*") == []


def test_broken_entry_is_listed_and_fails_only_when_selected():
    reg = make()
    reg.mark_broken("fancy", "plugins/fancy.py", "ImportError: no module named foo")
    assert [b.name for b in reg.broken()] == ["fancy"]
    assert "fancy" not in reg.names()
    reg.get("vgg13")  # others still work
    with pytest.raises(BrokenEntryError, match=r"plugins/fancy\.py failed to import: ImportError"):
        reg.get("fancy")


@pytest.mark.parametrize("bad", ["", " x", "a b"])
def test_names_with_whitespace_are_rejected(bad):
    with pytest.raises(ValueError, match="no whitespace"):
        Registry("widget").register(bad, object())
