"""A chat template cannot run for minutes or fill memory: loops, sizes and output are bounded,
and crossing a bound is a DataError naming the template's source, raised at once.

Each bomb renders in a subprocess with a 2 GiB address-space limit and a timeout, so a bound
that stopped working fails its test instead of exhausting the machine.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import textwrap

import pytest

from mixcore.api.errors import DataError
from mixcore.api.records import Message
from mixcore.kit.sandbox import MAX_LOOP_ITERATIONS
from mixcore.kit.templates import render_segments, validate_jinja_template

#: Wall-clock seconds one bomb may take to be refused (each is refused in milliseconds).
TIMEOUT = 30
MEMORY = 2 * 1024**3

HEAD = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"

BOMBS = {
    "huge range": ("{% for i in range(10**9) %}x{% endfor %}", "range() of 1,000,000,000"),
    "string repetition": ("{{ 'x' * 10**10 }}", "would be 10,000,000,000 long"),
    "literal repetition": ("{{ 'x' * 10000000000 }}", "would be 10,000,000,000 long"),
    "nested loops": (
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        f"loops ran more than {MAX_LOOP_ITERATIONS:,} times",
    ),
    "nested loops over strings": (
        "{% set s = 'x' * 90000 %}{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}",
        "loops ran more than",
    ),
    "output length": (
        "{% for i in range(50000) %}{{ 'y' * 900000 }}{% endfor %}",
        "output passed 1,000,",
    ),
    "doubling with ~": (
        "{% set ns = namespace(s='x') %}{% for i in range(64) %}"
        "{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
        "joined with '~' would be 1,048,576 long",
    ),
    "doubling with +": (
        "{% set ns = namespace(s=['x']) %}{% for i in range(64) %}"
        "{% set ns.s = ns.s + ns.s %}{% endfor %}",
        "would be 1,048,576 long",
    ),
    "padding filter": ("{{ 'x'|center(99999999999) }}", "'center' would be 99,999,999,999"),
    "padding method": ("{{ 'x'.ljust(99999999999) }}", "str.ljust would be 99,999,999,999"),
    "replace": ("{{ ('x' * 100000)|replace('x', 'y' * 100000) }}", "'replace' would be"),
    "join": ("{{ (['x' * 100000] * 100)|join('') }}", "'join' would be 10,000,000"),
    "format width": ("{{ '%99999999999s' % 'x' }}", "width or precision of a million"),
    "power": ("{{ 7 ** 100000 }}", "more than 4096 bits"),
}

SCRIPT = textwrap.dedent(
    """
    import json, sys
    from mixcore.kit.templates import render_segments
    from mixcore.api.errors import DataError
    from mixcore.api.records import Message

    template = json.loads(sys.argv[1])
    messages = [Message("user", "Hi?"), Message("assistant", "Hello.")]
    try:
        render_segments(template, messages, source="train.json", index=4)
    except DataError as exc:
        print(json.dumps({"error": str(exc)}))
    else:
        print(json.dumps({"error": None}))
    """
)


def render_bounded_in_subprocess(template):
    def limit_memory():
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY, MEMORY))

    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(template)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        preexec_fn=limit_memory,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)["error"]


@pytest.mark.parametrize("kind", sorted(BOMBS))
def test_hugging_face_template_bombs_are_refused(kind):
    body, reason = BOMBS[kind]
    error = render_bounded_in_subprocess(HEAD + body)
    assert error is not None and error.startswith("train.json record 4: chat template failed")
    assert reason in error


@pytest.mark.parametrize("kind", ["huge range", "string repetition", "doubling with ~"])
def test_paddlenlp_template_bombs_are_refused(kind):
    body, reason = BOMBS[kind]
    template = {"conversation": ["{{user}}" + body, "{{bot}}"]}
    error = render_bounded_in_subprocess(template)
    assert error is not None and reason in error


def test_a_bomb_is_refused_when_the_template_is_checked_not_per_sample():
    body, reason = BOMBS["nested loops"]
    with pytest.raises(DataError) as info:
        validate_jinja_template(HEAD + body, source="option chat_template")
    assert str(info.value).startswith("option chat_template: chat template failed to render")
    assert reason in str(info.value)


def test_python_errors_in_a_template_are_the_templates_data_errors():
    with pytest.raises(DataError, match=r"failed to render: TypeError: can only concatenate str"):
        render_segments(
            HEAD + "{{ messages[0].content + 1 }}",
            [Message("user", "Hi?"), Message("assistant", "Hello.")],
            source="train.json",
            index=0,
        )


def test_ordinary_templates_render_unchanged_within_the_bounds():
    extras = (
        "{% for i in range(3) %}{{ loop.index }}{% endfor %}{{ 'ab' * 2 }}{{ 2 ** 10 }}"
        "{{ 'a' ~ 'b' }}{{ ['p', 'q']|join(',') }}{{ 'x'|center(5) }}{{ '%s=%d'|format('n', 3) }}"
    )
    template = {"conversation": ["{{user}}|" + extras + "|", "{{bot}}"]}
    segments = render_segments(template, [Message("user", "Hi?"), Message("assistant", "Yes.")])
    assert segments == [("Hi?|123abab1024abp,q  x  n=3|", False), ("Yes.", True)]
