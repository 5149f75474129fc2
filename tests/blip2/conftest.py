"""BLIP-2 test fixtures: the Hugging Face reference built in its own torch venv."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def hf_blip2_reference(torch_reference: Path) -> Path:
    """Folder with ``opt/`` and ``t5/`` (HF checkpoints + reference.npz + facts.json), from the
    shared torch reference (tests/conftest.py)."""
    return torch_reference
