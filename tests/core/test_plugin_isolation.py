"""A misbehaving plugin package, installed for real, cannot take anything from the others.

One distribution, ``mixcore-misbehaving``, is pip-installed into a folder put on PYTHONPATH. Its
entry points print while loading (and load slowly), raise ``SystemExit`` and a custom
``BaseException`` at import, and claim names the built-in plugins hold. The real ``mixcore``
command runs in a subprocess. In-memory plugins cover the in-process cases.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mixcore import hookimpl
from mixcore.testing import make_plugin, make_registry, run_cli

BUILTINS = ("qwen_vl", "blip2", "visualglm", "datasets")
BUILTIN_DATASETS = {"chatml_dataset", "coco_caption", "vqa", "coco_vqa", "synthetic_shapes"}

MODULES = {
    "noisy": """
        import time
        print("hello from noisy at import")
        time.sleep(1.2)  # a plugin that imports something heavy at module level
        manifest = {"api_version": 1, "description": "prints and loads slowly"}

        from mixcore import hookimpl

        @hookimpl
        def register_datasets(register):
            print("noisy registers its dataset")
            register(name="noisy_data", description="noisy")
        """,
    "quitter": """
        import sys
        sys.exit(3)
        """,
    "doomed": """
        class Doom(BaseException):
            pass

        raise Doom("the sky fell at import")
        """,
    "hijack": """
        from mixcore import hookimpl
        from mixcore.api.records import ModelBundle

        manifest = {"api_version": 1, "description": "claims the built-ins' names"}

        @hookimpl
        def register_models(register):
            register(
                name="hijack",
                description="wants qwen_vl/tiny",
                aliases=["qwen_vl/tiny", "hijack/tiny"],
                model_types=["qwen_vl"],
            )

        @hookimpl
        def register_datasets(register):
            register(name="chatml_dataset", description="the built-in's name")
            register(name="hijack_data", description="a name of its own")

        # Answers for every name, as if it owned them all.
        @hookimpl
        def load_model(model_name, source, options):
            return ModelBundle(name="HIJACKED", model=None, tokenizer=None)

        @hookimpl
        def build_dataset(dataset_name, options, base_dir):
            return ["HIJACKED"]
        """,
}


def write_misbehaving_package(folder: Path) -> Path:
    package = folder / "mixcore_misbehaving"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    for name, code in MODULES.items():
        (package / f"{name}.py").write_text(textwrap.dedent(code))
    # "aaa_hijack" sorts before every built-in: admission by name alone would let it win.
    (folder / "pyproject.toml").write_text(
        textwrap.dedent(
            """
            [build-system]
            requires = ["setuptools>=77"]
            build-backend = "setuptools.build_meta"

            [project]
            name = "mixcore-misbehaving"
            version = "6.6.6"

            [project.entry-points."mixcore.plugins"]
            aaa_hijack = "mixcore_misbehaving.hijack"
            noisy = "mixcore_misbehaving.noisy"
            quitter = "mixcore_misbehaving.quitter"
            doomed = "mixcore_misbehaving.doomed"
            """
        )
    )
    return folder


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, pip_install) -> Path:
    target = tmp_path_factory.mktemp("site")
    pip_install(write_misbehaving_package(tmp_path_factory.mktemp("misbehaving-src")), target)
    return target


def mixcore(
    site: Path, *args: str, plugins: str | None = None, **kw
) -> subprocess.CompletedProcess:
    environ = {**os.environ, "PYTHONPATH": str(site)}
    if plugins is not None:
        environ["MIXCORE_PLUGINS"] = plugins
    return subprocess.run(
        [sys.executable, "-m", "mixcore", *args], capture_output=True, text=True, env=environ, **kw
    )


@pytest.fixture(scope="module")
def listing(site: Path) -> tuple[subprocess.CompletedProcess, dict]:
    result = mixcore(site, "plugins", "list", "--json")
    return result, {p["name"]: p for p in json.loads(result.stdout)["plugins"]}


# -- printing while loading -------------------------------------------------------------------


def test_output_printed_while_loading_stays_out_of_json_stdout(listing):
    result, plugins = listing  # json.loads above already proved stdout is pure JSON
    assert result.returncode == 0, result.stderr
    assert "hello from noisy at import" in result.stderr
    assert "noisy registers its dataset" in result.stderr
    noisy = plugins["noisy"]
    assert noisy["status"] == "ok" and noisy["datasets"] == ["noisy_data"]
    assert noisy["stdout"] == "hello from noisy at import\nnoisy registers its dataset\n"
    assert any("printed 2 line(s) to stdout while loading" in n for n in noisy["notes"])


def test_validate_json_stays_parseable_beside_a_printing_plugin(site, tmp_path):
    (tmp_path / "chat.json").write_text("[]")
    config = {
        "model_name_or_path": "qwen_vl/tiny",
        "model_options": {"random_init": True},
        "dataset": {"train": [{"name": "noisy_data"}]},
        "output_dir": "out",
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    result = mixcore(site, "validate", "--config", str(path), "--json", plugins="noisy,qwen_vl")
    assert json.loads(result.stdout)["valid"] is True, result.stdout
    assert result.returncode == 0 and "hello from noisy" in result.stderr


def test_plugins_show_prints_what_the_plugin_printed(site):
    result = mixcore(site, "plugins", "show", "noisy", plugins="noisy")
    assert result.returncode == 0, result.stderr
    assert "printed while loading:\n    hello from noisy at import" in result.stdout


# -- slow loading -----------------------------------------------------------------------------


def test_slow_plugin_is_named_with_its_load_time(listing, site):
    _, plugins = listing
    noisy = plugins["noisy"]
    assert noisy["load_seconds"] >= 1.2
    assert any(n.startswith("slow to load: 1.") for n in noisy["notes"])
    for name in BUILTINS:
        assert plugins[name]["load_seconds"] < 1.0 and plugins[name]["notes"] == []
    check = mixcore(site, "plugins", "check", plugins="noisy,datasets")
    # Slow is worth a note, not a failure.
    assert check.returncode == 0, check.stdout
    assert "NOTE noisy: slow to load: 1." in check.stdout
    table = mixcore(site, "plugins", "list", plugins="noisy")
    assert "noisy: slow to load: 1." in table.stdout


# -- exceptions that are not Exceptions -------------------------------------------------------


def test_system_exit_and_base_exception_at_import_break_only_that_plugin(listing, site):
    result, plugins = listing
    assert result.returncode == 0
    assert plugins["quitter"]["status"] == "broken"
    assert plugins["quitter"]["reason"].startswith("SystemExit: 3 (quitter.py:3)")
    assert plugins["doomed"]["status"] == "broken"
    assert plugins["doomed"]["reason"].startswith("Doom: the sky fell at import (doomed.py:")
    for name in (*BUILTINS, "noisy", "aaa_hijack"):
        assert plugins[name]["status"] == "ok", plugins[name]
    check = mixcore(site, "plugins", "check", plugins="quitter,doomed,datasets")
    assert check.returncode == 1
    assert "BROKEN quitter: SystemExit: 3" in check.stdout
    assert "BROKEN doomed: Doom: the sky fell" in check.stdout
    assert "Traceback" not in check.stdout + check.stderr


def test_base_exception_in_a_register_hook_breaks_only_that_plugin():
    class Doom(BaseException):
        pass

    @hookimpl
    def register_models(register):
        raise Doom("cannot register")

    @hookimpl
    def register_datasets(register):
        register(name="fine_data", description="fine")

    registry = make_registry(
        make_plugin("doomed", register_models), make_plugin("fine", register_datasets)
    )
    assert "register_models failed: Doom: cannot register" in registry.plugin("doomed").reason
    assert registry.dataset("fine_data").plugin == "fine"


def test_keyboard_interrupt_while_loading_still_interrupts():
    @hookimpl
    def register_models(register):
        raise KeyboardInterrupt

    # Ctrl-C during a slow import is the user stopping the command, not a broken plugin.
    with pytest.raises(KeyboardInterrupt):
        make_registry(make_plugin("slowpoke", register_models))
    result = run_cli(["plugins", "list"], plugins=[make_plugin("slowpoke", register_models)])
    assert result.exit_code == 130 and "interrupted" in result.stderr


# -- names the built-ins hold -----------------------------------------------------------------


def test_installed_plugin_cannot_take_builtin_names_even_sorting_first(listing):
    _, plugins = listing
    datasets = plugins["datasets"]
    assert datasets["status"] == "ok" and set(datasets["datasets"]) == BUILTIN_DATASETS
    assert datasets["first_party"] is True and datasets["conflicts"] == []
    assert plugins["qwen_vl"]["models"] == ["qwen_vl"] and plugins["qwen_vl"]["conflicts"] == []
    hijack = plugins["aaa_hijack"]
    assert hijack["status"] == "ok" and hijack["first_party"] is False
    assert hijack["models"] == ["hijack"] and hijack["datasets"] == ["hijack_data"]
    conflicts = "\n".join(hijack["conflicts"])
    assert (
        "dataset 'chatml_dataset' refused: built-in plugin 'datasets' (mixcore-datasets 0.1.0)"
        in conflicts
    )
    assert (
        "model alias 'qwen_vl/tiny' refused: built-in plugin 'qwen_vl' (mixcore-qwen-vl 0.1.0)"
        in conflicts
    )
    assert "model_type 'qwen_vl' refused" in conflicts
    assert "name it 'hijack'" in conflicts and "MIXCORE_PLUGINS=aaa_hijack,blip2," in conflicts


def test_contested_names_dispatch_to_the_builtin_never_the_newcomer(site, tmp_path):
    (tmp_path / "chat.json").write_text(
        '[{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}]'
    )
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text('{"model_type": "qwen_vl"}')
    code = textwrap.dedent(
        f"""
        from mixcore.registry import build_registry
        registry = build_registry()
        print(registry.resolve_model("qwen_vl/tiny").plugin)
        print(registry.resolve_model({str(tmp_path / "ckpt")!r}).plugin)
        samples = registry.hook.build_dataset(
            dataset_name="chatml_dataset", options={{"data_files": "chat.json"}},
            base_dir={str(tmp_path)!r},
        )
        print(type(samples).__module__, len(samples))
        print(registry.hook.build_dataset(dataset_name="hijack_data", options={{}}, base_dir=""))
        print(registry.hook.load_model(model_name="hijack", source="hijack/tiny", options={{}}).name)
        """
    )
    environ = {**os.environ, "PYTHONPATH": str(site)}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=environ
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "qwen_vl",
        "qwen_vl",
        "mixcore_datasets.chatml 1",
        "['HIJACKED']",  # its own names still reach it
        "HIJACKED",
    ]


def test_check_fails_and_train_commands_warn_about_refused_names(site, tmp_path):
    check = mixcore(site, "plugins", "check", plugins="aaa_hijack,datasets,qwen_vl")
    assert check.returncode == 1
    assert "CONFLICT aaa_hijack: dataset 'chatml_dataset' refused" in check.stdout
    path = tmp_path / "config.json"
    path.write_text(
        json.dumps(
            {
                "model_name_or_path": "qwen_vl/tiny",
                "model_options": {"random_init": True},  # qwen_vl's option, not hijack's
                "dataset": {"train": [{"name": "chatml_dataset", "data_files": "c.json"}]},
                "output_dir": "out",
            }
        )
    )
    (tmp_path / "c.json").write_text("[]")
    result = mixcore(site, "validate", "--config", str(path), plugins="aaa_hijack,datasets,qwen_vl")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "warning: plugin 'aaa_hijack': model alias 'qwen_vl/tiny' refused" in result.stderr
