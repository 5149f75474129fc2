"""The registry admits each plugin on its own and marks failures broken with a reason."""

from __future__ import annotations

import sys
import textwrap

import pytest

from mixcore import hookimpl
from mixcore.api.errors import PluginError, UnknownNameError
from mixcore.registry import build_registry
from mixcore.registry.discovery import EntryPointInfo
from mixcore.registry.loader import _schema as entry_schema
from mixcore.registry.verdict_cache import VerdictCache
from mixcore.testing import make_plugin, make_registry


@hookimpl
def register_models(register):
    register(
        name="toy",
        description="A toy model",
        options_schema={"type": "object", "properties": {"size": {"type": "integer"}}},
        aliases=["toy/tiny"],
        model_types=["toy_type"],
    )


@hookimpl
def register_datasets(register):
    register(
        name="toy_data",
        description="Toy data",
        options_schema={"type": "object", "properties": {"data_files": {"type": "string"}}},
    )


def toy_plugin(name="toy_plugin"):
    return make_plugin(name, register_models, register_datasets)


def test_registered_entries_are_recorded_with_their_plugin():
    registry = make_registry(toy_plugin())
    assert registry.model("toy").plugin == "toy_plugin"
    assert registry.model("toy/tiny").name == "toy"
    assert registry.dataset("toy_data").plugin == "toy_plugin"
    record = registry.plugin("toy_plugin")
    assert record.ok and record.models == ["toy"] and record.datasets == ["toy_data"]
    assert record.hooks == ["register_datasets", "register_models"]


def test_unknown_name_lists_valid_names_and_nearest_match():
    registry = make_registry(toy_plugin())
    with pytest.raises(UnknownNameError) as info:
        registry.dataset("toy_dta")
    assert "did you mean 'toy_data'" in str(info.value)
    assert "valid: toy_data" in str(info.value)


def test_duplicate_names_refuse_only_the_later_plugins_claims_naming_both():
    @hookimpl
    def register_datasets(register):
        register(name="toy_data", description="same name")
        register(name="own_data", description="a name nobody else has")

    second = make_plugin("second", register_models, register_datasets)
    registry = make_registry(toy_plugin("first"), second)
    assert registry.plugin("first").ok and not registry.plugin("first").conflicts
    record = registry.plugin("second")
    # Two packages choosing the same name is nobody's bug: the rest of the plugin works.
    assert record.ok and record.models == [] and record.datasets == ["own_data"]
    assert registry.model("toy").plugin == "first"
    assert registry.dataset("toy_data").plugin == "first"
    assert registry.dataset("own_data").plugin == "second"
    model_conflict, data_conflict = record.conflicts
    assert model_conflict.startswith("model 'toy' refused: plugin 'first' (in memory)")
    assert data_conflict.startswith("dataset 'toy_data' refused: plugin 'first'")
    assert "MIXCORE_PLUGINS=second" in data_conflict


def test_name_registered_twice_by_one_plugin_breaks_it():
    @hookimpl
    def register_models(register):
        register(name="twice", description="d")
        register(name="other", description="d", aliases=["twice"])

    record = make_registry(make_plugin("careless", register_models)).plugin("careless")
    assert not record.ok and "'twice' is registered twice by this plugin" in record.reason


def test_duplicate_alias_across_plugins_drops_only_that_alias():
    @hookimpl
    def register_models(register):
        register(name="other", description="d", aliases=["toy/tiny", "other/tiny"])

    registry = make_registry(toy_plugin(), make_plugin("aliaser", register_models))
    record = registry.plugin("aliaser")
    assert record.ok and record.models == ["other"]
    assert registry.model("toy/tiny").name == "toy"
    assert registry.model("other/tiny").name == "other"
    assert registry.model("other").aliases == ("other/tiny",)
    [conflict] = record.conflicts
    assert "model alias 'toy/tiny' refused: plugin 'toy_plugin'" in conflict
    assert "get its model 'toy'" in conflict and "name it 'other'" in conflict


def test_misspelled_hook_is_reported_with_suggestion():
    @hookimpl
    def register_model(register):  # missing "s"
        pass

    registry = make_registry(make_plugin("typo", register_model), toy_plugin())
    reason = registry.plugin("typo").reason
    assert "unknown hook 'register_model'" in reason and "register_models" in reason
    assert registry.plugin("toy_plugin").ok


def test_wrong_hook_signature_is_reported():
    @hookimpl
    def load_model(model_name, path_to_weights):
        return None

    registry = make_registry(make_plugin("badsig", load_model))
    record = registry.plugin("badsig")
    assert not record.ok and "path_to_weights" in record.reason
    assert registry.pm.get_plugin("badsig") is None


def test_exception_in_contribution_hook_keeps_root_cause():
    @hookimpl
    def register_models(register):
        raise RuntimeError("weights index is corrupt")

    registry = make_registry(make_plugin("raiser", register_models), toy_plugin())
    record = registry.plugin("raiser")
    assert "register_models failed: RuntimeError: weights index is corrupt" in record.reason
    assert "Traceback" in record.detail
    assert registry.plugin("toy_plugin").ok


@pytest.mark.parametrize(
    "manifest, fragment",
    [
        (None, "defines no `manifest`"),
        ({"description": "x"}, "api_version"),
        ({"api_version": 2, "description": "x"}, "must be 1"),
        ({"api_version": 1, "description": "x", "colour": "red"}, "unknown key"),
    ],
)
def test_invalid_manifest_marks_plugin_broken(manifest, fragment):
    name, module = toy_plugin("bad_manifest")
    if manifest is None:
        del module.manifest
    else:
        module.manifest = manifest
    registry = make_registry((name, module))
    assert fragment in registry.plugin("bad_manifest").reason
    assert "toy" not in registry.models


@pytest.mark.parametrize(
    "fields, fragment",
    [
        ({"name": "Bad-Name", "description": "d"}, "does not match"),
        ({"name": "m", "description": "d", "nme": 1}, "did you mean 'name'"),
        (
            {"name": "m", "description": "d", "options_schema": {"type": "nonsense"}},
            "options_schema",
        ),
        ({"name": "m", "description": "d", "capabilities": {"flying": True}}, "flying"),
        ({"name": "m", "description": "d", "options_schema": {"f": object()}}, "JSON values"),
    ],
)
def test_invalid_model_entry_marks_plugin_broken(fields, fragment):
    @hookimpl
    def register_models(register):
        register(**fields)

    registry = make_registry(make_plugin("bad_entry", register_models))
    record = registry.plugin("bad_entry")
    assert not record.ok and fragment in record.reason
    assert not registry.models


def test_dataset_may_not_redefine_core_entry_fields():
    @hookimpl
    def register_datasets(register):
        register(
            name="d",
            description="d",
            options_schema={"type": "object", "properties": {"weight": {"type": "string"}}},
        )

    registry = make_registry(make_plugin("clash", register_datasets))
    assert "weight" in registry.plugin("clash").reason


def test_capability_claim_without_backing_hooks_is_refused():
    @hookimpl
    def register_models(register):
        register(name="m", description="d", capabilities={"lora": True})

    @hookimpl
    def load_model(model_name, source, options):
        return None

    registry = make_registry(make_plugin("boaster", register_models, load_model))
    reason = registry.plugin("boaster").reason
    assert "claims 'lora'" in reason and "preprocess_sample" in reason


def test_capability_claim_backed_by_hooks_is_accepted():
    @hookimpl
    def register_models(register):
        register(name="m", description="d", capabilities={"sft": True, "inference": True})

    @hookimpl
    def load_model(model_name, source, options):
        return None

    @hookimpl
    def preprocess_sample(model_name, sample, bundle, max_length):
        return None

    @hookimpl
    def generate(model_name, bundle, prompts, max_new_tokens):
        return None

    registry = make_registry(
        make_plugin("honest", register_models, load_model, preprocess_sample, generate)
    )
    assert registry.model("m").capabilities == {"sft": True, "inference": True}


def test_mixcore_plugins_restricts_and_reports_missing_names():
    registry = make_registry(
        toy_plugin("a"), toy_plugin("b"), environ={"MIXCORE_PLUGINS": "b, ghost"}
    )
    assert set(registry.plugins) == {"b", "ghost", "mixcore.defaults"}
    assert registry.plugin("b").ok
    assert "not installed" in registry.plugin("ghost").reason


def test_empty_mixcore_plugins_loads_none():
    registry = make_registry(toy_plugin(), environ={"MIXCORE_PLUGINS": ""})
    assert [p.name for p in registry.plugins.values() if not p.builtin] == []


def test_import_error_in_entry_module_marks_only_that_plugin_broken(tmp_path, monkeypatch):
    (tmp_path / "broken_pkg.py").write_text("import not_a_real_module_xyz\n")
    (tmp_path / "fine_pkg.py").write_text(
        textwrap.dedent(
            """
            from mixcore import hookimpl
            manifest = {"api_version": 1, "description": "fine"}

            @hookimpl
            def register_datasets(register):
                register(name="fine_data", description="fine")
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    eps = [
        EntryPointInfo("broken", "broken_pkg", "broken-dist", "1.0", str(tmp_path)),
        EntryPointInfo("fine", "fine_pkg", "fine-dist", "2.0", str(tmp_path)),
    ]
    registry = build_registry(entry_points=eps, environ={}, cache=VerdictCache(enabled=False))
    broken = registry.plugin("broken")
    assert broken.status == "broken"
    assert "ModuleNotFoundError" in broken.reason and "not_a_real_module_xyz" in broken.reason
    assert "broken_pkg.py:1" in broken.reason
    assert registry.plugin("fine").ok and registry.plugin("fine").version == "2.0"
    assert registry.dataset("fine_data").plugin == "fine"
    sys.modules.pop("fine_pkg", None)


def test_resolve_model_by_alias_explicit_name_and_checkpoint_model_type(tmp_path):
    registry = make_registry(toy_plugin())
    assert registry.resolve_model("toy/tiny").name == "toy"
    assert registry.resolve_model("/somewhere/else", explicit="toy").name == "toy"
    (tmp_path / "config.json").write_text('{"model_type": "toy_type"}')
    assert registry.resolve_model(str(tmp_path)).name == "toy"
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(PluginError, match="model_type 'llama'"):
        registry.resolve_model(str(tmp_path))
    with pytest.raises(UnknownNameError, match="did you mean 'toy/tiny'"):
        registry.resolve_model("toy/tinny")


def test_verdict_cache_skips_revalidation_but_never_caches_failures(tmp_path):
    cache = VerdictCache(tmp_path)
    build_registry([toy_plugin()], entry_points=False, environ={}, cache=cache)
    stored = (tmp_path / VerdictCache._FILE).read_text()
    assert len(stored) > 10

    @hookimpl
    def register_models(register):
        register(name="Bad Name", description="d")

    again = VerdictCache(tmp_path)
    registry = build_registry(
        [make_plugin("bad", register_models)], entry_points=False, environ={}, cache=again
    )
    assert not registry.plugin("bad").ok
    # Reloading from disk: the failing entry was not stored as valid.
    key = VerdictCache.key("model", entry_schema("model"), {"name": "Bad Name", "description": "d"})
    assert key not in VerdictCache(tmp_path)


def test_collision_between_third_party_entry_points_is_decided_by_name_whatever_the_path(
    tmp_path, monkeypatch
):
    for module, own in (("zeta_pkg", "zeta_data"), ("alpha_pkg", "alpha_data")):
        (tmp_path / f"{module}.py").write_text(
            textwrap.dedent(
                f"""
                from mixcore import hookimpl
                manifest = {{"api_version": 1, "description": "{module}"}}

                @hookimpl
                def register_datasets(register):
                    register(name="shared", description="both want it")
                    register(name="{own}", description="its own")
                """
            )
        )
    monkeypatch.syspath_prepend(str(tmp_path))
    zeta = EntryPointInfo("zeta", "zeta_pkg", "zeta-dist", "1.0", str(tmp_path))
    alpha = EntryPointInfo("alpha", "alpha_pkg", "alpha-dist", "2.0", str(tmp_path))
    for order in ([zeta, alpha], [alpha, zeta]):
        registry = build_registry(entry_points=order, environ={}, cache=VerdictCache(enabled=False))
        assert registry.dataset("shared").plugin == "alpha"
        assert registry.dataset("zeta_data").plugin == "zeta"
        [conflict] = registry.plugin("zeta").conflicts
        assert conflict.startswith(
            "dataset 'shared' refused: plugin 'alpha' (alpha-dist 2.0) already has it"
        )
        assert "leave 'alpha' out with MIXCORE_PLUGINS=zeta" in conflict
    for module in ("zeta_pkg", "alpha_pkg"):
        sys.modules.pop(module, None)


@pytest.mark.parametrize(
    "options_schema, fragment",
    [
        (
            {"type": "object", "properties": {"a": {"type": "string", "pattern": "[oops"}}},
            'options_schema.properties.a.pattern: "[oops" is not a valid regular expression',
        ),
        (
            {"type": "object", "patternProperties": {"(x": {"type": "string"}}},
            'options_schema.patternProperties: "(x" is not a valid regular expression',
        ),
        (
            {"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}},
            'options_schema.properties.a["$ref"]: "#/$defs/missing" does not resolve',
        ),
        (
            {"type": "object", "properties": {"a": {"$ref": "https://example.org/s.json"}}},
            '"https://example.org/s.json" does not resolve',
        ),
        ({"$id": "https://example.org/o.json", "type": "object"}, 'options_schema["$id"]: not'),
    ],
)
def test_option_schema_that_cannot_validate_is_refused_at_admission(options_schema, fragment):
    @hookimpl
    def register_datasets(register):
        register(name="d", description="d", options_schema=options_schema)

    registry = make_registry(make_plugin("bad_schema", register_datasets), toy_plugin())
    record = registry.plugin("bad_schema")
    assert not record.ok and fragment in record.reason, record.reason
    assert "d" not in registry.datasets and registry.plugin("toy_plugin").ok


def test_option_schema_with_local_refs_and_valid_patterns_is_accepted():
    schema = {
        "type": "object",
        "$defs": {"size": {"type": "integer", "minimum": 1}},
        "properties": {"a": {"$ref": "#/$defs/size"}, "b": {"type": "string", "pattern": "^x+$"}},
        "patternProperties": {"^extra_": {"type": "string"}},
    }

    @hookimpl
    def register_datasets(register):
        register(name="d", description="d", options_schema=schema)

    assert make_registry(make_plugin("fine", register_datasets)).plugin("fine").ok
