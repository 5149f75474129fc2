"""Read a JSON or YAML config file into plain JSON values, or explain exactly why not."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from mixcore.api.errors import ConfigError
from mixcore.issues import Issue, json_path, json_type, short

MAX_BYTES = 16 * 1024 * 1024
#: Values a config may hold after YAML aliases are expanded; guards against "billion laughs".
MAX_VALUES = 200_000
MAX_DEPTH = 64
#: Longest integer literal accepted; far beyond any real setting, short enough to print.
MAX_INT_DIGITS = 1000


class _Problem(Exception):
    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.issue = Issue(path, message)


def _decode(raw: bytes) -> str:
    if raw.startswith((b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff")):
        raise _Problem("$", "the file is UTF-32 encoded; save it as UTF-8")
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise _Problem("$", "the file is UTF-16 encoded; save it as UTF-8")
    if b"\x00" in raw:
        line = raw[: raw.index(b"\x00")].count(b"\n") + 1
        raise _Problem(
            "$",
            f"NUL byte at line {line}: the file is binary, or UTF-16/UTF-32 text without a "
            "byte-order mark; save it as UTF-8",
        )
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise _Problem(
            "$",
            f"not UTF-8 text: byte 0x{raw[exc.start]:02x} at line {line} (offset {exc.start}); "
            "save the file as UTF-8",
        ) from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number; write a finite number or a string")


def _parse_int(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > MAX_INT_DIGITS:
        raise ValueError(
            f"an integer has {digits} digits; numbers in a config have at most {MAX_INT_DIGITS}"
        )
    return int(text)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"key {key!r} appears twice in one object")
        out[key] = value
    return out


def _parse_json(text: str) -> Any:
    try:
        return json.loads(
            text,
            object_pairs_hook=_no_duplicates,
            parse_constant=_reject_constant,
            parse_int=_parse_int,
        )
    except json.JSONDecodeError as exc:
        raise _Problem(
            "$", f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    except RecursionError:
        raise _Problem("$", f"nested more than {MAX_DEPTH} levels deep") from None
    except ValueError as exc:  # duplicate keys, NaN, numbers with too many digits
        raise _Problem("$", f"invalid JSON: {exc}") from None


_EXPONENT_FLOAT = re.compile(r"^[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+$")


def _parse_yaml(text: str) -> Any:
    import yaml

    class StrictLoader(yaml.SafeLoader):
        """SafeLoader that refuses duplicate keys instead of keeping the last one silently."""

    def construct_mapping(loader: Any, node: Any, deep: bool = False) -> dict[Any, Any]:
        own = sum(1 for key_node, _ in node.value if key_node.tag != "tag:yaml.org,2002:merge")
        loader.flatten_mapping(node)
        # Pairs merged in with "<<" come first; the mapping's own keys may override them.
        first_own = len(node.value) - own
        out: dict[Any, Any] = {}
        own_keys: set[Any] = set()
        for index, (key_node, value_node) in enumerate(node.value):
            key = loader.construct_object(key_node, deep=True)
            try:
                duplicate = key in own_keys
            except TypeError:  # an unhashable key, e.g. a list
                raise yaml.constructor.ConstructorError(
                    None, None, "mapping keys must be strings", key_node.start_mark
                ) from None
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one mapping", key_node.start_mark
                )
            if index >= first_own:
                own_keys.add(key)
            out[key] = loader.construct_object(value_node, deep=deep)
        return out

    def construct_int(loader: Any, node: Any) -> int:
        digits = len(node.value.lstrip("+-").replace("_", ""))
        if digits > MAX_INT_DIGITS:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"an integer has {digits} digits; numbers in a config have at most "
                f"{MAX_INT_DIGITS}",
                node.start_mark,
            )
        return loader.construct_yaml_int(node)

    StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
    # YAML 1.1 reads `1e-5` (no dot) as a string; configs are full of such learning rates, and
    # YAML 1.2 and JSON read them as numbers, so do the same.
    StrictLoader.add_implicit_resolver(
        "tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+0123456789.")
    )
    StrictLoader.add_constructor("tag:yaml.org,2002:int", construct_int)
    try:
        return yaml.load(text, Loader=StrictLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = exc.problem or "syntax error"
        if exc.context:  # e.g. "while scanning a quoted scalar" + "found unexpected end of stream"
            start = exc.context_mark
            context = exc.context
            if start and mark and (start.line, start.column) != (mark.line, mark.column):
                context += f" (from line {start.line + 1} column {start.column + 1})"
            problem = f"{context}, {problem}"
        raise _Problem("$", f"invalid YAML{where}: {problem}") from None
    except yaml.reader.ReaderError as exc:  # a control character the YAML spec forbids
        line = text.count("\n", 0, exc.position) + 1
        code = exc.character if isinstance(exc.character, int) else ord(exc.character)
        raise _Problem(
            "$", f"invalid YAML at line {line}: character U+{code:04X} is not allowed in YAML text"
        ) from None
    except yaml.YAMLError as exc:
        raise _Problem("$", f"invalid YAML: {exc}") from None
    except RecursionError:
        raise _Problem("$", f"nested more than {MAX_DEPTH} levels deep") from None
    except ValueError as exc:  # e.g. an integer with more digits than Python converts
        raise _Problem("$", f"invalid YAML value: {exc}") from None


def to_json_values(value: Any) -> Any:
    """A copy of ``value`` holding only JSON types; YAML-only values are reported with their path."""
    budget = [MAX_VALUES]

    def walk(node: Any, path: tuple[Any, ...]) -> Any:
        budget[0] -= 1
        if budget[0] < 0:
            raise _Problem("$", f"more than {MAX_VALUES} values (are YAML aliases expanding?)")
        if len(path) > MAX_DEPTH:
            raise _Problem(json_path(path), f"nested more than {MAX_DEPTH} levels deep")
        if isinstance(node, str):
            _check_text(node, path, "the text")
            return node
        if node is None or isinstance(node, bool):
            return node
        if isinstance(node, int):
            return node
        if isinstance(node, float):
            if not math.isfinite(node):
                raise _Problem(json_path(path), "not a finite number")
            return node
        if isinstance(node, list):
            return [walk(item, (*path, i)) for i, item in enumerate(node)]
        if isinstance(node, dict):
            out = {}
            for key, item in node.items():
                if not isinstance(key, str):
                    raise _Problem(
                        json_path(path),
                        f"key {key!r} ({json_type(key)}) is not a string; quote it",
                    )
                _check_text(key, path, "a key")
                out[key] = walk(item, (*path, key))
            return out
        kind = type(node).__name__
        raise _Problem(json_path(path), f"a {kind} value is not allowed here; quote it as a string")

    return walk(value, ())


def _check_text(text: str, path: tuple[Any, ...], what: str) -> None:
    """Refuse lone UTF-16 surrogates (JSON's ``"\\ud800"``): not text, cannot be printed."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        code = ord(text[exc.start])
        raise _Problem(
            json_path(path),
            f"{what} holds \\u{code:04x}, half of a UTF-16 surrogate pair; it is not valid text",
        ) from None


def parse_config_text(raw: bytes, *, suffix: str = ".json") -> dict[str, Any]:
    """Decode and parse config bytes. Raises :class:`ConfigError` with source ``"<text>"``."""
    return _parse(raw, suffix, "<text>")


def _parse(raw: bytes, suffix: str, source: str) -> dict[str, Any]:
    try:
        if len(raw) > MAX_BYTES:
            raise _Problem("$", f"file is {len(raw)} bytes; configs are limited to {MAX_BYTES}")
        text = _decode(raw)
        if not text.strip():
            raise _Problem("$", "the file is empty; a config is a JSON or YAML object")
        if suffix.lower() in (".yaml", ".yml"):
            data = _parse_yaml(text)
        elif suffix.lower() == ".json" or text.lstrip().startswith(("{", "[")):
            data = _parse_json(text)
        else:
            data = _parse_yaml(text)
        data = to_json_values(data)
        if not isinstance(data, dict):
            got = "nothing" if data is None else f"{json_type(data)} {short(data)}"
            raise _Problem("$", f"a config must be an object (key: value pairs), got {got}")
        return data
    except _Problem as problem:
        raise ConfigError(source, [problem.issue]) from None


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a ``.json``, ``.yaml`` or ``.yml`` config. Raises :class:`ConfigError`."""
    path = Path(path)
    try:
        if path.is_dir():
            raise ConfigError(str(path), [Issue("$", "is a folder, not a config file")])
        with path.open("rb") as fh:
            raw = fh.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(str(path), [Issue("$", "file not found")]) from None
    except OSError as exc:
        raise ConfigError(str(path), [Issue("$", f"cannot read: {exc.strerror or exc}")]) from None
    return _parse(raw, path.suffix, str(path))
