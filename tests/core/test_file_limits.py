"""Data files, chat templates and images must be regular files (data files under a size cap):
a pipe, a device, a symlink to one, or a folder is refused at once, naming the path, never read."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mixcore.api.errors import DataError
from mixcore.kit.files import ENV_MAX_DATA_FILE_MB, read_json
from mixcore.kit.images import load_image, resolve_image
from mixcore.kit.templates import MAX_TEMPLATE_FILE_BYTES, resolve_chat_template
from mixcore.testing import make_registry, run_cli, write_config

#: Seconds a refusal may take; reading a pipe blocks forever, /dev/zero never ends.
QUICK = 10


def quickly(call: Callable[[], Any]) -> BaseException | None:
    """Run ``call`` in a daemon thread; the exception it raised. Fails if it does not return."""
    outcome: list[BaseException | None] = []

    def target() -> None:
        try:
            call()
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(QUICK)
    assert outcome, f"still running after {QUICK} s (blocked or reading forever)"
    return outcome[0]


@pytest.fixture
def fifo(tmp_path: Path):
    path = tmp_path / "data" / "train.json"
    path.parent.mkdir()
    os.mkfifo(path)
    yield path
    # Unblock a reader that wrongly opened it (its thread is a daemon, but be tidy).
    fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK) if _has_reader(path) else None
    if fd is not None:
        os.close(fd)


def _has_reader(path: Path) -> bool:
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        return True
    except OSError:
        return False


def special_files(tmp_path: Path, fifo: Path) -> dict[str, tuple[Path, str]]:
    (tmp_path / "folder.json").mkdir()
    (tmp_path / "zero.json").symlink_to("/dev/zero")
    return {
        "fifo": (fifo, "is a named pipe (FIFO), not a regular file"),
        "device": (Path("/dev/zero"), "is a character device, not a regular file"),
        "symlink to a device": (
            tmp_path / "zero.json",
            "is a character device (a symlink to /dev/zero), not a regular file",
        ),
        "directory": (tmp_path / "folder.json", "is a directory, expected a file"),
    }


@pytest.mark.parametrize("kind", ["fifo", "device", "symlink to a device", "directory"])
def test_special_data_files_are_refused_at_read_time(tmp_path, fifo, kind):
    path, reason = special_files(tmp_path, fifo)[kind]
    error = quickly(lambda: read_json(path, "data file"))
    assert isinstance(error, DataError)
    assert str(error) == f"{path}: data file {reason}"


@pytest.mark.parametrize("kind", ["fifo", "device", "symlink to a device", "directory"])
def test_special_chat_template_files_are_refused(tmp_path, fifo, kind):
    path, reason = special_files(tmp_path, fifo)[kind]
    jinja = tmp_path / "template.jinja"  # read as one Jinja template, not as JSON
    jinja.symlink_to(path)
    for name in (path, jinja):
        error = quickly(lambda n=name: resolve_chat_template(str(n), base_dir=tmp_path))
        assert isinstance(error, DataError)
        assert str(error).startswith(f"{name}: chat template file ")
        assert reason.split(",")[0].split(" (")[0] in str(error)


@pytest.mark.parametrize("kind", ["fifo", "device", "symlink to a device", "directory"])
def test_special_data_files_fail_validation_naming_the_path(tmp_path, fifo, kind):
    path, reason = special_files(tmp_path, fifo)[kind]
    config = write_config(
        tmp_path,
        {
            "model_name_or_path": "qwen_vl/tiny",
            "model_options": {"random_init": True},
            "dataset": {"train": [{"name": "chatml_dataset", "data_files": str(path)}]},
            "output_dir": "out",
        },
    )
    result = quickly_cli(["validate", "--json", "--config", str(config)])
    assert result.exit_code == 2
    [issue] = result.json()["issues"]
    assert issue == {"path": "$.dataset.train[0].data_files", "message": f"{path} {reason}"}


def quickly_cli(argv: list[str]):
    results = []
    assert quickly(lambda: results.append(run_cli(argv, entry_points=True))) is None
    return results[0]


def test_data_file_above_the_cap_is_refused_naming_the_limit(tmp_path, monkeypatch):
    path = tmp_path / "big.json"
    path.write_text(json.dumps(["x" * 3000]))
    monkeypatch.setenv(ENV_MAX_DATA_FILE_MB, "0.002")  # 2,097 bytes
    with pytest.raises(DataError) as info:
        read_json(path, "data file")
    assert str(info.value) == (
        f"{path}: data file is 3,004 bytes, above the limit of 2,097 bytes for a file read into "
        f"memory; split the file, or raise the limit with {ENV_MAX_DATA_FILE_MB}"
    )
    monkeypatch.setenv(ENV_MAX_DATA_FILE_MB, "1")
    assert read_json(path, "data file") == ["x" * 3000]


def test_validation_refuses_a_data_file_above_the_cap(tmp_path, monkeypatch):
    (tmp_path / "train.json").write_text("[" + " " * 4000 + "]")
    config = {
        "model_name_or_path": "qwen_vl/tiny",
        "model_options": {"random_init": True},
        "dataset": {"train": [{"name": "chatml_dataset", "data_files": "train.json"}]},
        "output_dir": "out",
    }
    from mixcore.config import validate_config

    registry = make_registry(entry_points=True)
    assert validate_config(config, registry, base_dir=tmp_path) == []
    monkeypatch.setenv(ENV_MAX_DATA_FILE_MB, "0.001")
    [issue] = validate_config(config, registry, base_dir=tmp_path)
    assert "train.json is 4,002 bytes, above the limit of 1,048 bytes" in issue.message


def test_chat_template_file_above_its_cap_is_refused(tmp_path):
    path = tmp_path / "huge.jinja"
    path.write_text("{{ messages }}" + " " * MAX_TEMPLATE_FILE_BYTES)
    with pytest.raises(DataError, match=r"huge\.jinja: chat template file is 1\.0 MiB, above the"):
        resolve_chat_template("huge.jinja", base_dir=tmp_path)


def test_images_that_are_pipes_or_devices_are_refused(tmp_path, fifo):
    image = fifo.with_name("image.png")
    os.mkfifo(image)
    for path in (image, Path("/dev/zero")):
        error = quickly(lambda p=path: load_image(p, source="train.json", index=0))
        assert isinstance(error, DataError)
        assert f"image {path}: file is a " in str(error) and "not a regular file" in str(error)
    error = quickly(lambda: resolve_image(fifo.parent, "image.png", source="train.json", index=0))
    assert isinstance(error, DataError) and "not a regular file" in str(error)
