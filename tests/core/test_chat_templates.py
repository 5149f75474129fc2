"""Chat templates (PaddleNLP form, Hugging Face Jinja form, ChatML default) render labelled
segments; the chat_template option is told apart and checked when it is loaded."""

from __future__ import annotations

import json

import pytest

from mixcore.api.errors import DataError
from mixcore.api.records import Message
from mixcore.kit.templates import (
    is_jinja_template,
    load_chat_template,
    render_chatml_segments,
    render_jinja_segments,
    render_segments,
    resolve_chat_template,
    validate_chat_template,
    validate_jinja_template,
)

TEMPLATE = {
    "system": "{% if is_training %}[train]{% endif %}SYS\n",
    "conversation": [
        "{% if is_first %}<first>{% endif %}U{{index}}: {{user}}\n",
        "B{{index}}: {{bot}}{% if is_last %}<last>{% endif %}\n",
    ],
    "query": "Q{{index}}/{{length}}: {{query}}\nB:",
}

TWO_TURNS = [
    Message("user", "a"),
    Message("assistant", "x"),
    Message("user", "b"),
    Message("assistant", "y"),
]


# --- loading ---------------------------------------------------------------------------------


def test_load_normalises_absent_keys_to_none(tmp_path):
    path = tmp_path / "chat_template.json"
    path.write_text(json.dumps({"conversation": ["{{user}}", "{{bot}}"]}))
    assert load_chat_template(path) == {
        "system": None,
        "conversation": ["{{user}}", "{{bot}}"],
        "query": None,
    }


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("[1, 2]", "must be a JSON object"),
        ("{}", "defines none of"),
        (
            '{"conversations": ["a", "b"]}',
            "unknown key 'conversations' (did you mean 'conversation'?)",
        ),
        ('{"conversation": ["{{user}}"]}', "key 'conversation' must be a list of two strings"),
        ('{"conversation": ["{{user}}", 3]}', "key 'conversation' must be a list of two strings"),
        ('{"system": 5}', "key 'system' must be a string"),
        ('{"query": ["q"]}', "key 'query' must be a string"),
        (
            '{"conversation": ["{{user}}", "{% if bot %}{{bot}}"]}',
            "key 'conversation[1]': template syntax error at line 1",
        ),
        ('{"system": "a\\n{{ oops( }}"}', "key 'system': template syntax error at line 2"),
        ("{not json", "invalid JSON at line 1 column 2"),
    ],
)
def test_invalid_templates_name_the_file_and_the_key(tmp_path, content, reason):
    path = tmp_path / "my_template.json"
    path.write_text(content)
    with pytest.raises(DataError) as excinfo:
        load_chat_template(path)
    assert str(excinfo.value).startswith(f"{path}: ")
    assert reason in str(excinfo.value)


def test_missing_template_file(tmp_path):
    with pytest.raises(DataError, match=r"nope\.json: chat template file not found"):
        load_chat_template(tmp_path / "nope.json")


# --- PaddleNLP semantics ---------------------------------------------------------------------


def test_training_conversation_labels_only_the_rendered_bot_parts():
    assert render_segments(TEMPLATE, TWO_TURNS) == [
        ("[train]SYS\n", False),
        ("<first>U0: a\n", False),
        # trim_blocks (as in PaddleNLP) eats the newline right after ``{% endif %}``.
        ("B0: x", True),
        ("U1: b\n", False),
        ("B1: y<last>", True),
    ]


def test_prompt_renders_history_then_the_query_template():
    segments = render_segments(TEMPLATE, TWO_TURNS[:3])
    assert "".join(text for text, _ in segments) == "SYS\n<first>U0: a\nB0: xQ1/2: b\nB:"
    assert [trainable for _, trainable in segments] == [False, False, True, False]


def test_prompt_without_query_template_appends_the_user_text_verbatim():
    template = {"conversation": ["<u>{{user}}", "<b>{{bot}}"]}
    assert render_segments(template, [Message("user", "hi <image>")]) == [("hi <image>", False)]


def test_blocks_trim_newlines_and_leading_spaces_like_paddlenlp():
    template = {"conversation": ["  {% if is_first %}\nStart {% endif %}{{user}}", "{{bot}}"]}
    assert render_segments(template, TWO_TURNS[:2])[0] == ("Start a", False)


def test_context_values_reach_every_template():
    template = {"system": "{{lang}}|", "conversation": ["{{user}}", "{{bot}}{{lang}}"]}
    segments = render_segments(template, TWO_TURNS[:2], context={"lang": "zh"})
    assert segments == [("zh|", False), ("a", False), ("xzh", True)]


def test_record_system_message_is_offered_as_the_system_variable():
    template = {"system": "<s>{{system}}</s>", "conversation": ["{{user}}", "{{bot}}"]}
    messages = [Message("system", "Be brief."), *TWO_TURNS[:2]]
    assert render_segments(template, messages)[0] == ("<s>Be brief.</s>", False)


def test_record_system_message_needs_a_template_that_uses_it():
    messages = [Message("system", "Be brief."), *TWO_TURNS[:2]]
    with pytest.raises(DataError) as excinfo:
        render_segments(TEMPLATE, messages, source="train.json", index=2)
    assert str(excinfo.value).startswith("train.json record 2: ")
    assert "{{system}}" in str(excinfo.value)


def test_answered_turns_need_a_conversation_entry():
    with pytest.raises(DataError, match="no 'conversation' entry"):
        render_segments({"query": "{{query}}"}, TWO_TURNS[:2], source="t.json", index=0)


@pytest.mark.parametrize(
    ("template", "reason"),
    [
        ({"conversation": ["{{ raise_exception('bad turn') }}", "{{bot}}"]}, "bad turn"),
        ({"conversation": ["{{ user.__class__.__mro__ }}", "{{bot}}"]}, "unsafe"),
    ],
)
def test_template_errors_and_sandbox_violations_are_located(template, reason):
    with pytest.raises(DataError) as excinfo:
        render_segments(template, TWO_TURNS[:2], source="train.json", index=5)
    assert str(excinfo.value).startswith("train.json record 5: chat template failed to render")
    assert reason in str(excinfo.value)


@pytest.mark.parametrize(
    "messages",
    [
        [Message("assistant", "x")],
        [Message("user", "a"), Message("user", "b"), Message("assistant", "x")],
        [Message("user", "a"), Message("assistant", "x"), Message("assistant", "y")],
        [Message("system", "s")],
    ],
)
@pytest.mark.parametrize("template", [TEMPLATE, None])
def test_message_order_is_checked(messages, template):
    with pytest.raises(DataError, match=r"^train\.json record 1: "):
        render_segments(template, messages, source="train.json", index=1)


def test_validate_accepts_a_dict_from_a_config():
    assert validate_chat_template({"query": "{{query}}"})["conversation"] is None


# --- ChatML default --------------------------------------------------------------------------


def test_chatml_trains_on_each_reply_and_its_end_token():
    assert render_chatml_segments(TWO_TURNS) == [
        (
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
            "<|im_start|>user\na<|im_end|>\n<|im_start|>assistant\n",
            False,
        ),
        ("x<|im_end|>", True),
        ("\n<|im_start|>user\nb<|im_end|>\n<|im_start|>assistant\n", False),
        ("y<|im_end|>", True),
    ]


def test_chatml_prompt_ends_with_the_open_assistant_header():
    segments = render_chatml_segments(TWO_TURNS[:3], system=None)
    text = "".join(t for t, _ in segments)
    assert text == (
        "<|im_start|>user\na<|im_end|>\n<|im_start|>assistant\nx<|im_end|>"
        "\n<|im_start|>user\nb<|im_end|>\n<|im_start|>assistant\n"
    )


def test_chatml_record_system_message_replaces_the_default():
    messages = [Message("system", "Be brief."), *TWO_TURNS[:2]]
    first, _ = render_chatml_segments(messages)[0]
    assert first.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n")


def test_no_template_means_chatml():
    assert render_segments(None, TWO_TURNS) == render_chatml_segments(TWO_TURNS)


# --- the chat_template option: path, inline object or inline Jinja --------------------------

#: Qwen's ChatML written as a Hugging Face-style template (separator before each turn, so that the
#: newline after a reply's <|im_end|> is context, exactly as render_chatml_segments labels it).
QWEN_JINJA = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}"
    "{% endif %}"
    "{% if not loop.first %}{{ '\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '\n<|im_start|>assistant\n' }}{% endif %}"
)


def test_strings_with_jinja_markers_are_templates_and_others_paths():
    assert is_jinja_template("{{ messages }}") and is_jinja_template("{% for m in messages %}")
    assert not is_jinja_template("templates/chat_template.json")
    assert not is_jinja_template("{single}.json")


def test_resolve_reads_a_template_file_relative_to_the_config_folder(tmp_path):
    (tmp_path / "tpl").mkdir()
    (tmp_path / "tpl" / "chat_template.json").write_text(json.dumps({"query": "{{query}}"}))
    template = resolve_chat_template("tpl/chat_template.json", base_dir=tmp_path)
    assert template == {"system": None, "conversation": None, "query": "{{query}}"}


def test_resolve_reads_a_jinja_file_as_one_template(tmp_path):
    (tmp_path / "qwen.jinja").write_text(QWEN_JINJA, encoding="utf-8")
    assert resolve_chat_template("qwen.jinja", base_dir=tmp_path) == QWEN_JINJA


def test_resolve_accepts_an_inline_paddlenlp_object(tmp_path):
    template = resolve_chat_template({"conversation": ["{{user}}", "{{bot}}"]}, base_dir=tmp_path)
    assert template["conversation"] == ["{{user}}", "{{bot}}"] and template["query"] is None


def test_resolve_accepts_an_inline_jinja_string(tmp_path):
    assert resolve_chat_template(QWEN_JINJA, base_dir=tmp_path) == QWEN_JINJA


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("{% for m in messages %}{{ m.content }}", "Jinja chat template syntax error at line 1"),
        ("a\n{{ messages[0] }\n", "Jinja chat template syntax error at line 2"),
        ("{{ bos_token }}hello", "never uses 'messages'"),
        ({"conversations": ["a", "b"]}, "did you mean 'conversation'?"),
        (5, "must be a file path, a Jinja template string or a JSON object"),
        ("", "must be a file path"),
    ],
)
def test_bad_inline_templates_name_the_config_option(tmp_path, value, reason):
    source = "dataset vqa#0 option chat_template"
    with pytest.raises(DataError) as excinfo:
        resolve_chat_template(value, base_dir=tmp_path, source=source)
    assert str(excinfo.value).startswith(f"{source}: ")
    assert reason in str(excinfo.value)


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("missing.json", None, "chat template file not found"),
        ("missing.jinja", None, "chat template file not found"),
        ("bad.jinja", "{% if %}", "Jinja chat template syntax error"),
        ("latin.jinja", "caf\u00e9 {{ messages }}".encode("latin-1"), "not UTF-8 text"),
    ],
)
def test_bad_template_files_name_the_file(tmp_path, name, content, reason):
    path = tmp_path / name
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError) as excinfo:
        resolve_chat_template(name, base_dir=tmp_path)
    assert str(excinfo.value).startswith(f"{path}: ")
    assert reason in str(excinfo.value)


def test_validate_jinja_returns_a_good_template_unchanged():
    assert validate_jinja_template(QWEN_JINJA) == QWEN_JINJA


# --- Hugging Face-style Jinja templates ------------------------------------------------------


def test_qwen_style_jinja_template_labels_exactly_like_chatml():
    messages = [Message("system", "Be brief."), *TWO_TURNS]
    for conversation in (TWO_TURNS, TWO_TURNS[:2], messages, TWO_TURNS[:3], TWO_TURNS[:1]):
        expected = render_chatml_segments(conversation)
        assert render_segments(QWEN_JINJA, conversation) == expected
        assert render_jinja_segments(QWEN_JINJA, conversation) == expected


def test_reply_and_what_closes_it_are_trainable_and_the_header_is_not():
    template = (
        "{% for m in messages %}<{{ m.role }}>{{ m.content }}</{{ m.role }}>{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    assert render_segments(template, TWO_TURNS) == [
        ("<user>a</user><assistant>", False),
        ("x</assistant>", True),
        ("<user>b</user><assistant>", False),
        ("y</assistant>", True),
    ]


def test_jinja_prompt_ends_with_the_generation_header():
    template = (
        "{% for m in messages %}{% if m.role == 'assistant' %}A:{% endif %}{{ m.content }};"
        "{% endfor %}{% if add_generation_prompt %}A:{% endif %}"
    )
    assert render_segments(template, TWO_TURNS[:3]) == [
        ("a;A:", False),
        ("x;", True),
        ("b;A:", False),
    ]


def test_bos_and_eos_tokens_are_empty_unless_given_in_the_context():
    template = (
        "{{ bos_token }}{% for m in messages %}{{ m.content }}"
        "{% if m.role == 'assistant' %}{{ eos_token }}{% endif %}{% endfor %}"
    )
    assert render_segments(template, TWO_TURNS[:2]) == [("a", False), ("x", True)]
    context = {"bos_token": "<s>", "eos_token": "</s>"}
    assert render_segments(template, TWO_TURNS[:2], context=context) == [
        ("<s>a", False),
        ("x</s>", True),
    ]


def test_jinja_templates_get_loop_controls_and_a_non_ascii_tojson():
    template = (
        "{% for m in messages %}{% if m.role == 'system' %}{% continue %}{% endif %}"
        "{{ m.content | tojson }}{% endfor %}"
    )
    messages = [Message("system", "s"), Message("user", "你好"), Message("assistant", "ok")]
    assert render_segments(template, messages) == [('"你好"', False), ('"ok"', True)]


def test_template_that_rewrites_earlier_turns_is_refused_as_not_prefix_stable():
    # Marks the last message, as templates that treat the final turn specially do.
    template = (
        "{% for m in messages %}{% if loop.last %}[last]{% endif %}{{ m.content }}|{% endfor %}"
    )
    with pytest.raises(DataError) as excinfo:
        render_segments(template, TWO_TURNS, source="train.json", index=3)
    message = str(excinfo.value)
    assert message.startswith("train.json record 3: the Jinja chat template is not prefix-stable")
    assert "adding reply message 1 rewrites the text before it" in message
    assert "differ from character 0" in message


def test_a_template_that_is_not_prefix_stable_is_refused_when_loaded():
    template = (
        "{% for m in messages %}{% if loop.last %}[last]{% endif %}{{ m.content }}|{% endfor %}"
    )
    with pytest.raises(DataError) as excinfo:
        validate_jinja_template(template, source="dataset vqa#0 option chat_template")
    assert str(excinfo.value).startswith(
        "dataset vqa#0 option chat_template: the Jinja chat template is not prefix-stable"
    )


def test_a_template_that_needs_a_system_message_still_loads():
    """Render errors that depend on the conversation are reported per sample, not at load."""
    template = (
        "{% if messages[0].role != 'system' %}{{ raise_exception('system first') }}{% endif %}"
        "{% for m in messages %}{{ m.content }}|{% endfor %}"
    )
    assert validate_jinja_template(template) == template
    with pytest.raises(DataError, match="system first"):
        render_segments(template, TWO_TURNS)


def test_template_that_ignores_the_generation_header_position_is_refused():
    template = (
        "{% if add_generation_prompt %}>> {% endif %}"
        "{% for m in messages %}{{ m.content }}{% endfor %}"
    )
    with pytest.raises(DataError, match="with add_generation_prompt the first 1 messages"):
        render_segments(template, TWO_TURNS[:2])


def test_template_that_drops_image_placeholders_is_refused():
    template = "{% for m in messages %}{{ m.content | replace('<image>', '') }}{% endfor %}"
    messages = [Message("user", "<image> what?"), Message("assistant", "x")]
    with pytest.raises(
        DataError, match=r"holds 0 '<image>' placeholder\(s\) but the messages hold 1"
    ):
        render_segments(template, messages, source="t.json", index=0)


@pytest.mark.parametrize(
    ("template", "reason"),
    [
        ("{{ raise_exception('no system messages, please') }}{{ messages }}", "no system messages"),
        ("{{ messages.__class__.__mro__ }}", "unsafe"),
        ("{% for m in messages %}{{ m.content }}{% endfor %}{{ strftime_now('%Y') }}", "undefined"),
    ],
)
def test_jinja_render_errors_and_sandbox_violations_are_located(template, reason):
    with pytest.raises(DataError) as excinfo:
        render_segments(template, TWO_TURNS[:2], source="train.json", index=5)
    assert str(excinfo.value).startswith("train.json record 5: chat template failed to render")
    assert reason in str(excinfo.value)


@pytest.mark.parametrize(
    "messages",
    [
        [Message("assistant", "x")],
        [Message("user", "a"), Message("user", "b"), Message("assistant", "x")],
    ],
)
def test_jinja_message_order_is_checked(messages):
    with pytest.raises(DataError, match=r"^train\.json record 1: "):
        render_segments(QWEN_JINJA, messages, source="train.json", index=1)


# --- cross-check against PaddleNLP's own implementation ---------------------------------------

CROSS_CHECK_TEMPLATES = [
    TEMPLATE,
    {
        "system": "<|im_start|>system\nYou are helpful.<|im_end|>\n",
        "conversation": [
            "<|im_start|>user\n{{user}}<|im_end|>\n<|im_start|>assistant\n",
            "{{bot}}<|im_end|>\n",
        ],
        "query": "<|im_start|>user\n{{query}}<|im_end|>\n<|im_start|>assistant\n",
    },
    {
        "conversation": [
            "{% if index == 0 %}[Round {{index}}]\n{% else %}\n[Round {{index}}]\n{% endif %}"
            "问：{{user}}\n答：",
            "{{bot}}{% if is_training %}</s>{% endif %}",
        ],
        "query": "[Round {{index}}]\n问：{{query}}\n答：",
    },
]

CONVERSATIONS = [
    [["What is in <image>?", "A cat."]],
    [["a", "x"], ["b", "y"], ["c\nd", "z"]],
]


@pytest.mark.slow
@pytest.mark.parametrize("template", CROSS_CHECK_TEMPLATES)
@pytest.mark.parametrize("conversation", CONVERSATIONS)
def test_rendering_matches_paddlenlp(template, conversation):
    from paddlenlp.transformers import tokenizer_utils

    class TextTokenizer(tokenizer_utils.ChatTemplateMixin):
        """PaddleNLP's own encoding loop with an identity 'tokenizer', to see its text parts."""

        def encode(self, text, add_special_tokens=False):
            return {"input_ids": text}

    paddle_tokenizer = TextTokenizer()
    paddle_tokenizer.init_chat_template(dict(template))
    encoded = paddle_tokenizer.encode_chat_inputs(conversation, context_data={"is_training": True})
    expected = [(encoded["system"], False)] if "system" in encoded else []
    for user, bot in encoded["conversations"]:
        expected += [(user, False), (bot, True)]
    expected = [(text, trainable) for text, trainable in expected if text]

    messages = [
        Message(role, text)
        for turn in conversation
        for role, text in zip(("user", "assistant"), turn, strict=True)
    ]
    assert render_segments(template, messages) == expected

    prompt = [*conversation[:-1], [conversation[-1][0]]]
    chat_template = tokenizer_utils.ChatTemplate.from_dict(dict(template))
    expected_prompt = chat_template(prompt, context_data={"is_training": False})
    rendered = render_segments(template, messages[:-1])
    assert "".join(text for text, _ in rendered) == expected_prompt
