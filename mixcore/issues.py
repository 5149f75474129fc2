"""Issues: where a document is wrong (a JSON path) and what is wrong, in plain words.

Every validation in mixcore (plugin manifests, registered entries, user configs, command-line
JSON) reports :class:`Issue` records: a JSON path such as ``$.dataset.train[1].data_files`` and a
message saying what was expected, with a did-you-mean for unknown keys and names. JSON Schema
validation goes through :func:`validate`; ``jsonschema`` is imported only when something is
actually validated. The cache of "valid" verdicts that keeps it off the path of ``mixcore plugins
list`` is the registry's (:mod:`mixcore.registry.verdict_cache`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from mixcore.kit.names import nearest

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

#: Annotation keyword a schema may carry beside ``not``, ``const`` or ``enum``: why a key (or a
#: value) is refused and what to write instead. A key a schema refuses outright is given as
#: ``{"not": {}, REFUSED: "..."}``, so it is reported with its reason, not as an unknown key.
#: JSON Schema ignores keywords it does not know; only the messages of :func:`validate` use it.
REFUSED = "x-refused"
#: An unknown key with no near match lists the allowed keys when there are at most this many;
#: a longer list (a config's top level) would bury the message, so it points to where they are.
MAX_LISTED_KEYS = 20
_JSON_TYPE_NAMES = {
    bool: "boolean",
    int: "integer",
    float: "number",
    str: "string",
    list: "array",
    dict: "object",
    type(None): "null",
}


@dataclass(frozen=True, order=True)
class Issue:
    """One problem found in a document: where (a JSON path) and what is wrong."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


def json_path(parts: Iterable[Any], root: str = "$") -> str:
    """Render path components as ``$.a.b[2]["odd key"]``."""
    out = root
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and _IDENTIFIER.match(part):
            out += f".{part}"
        else:
            out += "[" + json.dumps(str(part), ensure_ascii=False) + "]"
    return out


def json_type(value: Any) -> str:
    """The JSON Schema type name of a Python value."""
    return _JSON_TYPE_NAMES.get(type(value), type(value).__name__)


def short(value: Any, limit: int = 60) -> str:
    """A compact representation of a value for an error message."""
    try:
        text = json.dumps(value, ensure_ascii=False, default=repr)
    except (TypeError, ValueError, RecursionError):
        try:
            text = repr(value)
        except ValueError:  # an integer with more digits than Python will print
            text = f"<{json_type(value)} too large to print>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _expected_types(schema: Mapping[str, Any]) -> str | None:
    kind = schema.get("type")
    if isinstance(kind, str):
        if kind == "array" and isinstance(schema.get("items"), Mapping):
            inner = _expected_types(schema["items"])
            return f"array of {inner}" if inner else "array"
        return kind
    if isinstance(kind, list):
        return " or ".join(kind)
    if "enum" in schema:
        return "one of " + ", ".join(short(v) for v in schema["enum"])
    if "const" in schema:
        return short(schema["const"])
    return None


def _known_keys(schema: Mapping[str, Any]) -> list[str]:
    return sorted(schema.get("properties", {}))


def _issues_from_error(error: Any, prefix: tuple[Any, ...], root: str) -> list[Issue]:
    """Turn one ``jsonschema.ValidationError`` into one or more :class:`Issue` records."""
    path = (*prefix, *error.absolute_path)
    where = json_path(path, root)
    kind = error.validator
    value = error.validator_value
    instance = error.instance
    schema = error.schema

    reason = schema.get(REFUSED) if isinstance(schema, Mapping) else None
    if isinstance(reason, str) and kind == "not":
        return [Issue(where, f"not supported: {reason}")]

    if kind == "additionalProperties" and isinstance(instance, Mapping):
        known = _known_keys(schema)
        patterns = [re.compile(p) for p in schema.get("patternProperties", {})]
        issues = []
        for key in instance:
            if key in schema.get("properties", {}) or any(p.search(key) for p in patterns):
                continue
            hint = nearest(str(key), known)
            message = f"unknown key {short(key)}"
            message += f" (did you mean {hint!r}?)" if hint else ""
            if not hint and known and len(known) <= MAX_LISTED_KEYS:
                message += "; allowed: " + ", ".join(known)
            elif not hint and known:
                message += (
                    f"; none of the {len(known)} keys allowed here is close to it "
                    "(`mixcore schema` prints them; docs/config-reference.md describes a "
                    "config's)"
                )
            issues.append(Issue(json_path((*path, key), root), message))
        return issues or [Issue(where, error.message)]
    if kind == "required":
        missing = [k for k in value if isinstance(instance, Mapping) and k not in instance]
        return [Issue(where, f"missing required key {short(k)}") for k in missing]
    if kind == "type":
        expected = value if isinstance(value, str) else " or ".join(value)
        got = "null" if instance is None else f"{json_type(instance)} {short(instance)}"
        return [Issue(where, f"expected {expected}, got {got}")]
    if kind == "enum":
        choices = ", ".join(short(v) for v in value) or "none (nothing of this kind is installed)"
        hint = (
            nearest(str(instance), [str(v) for v in value]) if isinstance(instance, str) else None
        )
        message = f"got {short(instance)}; allowed: {choices}"
        message += f" (did you mean {hint!r}?)" if hint else ""
        return [Issue(where, message + (f"; {reason}" if isinstance(reason, str) else ""))]
    if kind == "const":
        message = f"must be {short(value)}, got {short(instance)}"
        return [Issue(where, message + (f"; {reason}" if isinstance(reason, str) else ""))]
    if kind in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        op = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}
        return [Issue(where, f"must be {op[kind]} {value}, got {short(instance)}")]
    if kind in ("oneOf", "anyOf"):
        options = [_expected_types(sub) for sub in value]
        if all(options):
            return [Issue(where, f"expected {' or '.join(options)}, got {short(instance)}")]
    if kind == "pattern":
        return [Issue(where, f"{short(instance)} does not match the pattern {value}")]
    if kind == "minLength" and value == 1:
        return [Issue(where, "must not be empty")]
    if kind == "minItems":
        return [Issue(where, f"needs at least {value} item(s), got {len(instance)}")]
    message = error.message
    if len(message) > 200:
        message = message[:197] + "..."
    return [Issue(where, message)]


def validate(
    instance: Any, schema: Mapping[str, Any], *, prefix: tuple[Any, ...] = (), root: str = "$"
) -> list[Issue]:
    """Every way ``instance`` breaks ``schema`` (Draft 2020-12), sorted by path."""
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(schema)
    issues: list[Issue] = []
    for error in validator.iter_errors(instance):
        issues.extend(_issues_from_error(error, prefix, root))
    return sorted(set(issues))


def check_schema(schema: Any, *, root: str = "$") -> list[Issue]:
    """Problems that make ``schema`` unusable as a Draft 2020-12 JSON Schema.

    Beyond the meta-schema: every regular expression (``pattern``, ``patternProperties`` keys)
    must compile, and every ``$ref`` must resolve within the schema itself. Either would
    otherwise fail only later, when a user validates a config, as a crash rather than a
    message; and a remote ``$ref`` would make validation reach for the network.
    """
    from jsonschema import Draft202012Validator

    if not isinstance(schema, Mapping):
        return [Issue(root, f"a JSON Schema must be an object, got {json_type(schema)}")]
    # The meta-schema marks patterns with `"format": "regex"`; formats are only checked when
    # asked for, and the regex check compiles with `re`, exactly as validation will.
    meta = Draft202012Validator(
        Draft202012Validator.META_SCHEMA, format_checker=Draft202012Validator.FORMAT_CHECKER
    )
    issues = {_meta_issue(e, root) for e in meta.iter_errors(schema)}
    if not issues:
        issues.update(_unresolved_refs(schema, root))
    return sorted(issues)


def _meta_issue(error: Any, root: str) -> Issue:
    where = json_path(error.absolute_path, root)
    if error.validator == "format" and error.validator_value == "regex":
        try:
            re.compile(error.instance)
        except (re.error, TypeError) as exc:
            reason = str(exc)
        else:  # pragma: no cover - the format checker and `re` agree
            reason = "rejected by the format checker"
        return Issue(where, f"{short(error.instance)} is not a valid regular expression: {reason}")
    return Issue(where, error.message)


_NOT_SCHEMAS = frozenset({"enum", "const", "default", "examples"})  # keywords holding data
_SCHEMA_MAPS = frozenset(
    {"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"}
)


def _unresolved_refs(schema: Mapping[str, Any], root: str) -> list[Issue]:
    """A ``$ref`` / ``$dynamicRef`` that does not resolve inside ``schema`` (or a meta-schema).

    ``$id`` is refused: plugin option schemas are embedded in the composed config schema
    (``mixcore.config.schema``), which rebases their ``#/...`` references onto where they sit.
    """
    from jsonschema_specifications import REGISTRY
    from referencing.exceptions import Unresolvable
    from referencing.jsonschema import DRAFT202012

    base = "urn:mixcore:options-schema"
    resource = DRAFT202012.create_resource(schema)
    resolver = REGISTRY.with_resource(base, resource).resolver(base_uri=base)
    issues: list[Issue] = []

    def walk(node: Any, path: tuple[Any, ...]) -> None:
        if isinstance(node, list):
            for i, item in enumerate(node):
                walk(item, (*path, i))
            return
        if not isinstance(node, Mapping):
            return
        if "$id" in node:
            issues.append(
                Issue(
                    json_path((*path, "$id"), root),
                    "not allowed: the schema is embedded in the composed config schema, where "
                    "an $id would change what its references mean; refer to its parts with "
                    "'#/$defs/...' instead",
                )
            )
        for keyword in ("$ref", "$dynamicRef"):
            ref = node.get(keyword)
            if isinstance(ref, str):
                try:
                    resolver.lookup(ref)
                except Unresolvable:
                    issues.append(
                        Issue(
                            json_path((*path, keyword), root),
                            f"{short(ref)} does not resolve within this schema (only "
                            "references into the schema itself are allowed, e.g. '#/$defs/x')",
                        )
                    )
        for key, value in node.items():
            if key in _SCHEMA_MAPS and isinstance(value, Mapping):
                # Keys here are property or definition names, never keywords.
                for name, sub in value.items():
                    walk(sub, (*path, key, name))
            elif key not in _NOT_SCHEMAS:
                walk(value, (*path, key))

    walk(schema, ())
    return issues
