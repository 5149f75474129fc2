"""Shared fixtures. Tests build their data under tmp_path and never touch the user's cache."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _isolated_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # Tests must see every installed plugin and must not share the verdict cache with the user.
    monkeypatch.delenv("MIXCORE_PLUGINS", raising=False)
    monkeypatch.setenv("MIXCORE_CACHE_DIR", str(tmp_path_factory.mktemp("mixcore-cache")))
