"""ModelPlugin: one object per model, hooks only for the work methods it overrides."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest

from mixcore.api import ModelBundle, UsageError
from mixcore.kit.model_plugin import ModelPlugin
from mixcore.testing import make_registry


class Echo(ModelPlugin):
    name = "echo"
    description = "answers with the model name"
    capabilities: ClassVar[dict[str, bool]] = {"inference": True}
    aliases = ("echo/tiny",)

    def load(self, source: str, options: dict[str, Any]) -> ModelBundle:
        return ModelBundle(name=self.name, model=source, tokenizer=None)

    def answer(self, bundle: ModelBundle, prompts, max_new_tokens: int) -> list[str]:
        return [f"{self.name}:{bundle.model}" for _ in prompts]


class Other(Echo):
    name = "other"
    aliases = ("other/tiny",)

    def check_options(self, source: str, options: dict[str, Any]) -> list[str]:
        return ["always wrong"]


def test_only_overridden_work_methods_become_hooks():
    registry = make_registry(("echo", Echo()), ("other", Other()))
    assert registry.plugins["echo"].hooks == ["generate", "load_model", "register_models"]
    assert "check_model_options" in registry.plugins["other"].hooks
    assert registry.plugins["echo"].description == "answers with the model name"
    assert registry.model("echo").capabilities["inference"] is True


def test_each_plugin_answers_for_its_own_model_only():
    registry = make_registry(("echo", Echo()), ("other", Other()))
    for name in ("echo", "other"):
        bundle = registry.hook.load_model(model_name=name, source="src", options={})
        assert bundle.name == name
        assert (
            registry.hook.generate(
                model_name=name, bundle=bundle, prompts=[1, 2], max_new_tokens=1, num_beams=1
            )
            == [f"{name}:src"] * 2
        )
    assert registry.hook.check_model_options(model_name="echo", source="s", options={}) is None
    assert registry.hook.check_model_options(model_name="other", source="s", options={}) == [
        "always wrong"
    ]


class Beams(Echo):
    name = "beams"
    aliases = ("beams/tiny",)

    def answer(self, bundle, prompts, max_new_tokens, num_beams=1):
        return [f"{num_beams} beams" for _ in prompts]


def test_beams_reach_an_answer_that_takes_them_and_are_refused_by_one_that_does_not():
    registry = make_registry(("echo", Echo()), ("beams", Beams()))

    def ask(name: str, beams: int):
        bundle = ModelBundle(name=name, model="m", tokenizer=None)
        return registry.hook.generate(
            model_name=name, bundle=bundle, prompts=[1], max_new_tokens=1, num_beams=beams
        )

    assert ask("beams", 4) == ["4 beams"]
    assert ask("beams", 1) == ["1 beams"]
    assert ask("echo", 1) == ["echo:m"]
    with pytest.raises(UsageError, match="'echo' decodes greedily only"):
        ask("echo", 3)
