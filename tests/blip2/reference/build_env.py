"""Build (once per machine) the torch + transformers venv and the BLIP-2 reference.

The venv and the reference live under ``~/.cache/mixcore-torch-reference/<key>``, where
``<key>`` hashes ``requirements/torch-reference.txt`` and ``make_reference.py``: a change
to either builds afresh, otherwise the cached folder is returned at once.
``MIXCORE_TORCH_REFERENCE_CACHE`` moves the cache root.

``build_reference()`` never raises for an environment problem: it returns a
``Reference`` whose ``skip_reason`` says why it could not be built, for ``pytest.skip``.
Run as a script to build it by hand: ``python tests/blip2/reference/build_env.py``.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
REQUIREMENTS = REPO / "requirements" / "torch-reference.txt"
SCRIPT = HERE / "make_reference.py"
VARIANTS = ("opt", "t5")
INSTALL_TIMEOUT_S = 900
RUN_TIMEOUT_S = 300


@dataclass(frozen=True)
class Reference:
    """Where the reference lies (``folder/opt``, ``folder/t5``...), or why there is none."""

    folder: Path | None
    skip_reason: str | None = None


def cache_key() -> str:
    digest = hashlib.sha256()
    for path in (REQUIREMENTS, SCRIPT):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def cache_root() -> Path:
    override = os.environ.get("MIXCORE_TORCH_REFERENCE_CACHE")
    base = Path(override) if override else Path.home() / ".cache" / "mixcore-torch-reference"
    return base / cache_key()


def _complete(folder: Path) -> bool:
    return (folder / "manifest.json").is_file() and all(
        (folder / v / "reference.npz").is_file() for v in VARIANTS
    )


def _torch_pin() -> str:
    for line in REQUIREMENTS.read_text().splitlines():
        if line.strip().lower().startswith("torch=="):
            return line.strip()
    raise ValueError(f"{REQUIREMENTS} pins no torch==")


def _run(cmd: list[str], timeout: int, env: dict[str, str]) -> None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... timed out after {timeout} s") from exc
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-6:])
        raise RuntimeError(f"{' '.join(cmd[:4])} ... exited {proc.returncode}: {tail}")


def _build(root: Path) -> None:
    env = dict(os.environ)
    env.update(
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        PYTHONNOUSERSITE="1",
    )
    env.pop("PYTHONPATH", None)
    env.pop("VIRTUAL_ENV", None)
    venv = root / "venv"
    python = venv / "bin" / "python"
    if not (venv / "installed.ok").is_file():
        shutil.rmtree(venv, ignore_errors=True)
        _run([sys.executable, "-m", "venv", str(venv)], 120, env)
        pip = [str(python), "-m", "pip", "install", "--quiet"]
        # torch first, alone: pip then takes the local CPU wheel and the next step keeps it.
        _run([*pip, _torch_pin()], INSTALL_TIMEOUT_S, env)
        _run([*pip, "-r", str(REQUIREMENTS)], INSTALL_TIMEOUT_S, env)
        (venv / "installed.ok").write_text(REQUIREMENTS.read_text())
    tmp = Path(tempfile.mkdtemp(prefix="reference-", dir=root))
    try:
        _run([str(python), str(SCRIPT), str(tmp)], RUN_TIMEOUT_S, env)
        if not _complete(tmp):
            raise RuntimeError(f"{SCRIPT.name} finished but wrote no complete reference")
        final = root / "reference"
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def build_reference() -> Reference:
    """Return the cached reference, building the venv and the reference if needed."""
    try:
        root = cache_root()
        final = root / "reference"
        if _complete(final):
            return Reference(final)
        root.mkdir(parents=True, exist_ok=True)
        with open(root / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another test process may be building it
            if not _complete(final):
                _build(root)
        return Reference(final)
    except Exception as exc:  # any failure to build is a skip, with its cause
        return Reference(
            None, f"torch reference venv could not be built ({type(exc).__name__}): {exc}"
        )


if __name__ == "__main__":
    result = build_reference()
    print(result.folder if result.folder else result.skip_reason)
    sys.exit(0 if result.folder else 1)
