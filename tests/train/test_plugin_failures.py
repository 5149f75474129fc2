"""A plugin's bug stops the real `mixcore` command at once: exit 1, plugin and hook named, no
traceback, never a hang, whichever hook raised and whether or not data-loader workers run it.

The broken plugin is a real installed entry point (a module plus its ``.dist-info`` on
PYTHONPATH); ``MIXCORE_TEST_BROKEN_HOOK`` names the hook it raises in.
"""

from __future__ import annotations

import json
import textwrap

import pytest

pytestmark = pytest.mark.slow

#: Seconds a failing run may take. Training a few steps of the tiny model takes ~10 s here; a
#: hang fails the test instead of blocking the suite.
TIMEOUT = 120

BROKEN_PLUGIN = textwrap.dedent(
    '''
    """Raises in the hook named by MIXCORE_TEST_BROKEN_HOOK; every other hook passes through.

    Its hooks are wrappers: dispatch for a built-in's model or dataset reaches another plugin's
    wrappers (observing and adjusting a result), never its plain implementations.
    """
    import os

    from mixcore import hookimpl

    manifest = {"api_version": 1, "description": "a plugin with a bug in one hook"}


    def _fail(hook):
        if os.environ.get("MIXCORE_TEST_BROKEN_HOOK") == hook:
            raise ValueError(f"deliberate bug in {hook}")


    @hookimpl(wrapper=True)
    def load_model(model_name, source, options):
        _fail("load_model")
        return (yield)


    @hookimpl(wrapper=True)
    def build_dataset(dataset_name, options, base_dir):
        _fail("build_dataset")
        return (yield)


    @hookimpl(wrapper=True)
    def preprocess_sample(model_name, sample, bundle, max_length):
        _fail("preprocess_sample")
        return (yield)


    @hookimpl(wrapper=True)
    def collate_batch(model_name, features, bundle):
        batch = yield
        if os.environ.get("MIXCORE_TEST_BROKEN_HOOK") == "collate_batch":
            # A wrapper adjusting another plugin's result, with a bug in its own code.
            return {**batch, "pixel_values": batch["no_such_key"]}
        return batch


    @hookimpl(wrapper=True)
    def lora_target_modules(model_name, bundle):
        _fail("lora_target_modules")
        return (yield)


    @hookimpl(wrapper=True)
    def save_model(model_name, bundle, folder):
        _fail("save_model")
        return (yield)


    @hookimpl(wrapper=True)
    def generate(model_name, bundle, prompts, max_new_tokens):
        _fail("generate")
        return (yield)
    '''
)


@pytest.fixture(scope="module")
def site(tmp_path_factory, install_plugin_module):
    return install_plugin_module(tmp_path_factory.mktemp("site"), "buggy", BROKEN_PLUGIN)


def run_broken(run_mixcore, site, hook, *args):
    return run_mixcore(
        *args,
        env={"PYTHONPATH": str(site), "MIXCORE_TEST_BROKEN_HOOK": hook},
        timeout=TIMEOUT,
    )


def assert_reported(result, hook, exception="ValueError: deliberate bug in"):
    output = result.stdout[-3000:] + result.stderr[-3000:]
    assert result.returncode == 1, output
    assert f"error: plugin 'buggy' failed in hook {hook}: {exception}" in result.stderr, output
    assert "Traceback" not in result.stderr, output


@pytest.mark.parametrize("workers", [0, 2])
def test_bug_in_preprocess_sample_stops_training_naming_plugin_and_hook(
    run_mixcore, site, write_train_config, workers
):
    config = write_train_config(dataloader_num_workers=workers, max_steps=2)
    result = run_broken(run_mixcore, site, "preprocess_sample", "train", "--config", str(config))
    assert_reported(result, "preprocess_sample")
    assert "mixcore_test_buggy.py:" in result.stderr  # the plugin's own line


@pytest.mark.parametrize("workers", [0, 2])
def test_bug_in_a_collate_batch_wrapper_stops_training_naming_plugin_and_hook(
    run_mixcore, site, write_train_config, workers
):
    config = write_train_config(dataloader_num_workers=workers, max_steps=2)
    result = run_broken(run_mixcore, site, "collate_batch", "train", "--config", str(config))
    assert_reported(result, "collate_batch", "KeyError: 'no_such_key'")


def test_bug_in_preprocess_sample_stops_a_dry_run(run_mixcore, site, write_train_config):
    config = write_train_config()
    result = run_broken(
        run_mixcore, site, "preprocess_sample", "train", "--dry-run", "--config", str(config)
    )
    assert_reported(result, "preprocess_sample")


def test_verbose_shows_the_plugins_traceback(run_mixcore, site, write_train_config):
    config = write_train_config(max_steps=2)
    result = run_broken(
        run_mixcore, site, "preprocess_sample", "train", "--verbose", "--config", str(config)
    )
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "mixcore_test_buggy.py" in result.stderr


@pytest.mark.parametrize("hook", ["load_model", "build_dataset", "lora_target_modules"])
def test_bug_in_a_hook_before_training_is_reported(run_mixcore, site, write_train_config, hook):
    config = write_train_config(lora=True, max_steps=1)
    result = run_broken(run_mixcore, site, hook, "train", "--config", str(config))
    assert_reported(result, hook)


def test_bug_in_save_model_is_reported(run_mixcore, site, write_train_config):
    config = write_train_config(max_steps=1)
    result = run_broken(run_mixcore, site, "save_model", "train", "--config", str(config))
    assert_reported(result, "save_model")


def test_bug_in_generate_is_reported_by_infer(run_mixcore, site):
    options = json.dumps({"random_init": True})
    result = run_broken(
        run_mixcore,
        site,
        "generate",
        "infer",
        "--model",
        "qwen_vl/tiny",
        "--model-options",
        options,
        "--prompt",
        "What colour?",
    )
    assert_reported(result, "generate")
