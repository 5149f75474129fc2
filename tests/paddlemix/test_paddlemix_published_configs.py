"""Every config PaddleMIX publishes for the three models mixcore ships (qwen_vl, blip2,
visualglm: seven files) validates against the installed plugins with only its data paths made
local and its model name pointed at a checkpoint folder of that model on disk.

The published files themselves, and how each of their keys maps, are held by
``tests/core/test_paddlemix_{qwen_vl,blip2,visualglm}_configs.py``; this module only gathers
them. These seven are every config PaddleMIX publishes for the three models (its
``paddlemix/config/{qwen_vl,blip2,visualglm}/``, the same files on develop, release/2.0 and
release/2.1 at the commit read, 6afaf05); each held copy was compared with the published file
key for key when it was added. A model's folder is the plugin's tiny preset saved the way a download of the published
checkpoint would sit on disk.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from mixcore.config import validate_config
from mixcore.config.parallel_checks import paddle_build
from mixcore.registry import build_registry

_CORE = Path(__file__).resolve().parents[1] / "core"


def _module(model: str):
    path = _CORE / f"test_paddlemix_{model}_configs.py"
    spec = importlib.util.spec_from_file_location(f"paddlemix_{model}_gathered", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


QWEN_VL, BLIP2, VISUALGLM = (_module(m) for m in ("qwen_vl", "blip2", "visualglm"))

#: (model plugin, module holding the file, the file's name in PaddleMIX, the config).
PUBLISHED = [
    ("qwen_vl", QWEN_VL, "qwen_vl/sft_argument.json", QWEN_VL.QWEN_VL_SFT),
    ("qwen_vl", QWEN_VL, "qwen_vl/sft_argument_stage2.json", QWEN_VL.QWEN_VL_SFT_STAGE2),
    ("qwen_vl", QWEN_VL, "qwen_vl/lora_sft_argument.json", QWEN_VL.QWEN_VL_LORA),
    ("blip2", BLIP2, "blip2/sft_argument.json", BLIP2.BLIP2_SFT),
    ("blip2", BLIP2, "blip2/lora_sft_argument.json", BLIP2.BLIP2_LORA),
    ("visualglm", VISUALGLM, "visualglm/sft_argument.json", VISUALGLM.VISUALGLM_SFT),
    ("visualglm", VISUALGLM, "visualglm/lora_sft_argument.json", VISUALGLM.VISUALGLM_LORA),
]

#: What each model cannot do of what its published files ask (its documented capability
#: limits): none.
CAPABILITY_LIMITS: dict[str, set[tuple[str, str]]] = {}
#: How validation starts to say, on a machine without GPUs, that stage2 over ranks needs them.
GPU_NEEDS = "sharding stage2 needs GPUs"


@pytest.fixture(scope="module")
def registry():
    return build_registry()


@pytest.fixture(scope="module")
def downloaded_folders(registry, tmp_path_factory) -> dict[str, Path]:
    """Each model's tiny preset saved as a download of its published checkpoint sits on disk."""
    folders = {}
    for model in ("qwen_vl", "blip2", "visualglm"):
        bundle = registry.hook.load_model(
            model_name=model, source=f"{model}/tiny", options={"random_init": True}
        )
        folder = tmp_path_factory.mktemp(model)
        registry.hook.save_model(model_name=model, bundle=bundle, folder=str(folder))
        folders[model] = folder
    # The BLIP-2 PaddleMIX publishes is built on OPT-2.7b, which its files name as the tokenizer.
    config_file = folders["blip2"] / "config.json"
    config = json.loads(config_file.read_text())
    config["text_config"]["_name_or_path"] = "facebook/opt-2.7b"
    config_file.write_text(json.dumps(config))
    return folders


def test_all_seven_published_files_are_here() -> None:
    assert len(PUBLISHED) == 7 == len({name for _, _, name, _ in PUBLISHED})


@pytest.mark.parametrize(
    ("model", "module", "name", "published"), PUBLISHED, ids=[p[2] for p in PUBLISHED]
)
def test_published_config_validates_with_only_its_data_paths_changed(
    registry, downloaded_folders, tmp_path, model: str, module: Any, name: str, published
) -> None:
    config = module.local(published, tmp_path)
    changed = {k for k in config if config[k] != published[k]} - {"dataset"}
    assert changed == set(), changed  # local() moves data only
    config["model_name_or_path"] = str(downloaded_folders[model])
    issues = validate_config(config, registry, base_dir=tmp_path, world_size=8)
    # A published stage2 config over 8 ranks needs GPUs; a CPU build of Paddle says so.
    gpu = {i for i in issues if i.message.startswith(GPU_NEEDS)}
    assert {(i.path, i.message) for i in issues if i not in gpu} == CAPABILITY_LIMITS.get(
        name, set()
    )
    stage2 = "stage2" in str(config.get("sharding", ""))
    assert [i.path for i in gpu] == (["$.sharding"] if stage2 and paddle_build() == "cpu" else [])


@pytest.mark.parametrize(
    ("model", "module", "name", "published"), PUBLISHED, ids=[p[2] for p in PUBLISHED]
)
def test_published_config_dry_runs_on_any_machine(
    downloaded_folders, tmp_path, model: str, module: Any, name: str, published
) -> None:
    """``train --dry-run`` checks the data, not the devices: the published bf16/fp16 settings
    are noted on a CPU build, never a reason to stop."""
    from PIL import Image

    from mixcore.testing import run_cli

    config = module.local(published, tmp_path)
    for image in (tmp_path / "images").glob("*.jpg"):  # BLIP-2's stand-in images, made real
        Image.new("RGB", (8, 8), (20, 120, 200)).save(image, format="JPEG")
    config["model_name_or_path"] = str(downloaded_folders[model])
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    result = run_cli(["train", "--config", str(path), "--dry-run"], entry_points=True)
    assert result.exit_code == 0, result.stderr[-2000:]
    assert "dry run: every sample checked" in result.stdout
