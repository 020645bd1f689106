"""Attacks, triggers and caption-set builders are found by name."""

from __future__ import annotations

import pytest

from poisonclip.attacks import triggers
from poisonclip.attacks.backdoor import plan_backdoor
from poisonclip.attacks.captions import search_caption_set, templates_caption_set
from poisonclip.attacks.registry import ATTACKS, CAPTION_SETS, TRIGGERS, Registry, list_registered
from poisonclip.attacks.targeted import plan_targeted
from poisonclip.errors import UserError


def test_builtins_are_registered_under_their_names():
    assert ATTACKS.get("backdoor").plan is plan_backdoor and ATTACKS.get("targeted").plan is plan_targeted
    assert TRIGGERS.get("checkerboard") is triggers.apply
    assert CAPTION_SETS.get("search") is search_caption_set
    assert CAPTION_SETS.get("templates") is templates_caption_set


def test_listing_by_kind_and_pattern():
    assert [e.name for e in list_registered("attacks")] == ["backdoor", "targeted", "text-backdoor"]
    assert [e.name for e in list_registered("captions", "t*")] == ["templates"]
    kinds = {e.kind for e in list_registered()}
    assert kinds == {"attack", "trigger", "caption set"}
    assert all(e.description for e in list_registered())


def test_unknown_names_are_user_errors():
    with pytest.raises(UserError, match="unknown attack 'nope'; known: backdoor, targeted, text-backdoor"):
        ATTACKS.get("nope")
    with pytest.raises(UserError, match="unknown kind"):
        list_registered("models")


def test_a_name_cannot_be_taken_twice():
    reg = Registry("thing")

    @reg.register("a")
    def first():
        """First."""

    reg.register("a", first)  # the same object again is fine (re-import)
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("a", lambda: None)
    assert reg.names() == ["a"] and next(reg.entries()).description == "First."
