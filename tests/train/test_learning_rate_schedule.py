"""PaddleMIX's schedule keys reach a real run: the logged learning rate warms up from
``warmup_start_lr`` and ends at ``eta_min`` (CosineDecayWithWarmup, as its BLIP-2 files ask)."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow


def test_a_run_warms_up_from_warmup_start_lr_and_ends_at_eta_min(
    run_mixcore, tmp_path, write_train_config
):
    config = write_train_config(
        max_steps=6,
        logging_steps=1,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        warmup_steps=2,
        lr_scheduler_name="CosineDecayWithWarmup",
        eta_min=1e-5,
        warmup_start_lr=1e-6,
    )
    trained = run_mixcore("train", "--config", str(config))
    assert trained.returncode == 0, trained.stderr[-3000:]
    history = json.loads((tmp_path / "out" / "log_history.json").read_text())
    # PaddleNLP logs the rate the next step will use: step 1 is halfway through the warmup.
    rates = {h["step"]: h["learning_rate"] for h in history if "learning_rate" in h}
    assert rates[1] == pytest.approx(1e-6 + (1e-3 - 1e-6) / 2)
    assert rates[2] == pytest.approx(1e-3)
    assert rates[6] == pytest.approx(1e-5)
    assert rates[3] > rates[4] > rates[5] > rates[6]
