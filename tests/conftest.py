"""Shared fixtures. Tests build their data under tmp_path and never touch the user's cache."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(autouse=True)
def _isolated_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # Tests must see every installed plugin and must not share the verdict cache with the user.
    monkeypatch.delenv("MIXCORE_PLUGINS", raising=False)
    monkeypatch.setenv("MIXCORE_CACHE_DIR", str(tmp_path_factory.mktemp("mixcore-cache")))


def _run_mixcore(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 900
) -> subprocess.CompletedProcess:
    """Run the installed `mixcore` command in a subprocess, as a user would."""
    environ = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    environ.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "mixcore", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=environ,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def run_mixcore() -> Callable[..., subprocess.CompletedProcess]:
    """``run_mixcore("train", "--config", path)``: the real command in a subprocess."""
    return _run_mixcore


def _pip_install(source: Path, target: Path) -> None:
    # Built against the locked setuptools of this environment, not one fetched for the build.
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"),
            *("--no-deps", "--no-build-isolation", "--target", str(target), str(source)),
        ],
        check=True,
        capture_output=True,
    )


@pytest.fixture(scope="session")
def pip_install() -> Callable[[Path, Path], None]:
    """``pip_install(source, target)``: install a package folder for real into ``target``."""
    return _pip_install


def _write_png(path: Path, color: tuple[int, int, int] = (10, 20, 30), size: int = 4) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), color).save(path)
    return path


def _write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


@pytest.fixture
def write_png() -> Callable[..., Path]:
    """Write a small solid-colour PNG and return its path."""
    return _write_png


@pytest.fixture
def write_json() -> Callable[[Path, Any], Path]:
    """Write ``data`` as JSON and return the path."""
    return _write_json


def _png_claiming_size(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose header claims ``width`` x ``height`` (CRC fixed up)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    ihdr = bytearray(data[12:29])  # b"IHDR" + 13 bytes of header fields
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(data)


@pytest.fixture
def png_claiming_size() -> Callable[[int, int], bytes]:
    """Bytes of a tiny PNG whose header claims a huge size: a decompression-bomb stand-in."""
    return _png_claiming_size


def _install_plugin_module(site: Path, name: str, source: str) -> Path:
    """Make ``source`` an installed plugin for subprocesses run with ``PYTHONPATH=site``.

    Writes the module ``mixcore_test_<name>`` and a ``.dist-info`` declaring it in the
    ``mixcore.plugins`` entry-point group, exactly what ``pip install`` leaves, without a build.
    """
    site.mkdir(parents=True, exist_ok=True)
    module = f"mixcore_test_{name}"
    (site / f"{module}.py").write_text(source, encoding="utf-8")
    info = site / f"{module}-0.1.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n", encoding="utf-8"
    )
    (info / "entry_points.txt").write_text(
        f"[mixcore.plugins]\n{name} = {module}\n", encoding="utf-8"
    )
    return site


@pytest.fixture(scope="session")
def install_plugin_module() -> Callable[[Path, str, str], Path]:
    """``install_plugin_module(site, name, source)``: a real entry-point plugin on ``site``."""
    return _install_plugin_module


def _load_torch_reference_builder():
    import importlib.util

    path = Path(__file__).parent / "blip2" / "reference" / "build_env.py"
    spec = importlib.util.spec_from_file_location("mixcore_blip2_reference_build_env", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def torch_reference() -> Path:
    """The torch + transformers reference folder (``opt/`` and ``t5/`` BLIP-2 checkpoints with
    their outputs; the venv beside it at ``.parent / "venv"``), built once per machine under
    ~/.cache/mixcore-torch-reference. Tests that use it are skipped, with the reason, where the
    venv cannot be built."""
    result = _load_torch_reference_builder().build_reference()
    if result.folder is None:
        pytest.skip(result.skip_reason)
    return result.folder


@pytest.fixture(scope="session")
def torch_python(torch_reference: Path) -> Path:
    """The Python of the torch reference venv (real PyTorch on the CPU)."""
    return torch_reference.parent / "venv" / "bin" / "python"
