"""A hook implementation's unexpected exception is reported as its plugin's, named by hook."""

from __future__ import annotations

import functools

import pytest

from mixcore import hookimpl
from mixcore.api.errors import DataError, PluginError, PluginHookError
from mixcore.api.records import ModelBundle
from mixcore.testing import make_plugin, make_registry

BUNDLE = ModelBundle(name="m", model=None, tokenizer=None)


def call_collate(registry):
    return registry.hook.collate_batch(model_name="m", features=[{"input_ids": [1]}], bundle=BUNDLE)


def test_exception_in_an_implementation_names_its_plugin_and_the_hook():
    @hookimpl
    def collate_batch(model_name, features, bundle):
        return {"oops": features[0]["pixel_values"]}

    @hookimpl
    def lora_target_modules(model_name, bundle):
        return ["fine"]

    registry = make_registry(
        make_plugin("good", lora_target_modules), make_plugin("bad", collate_batch)
    )
    with pytest.raises(PluginHookError) as info:
        call_collate(registry)
    error = info.value
    assert (error.plugin, error.hook, error.exc_type) == ("bad", "collate_batch", "KeyError")
    assert str(error).startswith(
        "plugin 'bad' failed in hook collate_batch: KeyError: 'pixel_values'"
    )
    assert "test_hook_errors.py:" in str(error)  # the plugin's own line
    assert "Traceback" in error.detail and "pixel_values" in error.detail
    assert isinstance(error, PluginError)
    assert registry.hook.lora_target_modules(model_name="m", bundle=BUNDLE) == ["fine"]


def test_the_failing_plugin_is_found_among_several_implementations():
    @hookimpl
    def collate_batch(model_name, features, bundle):
        return None  # not this plugin's model: the next implementation runs

    @hookimpl(tryfirst=True)
    def first(model_name, features, bundle):
        return None

    @hookimpl
    def broken(model_name, features, bundle):
        raise ZeroDivisionError("division by zero")

    registry = make_registry(
        make_plugin("owner", collate_batch=broken),
        make_plugin("passes", collate_batch=collate_batch),
        make_plugin("early", collate_batch=first),
    )
    with pytest.raises(PluginHookError, match="plugin 'owner' failed in hook collate_batch"):
        call_collate(registry)


def test_a_wrapper_raising_after_the_result_is_named_not_the_wrapped_plugin():
    @hookimpl
    def collate_batch(model_name, features, bundle):
        return {"input_ids": [[1]]}

    @hookimpl(wrapper=True)
    def adjust(model_name, features, bundle):
        batch = yield
        return {**batch, "attention_mask": batch["mask"]}

    registry = make_registry(
        make_plugin("model", collate_batch), make_plugin("adjuster", collate_batch=adjust)
    )
    with pytest.raises(PluginHookError) as info:
        call_collate(registry)
    assert (info.value.plugin, info.value.exc_type) == ("adjuster", "KeyError")


def test_a_wrapper_around_a_failing_implementation_leaves_the_blame_on_it():
    @hookimpl
    def collate_batch(model_name, features, bundle):
        raise RuntimeError("model plugin bug")

    @hookimpl(wrapper=True)
    def observe(model_name, features, bundle):
        return (yield)

    registry = make_registry(
        make_plugin("model", collate_batch), make_plugin("observer", collate_batch=observe)
    )
    with pytest.raises(
        PluginHookError, match=r"plugin 'model' failed .*RuntimeError: model plugin bug"
    ):
        call_collate(registry)


def test_implementations_sharing_a_decorator_are_told_apart():
    def logged(function):
        @functools.wraps(function)
        def inner(*args, **kwargs):
            return function(*args, **kwargs)

        return inner

    @hookimpl
    @logged
    def fine(model_name, features, bundle):
        return None

    @hookimpl
    @logged
    def broken(model_name, features, bundle):
        raise ValueError("bad preprocessor_config.json")

    registry = make_registry(
        make_plugin("one", collate_batch=broken), make_plugin("two", collate_batch=fine)
    )
    with pytest.raises(PluginHookError) as info:
        call_collate(registry)
    assert info.value.plugin == "one"


def test_errors_a_plugin_raises_on_purpose_pass_unchanged():
    @hookimpl
    def collate_batch(model_name, features, bundle):
        raise DataError("bad record", source="data.json", index=3)

    registry = make_registry(make_plugin("p", collate_batch))
    with pytest.raises(DataError) as info:
        call_collate(registry)
    assert type(info.value) is DataError and str(info.value) == "data.json record 3: bad record"


def test_a_wrong_call_is_not_blamed_on_a_plugin():
    @hookimpl
    def collate_batch(model_name, features, bundle):
        return {}

    registry = make_registry(make_plugin("p", collate_batch))
    with pytest.raises(TypeError):  # positional arguments: the caller's bug, raised by pluggy
        registry.hook.collate_batch("m", [], BUNDLE)


def test_hook_callers_still_expose_pluggys_api():
    @hookimpl
    def collate_batch(model_name, features, bundle):
        return {}

    registry = make_registry(make_plugin("p", collate_batch))
    caller = registry.hook.collate_batch
    assert caller.name == "collate_batch"
    assert "p" in [impl.plugin_name for impl in caller.get_hookimpls()]
    with pytest.raises(AttributeError):
        registry.hook.no_such_hook  # noqa: B018
