"""BLIP-2 test fixtures: the Hugging Face reference built in its own torch venv."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest


def _load_build_env():
    path = Path(__file__).parent / "reference" / "build_env.py"
    spec = importlib.util.spec_from_file_location("mixcore_blip2_reference_build_env", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def hf_blip2_reference() -> Path:
    """Folder with ``opt/`` and ``t5/`` (HF checkpoints + reference.npz + facts.json).

    Built once per machine under ~/.cache/mixcore-torch-reference; the test is skipped,
    with the reason, where the torch + transformers venv cannot be built.
    """
    result = _load_build_env().build_reference()
    if result.folder is None:
        pytest.skip(result.skip_reason)
    return result.folder
