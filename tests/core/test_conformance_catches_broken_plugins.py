"""The conformance kit fails a model that breaks the contract, naming the broken check.

Each broken model is the real tiny Qwen-VL with one thing wrong: a subclass of the qwen_vl
plugin under another name (so it registers a model of its own), given to the kit as the only
plugin.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import paddle
import pytest
from mixcore_qwen_vl.plugin import QwenVL
from PIL import Image

from mixcore.api.errors import UsageError
from mixcore.api.records import IMAGE_PLACEHOLDER, Message, Sample
from mixcore.testing import ConformanceFailure, check_model_conformance, conformance

#: The checks these tests run: the cheap ones (LoRA and training have their own qwen_vl test).
CHEAP = ["labels_shifted", "sample_length", "packed_equals_unpacked", "save_load_round_trip"]


@pytest.fixture
def samples(tmp_path):
    red = tmp_path / "red.png"
    Image.new("RGB", (40, 40), (220, 30, 30)).save(red)
    return [
        Sample(
            [Message("user", f"{IMAGE_PLACEHOLDER}\nWhat colour?"), Message("assistant", "red")],
            [red],
            index=0,
        ),
        Sample([Message("user", "Say hi."), Message("assistant", "hi there")], index=1),
    ]


def _check(plugin, samples, tmp_path, checks=CHEAP):
    return check_model_conformance(
        plugin.name,
        "qwen_vl/tiny",
        options={"random_init": True},
        samples=samples,
        workdir=tmp_path / "work",
        plugins=[plugin],
        checks=checks,
    )


def _assert_only_failed(report, *failed):
    verdicts = {c.name: c.passed for c in report.checks}
    assert verdicts == {name: name not in failed for name in verdicts}, str(report)
    with pytest.raises(ConformanceFailure) as caught:
        report.raise_for_failures()
    message = str(caught.value)
    for name in failed:
        assert f"- {name}: " in message
    for name in set(verdicts) - set(failed):
        assert f"- {name}: " not in message
    return message


class Unshifted(QwenVL):
    """Labels equal to the input ids, as a model that shifts inside its forward pass wants."""

    name = "qwen_vl_unshifted"

    def encode(self, sample, bundle, max_length):
        features = super().encode(sample, bundle, max_length)
        features["labels"] = features["input_ids"].copy()
        return features


def test_unshifted_labels_fail_labels_shifted_and_packing(samples, tmp_path):
    report = _check(Unshifted(), samples, tmp_path, CHEAP[:3])
    message = _assert_only_failed(report, "labels_shifted", "packed_equals_unpacked")
    assert "labels[-1] is" in message and "they are not shifted" in message
    assert "predict the next sample's first token" in report["packed_equals_unpacked"].message


class ShiftsAgain(QwenVL):
    """Shifted labels, and a model that shifts them once more for its loss (the Hugging Face
    habit): it trains each position on the token two ahead."""

    name = "qwen_vl_shifts_again"

    def load(self, source, options):
        bundle = super().load(source, options)
        model_class = type(bundle.model)

        class ShiftingModel(model_class):
            def forward(self, *args, labels=None, **kwargs):
                out = super().forward(*args, **{**kwargs, "return_dict": True})
                if labels is not None:
                    logits, targets = out["logits"][:, :-1].astype("float32"), labels[:, 1:]
                    summed = paddle.nn.functional.cross_entropy(
                        logits, targets.unsqueeze(-1), ignore_index=-100, reduction="sum"
                    )
                    out["loss"] = summed / (targets != -100).astype("float32").sum()
                return out

        bundle.model.__class__ = ShiftingModel
        return bundle


def test_a_model_that_shifts_the_labels_again_fails_labels_shifted(samples, tmp_path):
    report = _check(ShiftsAgain(), samples, tmp_path, CHEAP[:2])
    _assert_only_failed(report, "labels_shifted")
    assert "shifted once more" in report["labels_shifted"].message


class Leaky(QwenVL):
    """A collator that packs the way naive MIXToken does: a plain 2-D mask, positions running
    on through the pack, so each packed sample attends to the ones before it."""

    name = "qwen_vl_leaky"

    def collate(self, features, bundle):
        plain = [
            {k: v for k, v in f.items() if k not in ("segment_ids", "position_ids")}
            for f in features
        ]
        batch = super().collate(plain, bundle)
        assert batch["attention_mask"].ndim == 2
        return batch


def test_a_collator_that_leaks_across_packed_samples_fails_packing(samples, tmp_path):
    report = _check(Leaky(), samples, tmp_path, CHEAP[:3])
    _assert_only_failed(report, "packed_equals_unpacked")
    assert "block-diagonal" in report["packed_equals_unpacked"].message


class Miscounting(QwenVL):
    name = "qwen_vl_miscounting"

    def length(self, sample, bundle):
        return super().length(sample, bundle) + 1


def test_sample_length_off_by_one_fails_sample_length(samples, tmp_path):
    report = _check(Miscounting(), samples, tmp_path, CHEAP[:3])
    _assert_only_failed(report, "sample_length")
    assert "sample 0: sample_length gives" in report["sample_length"].message


class Forgetful(QwenVL):
    """Saves every weight but one."""

    name = "qwen_vl_forgetful"

    def save(self, bundle, folder):
        from safetensors.numpy import load_file, save_file

        super().save(bundle, folder)
        path = Path(folder) / "model.safetensors"
        arrays = load_file(str(path))
        del arrays["llm.qwen.ln_f.weight"]
        save_file(arrays, str(path), metadata={"format": "np"})
        return folder


class Perturbing(QwenVL):
    """Saves a weight that is not the model's."""

    name = "qwen_vl_perturbing"

    def save(self, bundle, folder):
        other = copy.deepcopy(bundle.model)
        weight = dict(other.named_parameters())["llm.qwen.ln_f.weight"]
        weight.set_value(weight + paddle.full(weight.shape, 0.01, dtype=weight.dtype))
        return super().save(replace(bundle, model=other), folder)


@pytest.mark.parametrize(
    ("plugin", "expected"),
    [(Forgetful(), "ln_f.weight"), (Perturbing(), "1 weight(s) changed: llm.qwen.ln_f.weight")],
    ids=["drops-a-weight", "saves-another-weight"],
)
def test_a_save_model_that_loses_weights_fails_the_round_trip(samples, tmp_path, plugin, expected):
    report = _check(plugin, samples, tmp_path, ["labels_shifted", "save_load_round_trip"])
    _assert_only_failed(report, "save_load_round_trip")
    assert expected in report["save_load_round_trip"].message


class Garbling(QwenVL):
    """Generates, then spoils the answer: no amount of training makes it right."""

    name = "qwen_vl_garbling"

    def answer(self, bundle, prompts, max_new_tokens):
        return [a[::-1] + "!" for a in super().answer(bundle, prompts, max_new_tokens)]


def test_a_model_whose_answers_never_match_fails_generation_learns(samples, tmp_path, monkeypatch):
    monkeypatch.setattr(conformance, "TRAIN_STEPS", 20)  # the right answer comes by step 20
    report = _check(Garbling(), samples, tmp_path, ["generation_learns"])
    _assert_only_failed(report, "generation_learns")
    assert "after 20 steps" in report["generation_learns"].message
    assert "expected its reply 'red'" in report["generation_learns"].message


class SftOnly(QwenVL):
    name = "qwen_vl_sft_only"
    capabilities = {"sft": True}  # noqa: RUF012


def test_checks_follow_the_claimed_capabilities(samples, tmp_path):
    report = _check(SftOnly(), samples, tmp_path, checks=None)
    report.raise_for_failures()
    assert report.names == ["labels_shifted", "sample_length", "save_load_round_trip"]
    assert set(report.skipped) == {
        "packed_equals_unpacked",
        "lora_merge_round_trip",
        "generation_learns",
        "tensor_parallel_split",
        "export_round_trip",
    }
    assert "does not claim 'packing'" in report.skipped["packed_equals_unpacked"]
    assert "does not claim 'deploy'" in report.skipped["export_round_trip"]


def test_unknown_checks_and_too_few_samples_are_usage_errors(samples, tmp_path):
    with pytest.raises(UsageError, match=r"unknown conformance check.*'packed'"):
        _check(QwenVL(), samples, tmp_path, checks=["packed"])
    with pytest.raises(UsageError, match="at least 2 samples"):
        _check(QwenVL(), samples[:1], tmp_path)


def test_a_model_that_does_not_load_fails_every_check(samples, tmp_path):
    report = check_model_conformance(
        "qwen_vl",
        "qwen_vl/tiny",
        options={},  # no random_init: the tiny preset has no weights to load
        samples=samples,
        workdir=tmp_path,
        plugins=[QwenVL()],
        checks=CHEAP[:2],
    )
    assert report.names == CHEAP[:2] and not any(c.passed for c in report.checks)
    assert all("the model did not load" in c.message for c in report.checks)


class HalfHeaded(QwenVL):
    """Its plan forgets that QWen's c_attn is [all q | all k | all v]: rank 0 would get all
    of q and half of k."""

    name = "qwen_vl_half_headed"

    def plan(self, bundle):
        return replace(super().plan(bundle), fused={})


def test_a_plan_that_cuts_fused_heads_wrong_fails_tensor_parallel_split(samples, tmp_path):
    report = _check(HalfHeaded(), samples, tmp_path, ["tensor_parallel_split"])
    _assert_only_failed(report, "tensor_parallel_split")
    message = report["tensor_parallel_split"].message
    assert "split for 2 ranks" in message and "off the full model's" in message
