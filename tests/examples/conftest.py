"""The tiny LLaVA example model plugin, pip-installed for real once per session."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY_LLAVA = ROOT / "examples" / "mixcore-tiny-llava"


@pytest.fixture(scope="session")
def tiny_llava_site(tmp_path_factory: pytest.TempPathFactory, pip_install) -> Path:
    """A folder holding the installed ``mixcore-tiny-llava`` distribution (put it on
    ``PYTHONPATH`` for a subprocess)."""
    target = tmp_path_factory.mktemp("tiny-llava-site")
    pip_install(TINY_LLAVA, target)
    return target


@pytest.fixture
def tiny_llava(tiny_llava_site: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The installed plugin object, imported in this process. Its folder is on ``sys.path`` for
    this test only, so no other test's registry discovers it."""
    monkeypatch.syspath_prepend(str(tiny_llava_site))
    from mixcore_tiny_llava.plugin import plugin

    return plugin


@pytest.fixture
def picture(tmp_path: Path):
    """``picture(name, colour)``: a 20x20 PNG of one colour in ``tmp_path``."""
    from PIL import Image

    def draw(name: str, colour: tuple[int, int, int]) -> Path:
        path = tmp_path / f"{name}.png"
        Image.new("RGB", (20, 20), colour).save(path)
        return path

    return draw
