"""`mixcore export` and `infer --engine paddle-inference` refuse what they cannot do, clearly.

Every refusal here exits 2 with one line saying why, before any weights are read, and leaves
the user's files as they were. (Exports that succeed are tested per model family:
tests/qwen_vl/test_qwen_vl_export.py, tests/blip2/test_blip2_export.py.)
"""

from __future__ import annotations

import json
from pathlib import Path

from mixcore import hookimpl
from mixcore.exported import MANIFEST_FILE, read_manifest
from mixcore.lora import LORA_BASE_FILE
from mixcore.testing import make_plugin, run_cli


def _export(*args: str):
    return run_cli(["export", *args], entry_points=True)


def test_a_model_without_the_deploy_capability_is_refused_with_the_reason(tmp_path):
    @hookimpl
    def register_models(register):
        register(name="plain", description="a model that does not export")

    @hookimpl
    def load_model(model_name, source, options):
        raise AssertionError("nothing is loaded for a model that cannot export")

    output = tmp_path / "out"
    result = run_cli(
        ["export", "--model", "plain", "--output", str(output)],
        plugins=[make_plugin("plainplugin", register_models, load_model)],
    )
    assert result.exit_code == 2, result.stderr
    assert "'plain'" in result.stderr and "cannot be exported" in result.stderr
    assert "docs/models.md" in result.stderr and "Traceback" not in result.stderr
    assert not output.exists()


def test_a_lora_adapter_folder_is_refused_with_the_hint_to_merge(tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / LORA_BASE_FILE).write_text(json.dumps({"model_name_or_path": "qwen_vl/tiny"}))
    result = _export("--model", str(adapter), "--output", str(tmp_path / "out"))
    assert result.exit_code == 2
    assert (
        "LoRA adapter" in result.stderr
        and "--lora" in result.stderr
        and "merge-lora" in result.stderr
    )


def test_an_output_folder_holding_other_files_is_never_written(tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    (output / "notes.txt").write_text("mine")
    for extra in ([], ["--overwrite"]):
        result = _export(
            "--model", "qwen_vl/tiny", "--model-options", '{"random_init": true}',
            "--output", str(output), *extra,
        )  # fmt: skip
        assert result.exit_code == 2, result.stderr
        assert "--output" in result.stderr and "Traceback" not in result.stderr
    assert "--overwrite" in _export("--model", "qwen_vl/tiny", "--output", str(output)).stderr
    assert "mixcore did not write" in result.stderr
    assert [p.name for p in output.iterdir()] == ["notes.txt"]
    assert (output / "notes.txt").read_text() == "mine"


def test_an_output_path_that_is_a_file_is_refused(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    result = _export("--model", "qwen_vl/tiny", "--output", str(target))
    assert result.exit_code == 2 and "not a folder" in result.stderr
    assert target.read_text() == "x"


def test_infer_with_the_paddle_inference_engine_needs_an_export_folder(tmp_path):
    result = run_cli(
        ["infer", "--engine", "paddle-inference", "--model", str(tmp_path), "--prompt", "hi"],
        entry_points=True,
    )
    assert result.exit_code == 2
    assert "not an exported model" in result.stderr and "mixcore export" in result.stderr


def test_an_export_with_a_missing_file_is_reported_incomplete(tmp_path):
    (tmp_path / "language").mkdir()
    (tmp_path / "language" / "model.json").write_text("{}")
    manifest = {
        "format": "mixcore-export/1",
        "model": "qwen_vl",
        "decoding": "causal",
        "parts": {"embed": {}, "vision": {}, "language": {}},
        "files": {"language/model.json": 2, "language/model.pdiparams": 10},
    }
    (tmp_path / MANIFEST_FILE).write_text(json.dumps(manifest))
    result = run_cli(
        ["infer", "--engine", "paddle-inference", "--model", str(tmp_path), "--prompt", "hi"],
        entry_points=True,
    )
    assert result.exit_code == 2
    assert "incomplete" in result.stderr and "language/model.pdiparams is missing" in result.stderr


def test_beam_search_lora_and_model_options_do_not_apply_to_an_export(tmp_path):
    base = ["infer", "--engine", "paddle-inference", "--model", str(tmp_path), "--prompt", "hi"]
    for extra, words in (
        (["--num-beams", "2"], "greedily"),
        (["--lora", str(tmp_path)], "--lora"),
        (["--model-options", "{}"], "--model-options"),
    ):
        result = run_cli([*base, *extra], entry_points=True)
        assert result.exit_code == 2 and words in result.stderr, (extra, result.stderr)


def test_the_dynamic_engine_points_an_export_folder_to_paddle_inference(tmp_path):
    (tmp_path / MANIFEST_FILE).write_text("{}")
    result = run_cli(["infer", "--model", str(tmp_path), "--prompt", "hi"], entry_points=True)
    assert result.exit_code == 2 and "--engine paddle-inference" in result.stderr


def test_read_manifest_refuses_a_folder_without_one(tmp_path):
    try:
        read_manifest(Path(tmp_path))
    except Exception as exc:
        assert type(exc).__name__ == "ExportFolderError" and "mixcore export" in str(exc)
    else:
        raise AssertionError("read_manifest accepted a folder without a manifest")


def test_the_export_length_defaults_to_the_models_limit_at_most_512():
    import pytest

    from mixcore.api import UsageError
    from mixcore.kit.nn.export import export_length

    assert export_length(None, 257, "max_sequence_length") == 257
    assert export_length(None, 2048, "seq_length") == 512
    assert export_length(None, None, "") == 512
    assert export_length(96, 257, "max_sequence_length") == 96
    with pytest.raises(UsageError, match="max_sequence_length"):
        export_length(300, 257, "max_sequence_length")


def _counting_plugin():
    """A deployable in-memory model whose language layer keeps Python state: tracing bakes
    in a different value than the dynamic call returns, the bug verification is for."""
    import paddle
    from paddle import nn

    from mixcore.api import ExportPart, ModelBundle, ModelExport, TensorSpec

    class Counting(nn.Layer):
        def __init__(self) -> None:
            super().__init__()
            self.head = nn.Linear(4, 6)
            self.calls = 0

        def forward(self, inputs_embeds):
            self.calls += 1
            return self.head(inputs_embeds) + float(self.calls)

    class Images(nn.Layer):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(3, 4)

        def forward(self, images):
            return self.proj(paddle.mean(images, axis=[2, 3])).unsqueeze(1).tile([1, 2, 1])

    @hookimpl
    def register_models(register):
        register(name="counting", description="d", capabilities={"deploy": True})

    @hookimpl
    def load_model(model_name, source, options):
        return ModelBundle(name="counting", model=Counting(), tokenizer=None)

    @hookimpl
    def export_model(model_name, bundle, folder, max_length):
        return ModelExport(
            parts=[
                ExportPart("embed", nn.Embedding(6, 4), (TensorSpec("input_ids", (1, None), "int64"),)),
                ExportPart("vision", Images(), (TensorSpec("images", (None, 3, 4, 4), "float32"),)),
                ExportPart("language", bundle.model, (TensorSpec("inputs_embeds", (1, 8, 4), "float32"),)),
            ],
            decoding="causal",
            image_token_id=None,
            tokens_per_image=2,
            stop_ids=(0,),
            vocab_size=6,
            max_length=8,
        )  # fmt: skip

    @hookimpl
    def load_processing(model_name, folder):
        return ModelBundle(name="counting", model=None, tokenizer=None)

    return make_plugin("counting", register_models, load_model, export_model, load_processing)


def test_a_part_whose_program_differs_from_the_model_is_caught_and_nothing_written(tmp_path):
    output = tmp_path / "out"
    args = ["export", "--model", "counting", "--output", str(output)]
    result = run_cli(args, plugins=[_counting_plugin()])
    assert result.exit_code == 1, result.stderr
    assert "language part differs from the model" in result.stderr
    assert list(tmp_path.iterdir()) == []  # no export, no staging folder
    unchecked = run_cli([*args, "--no-verify"], plugins=[_counting_plugin()])
    assert unchecked.exit_code == 0, unchecked.stderr
    assert set(read_manifest(output)["parts"]) == {"embed", "vision", "language"}
