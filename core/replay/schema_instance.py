"""A small JSON value that validates against a JSON Schema: what the simulated provider answers
to `response_format: json_schema` and puts in a tool call's arguments.

Deterministic and minimal: objects get their required properties (and optional ones only up
to `minProperties`), arrays `minItems` items, numbers the value nearest 0 within their bounds
(and a multiple of `multipleOf`), strings a short word (or a valid example of a known `format`)
stretched or cut to `minLength` / `maxLength`, `const` and `enum` their (first) value, and
`anyOf` / `oneOf` their first branch. `allOf` is merged, local `$ref`s (`#/$defs/...`,
`#/definitions/...`) are followed, and a type list takes its first non-null type.

Sizes are capped (`MAX_ITEMS`, `MAX_CHARS`, `MAX_VALUES`) and a `pattern` is only tried on
short strings, so no schema makes an answer huge or slow. Covered: OpenAI's structured-output
subset (strict schemas) and the usual tool parameter schemas. Not covered: a `pattern` that
none of a few short strings matches (the word is returned anyway), `not`, conditionals
(`if`/`then`), `dependentRequired`, and `oneOf` branches that overlap. Never raises: a schema
it cannot read gives `{}` (an empty object).
"""

from __future__ import annotations

import math
import re
from typing import Any

MAX_DEPTH = 32  # deeper (or recursive) schemas end in null
# A client's schema must not make an answer huge (or slow): sizes are capped (a schema that
# asks for more gets a value that breaks its minimum), and a `pattern` is only tried on short
# strings (Python's regex engine backtracks without a time limit).
MAX_ITEMS = 64  # items of an array, properties of an object beyond the required ones
MAX_CHARS = 4096  # characters of a string
MAX_PATTERN_INPUT = 12
MAX_VALUES = 10_000  # values generated in all (a branching recursive schema ends in nulls)

_FORMATS = {
    "date-time": "2024-01-01T00:00:00Z",
    "date": "2024-01-01",
    "time": "00:00:00Z",
    "duration": "P1D",
    "email": "user@example.com",
    "idn-email": "user@example.com",
    "hostname": "example.com",
    "idn-hostname": "example.com",
    "ipv4": "192.0.2.1",
    "ipv6": "2001:db8::1",
    "uri": "https://example.com",
    "iri": "https://example.com",
    "uri-reference": "https://example.com",
    "url": "https://example.com",
    "uuid": "00000000-0000-4000-8000-000000000000",
}
_PATTERN_TRIES = ("", "a", "A", "0", "aa", "a0", "A0", "00", "a-a", "a_a", "simulated")


def minimal_instance(schema: Any, word: str = "simulated") -> Any:
    """A JSON value valid under `schema` (see the module docstring); `word` fills strings."""
    try:
        return _Generator(schema, word).value(schema, 0, 0)
    except Exception:  # noqa: BLE001 - a client's schema must never break an answer
        return {}


class _Generator:
    def __init__(self, root: Any, word: str) -> None:
        self.root, self.word = root, word
        self.left = MAX_VALUES

    def resolve(self, schema: Any, depth: int) -> Any:
        """Follow local `$ref`s (siblings of a `$ref` are merged over its target)."""
        while depth < MAX_DEPTH and isinstance(schema, dict) and "$ref" in schema:
            ref = schema["$ref"]
            target = self.pointer(ref) if isinstance(ref, str) else {}
            rest = {k: v for k, v in schema.items() if k != "$ref"}
            schema = {**target, **rest} if isinstance(target, dict) else rest
            depth += 1
        return schema

    def pointer(self, ref: str) -> Any:
        if ref == "#":
            return self.root
        if not ref.startswith("#/"):
            return {}
        node = self.root
        for raw in ref[2:].split("/"):
            key = raw.replace("~1", "/").replace("~0", "~")
            if isinstance(node, dict) and key in node:
                node = node[key]
            elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
                node = node[int(key)]
            else:
                return {}
        return node

    def merged(self, schema: dict[str, Any], depth: int) -> dict[str, Any]:
        """`schema` with its `allOf` folded in and its first `anyOf` / `oneOf` branch merged."""
        out = {k: v for k, v in schema.items() if k not in ("allOf", "anyOf", "oneOf")}
        parts = list(schema.get("allOf") or [])
        for key in ("anyOf", "oneOf"):
            branches = schema.get(key)
            if isinstance(branches, list) and branches:
                parts.append(branches[0])
        for part in parts:
            part = self.resolve(part, depth)
            if not isinstance(part, dict):
                continue
            part = self.merged(part, depth + 1) if depth < MAX_DEPTH else part
            for k, v in part.items():
                if k == "properties" and isinstance(out.get(k), dict) and isinstance(v, dict):
                    out[k] = {**out[k], **v}
                elif k == "required" and isinstance(out.get(k), list) and isinstance(v, list):
                    out[k] = [*out[k], *(r for r in v if r not in out[k])]
                elif k == "type" and "type" in out:
                    out[k] = _common_type(out[k], v)
                else:
                    out.setdefault(k, v)
        return out

    def value(self, schema: Any, depth: int, variant: int) -> Any:
        self.left -= 1
        if depth > MAX_DEPTH or self.left < 0:
            return None
        schema = self.resolve(schema, depth)
        if schema is True or schema == {}:
            return {}
        if not isinstance(schema, dict):
            return {}
        schema = self.merged(schema, depth)
        if "const" in schema:
            return schema["const"]
        enum = schema.get("enum")
        if isinstance(enum, list) and enum:
            return enum[variant % len(enum)]
        kind = _pick_type(schema)
        if kind == "object":
            return self.object(schema, depth, variant)
        if kind == "array":
            return self.array(schema, depth)
        if kind == "string":
            return self.string(schema, variant)
        if kind == "integer":
            return _number(schema, variant, integer=True)
        if kind == "number":
            return _number(schema, variant, integer=False)
        if kind == "boolean":
            return bool(variant % 2)
        if kind == "null":
            return None
        return {}

    def object(self, schema: dict[str, Any], depth: int, variant: int) -> dict[str, Any]:
        """Required properties; the first one carries `variant` (distinct array items)."""
        props = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
        required = [r for r in schema.get("required") or [] if isinstance(r, str)]
        names = list(dict.fromkeys(required))
        want = schema.get("minProperties")
        want = min(want, MAX_ITEMS) if isinstance(want, int) else None
        if want is not None:
            names += [n for n in props if n not in names][: max(0, want - len(names))]
        out: dict[str, Any] = {}
        for i, name in enumerate(names):
            sub = props.get(name)
            if sub is None:
                extra = schema.get("additionalProperties")
                sub = extra if isinstance(extra, dict) else {}
            out[name] = self.value(sub, depth + 1, variant if i == 0 else 0)
        if want is not None and len(out) < want:
            extra = schema.get("additionalProperties")
            sub = extra if isinstance(extra, dict) else {}
            for i in range(len(out), want):
                out[f"{self.word}_{i}"] = self.value(sub, depth + 1, 0)
        return out

    def array(self, schema: dict[str, Any], depth: int) -> list[Any]:
        prefix = schema.get("prefixItems")
        prefix = prefix if isinstance(prefix, list) else []
        items = schema.get("items")
        if isinstance(items, list):  # draft 4-7 tuple form
            prefix, items = items, schema.get("additionalItems")
        if not isinstance(items, dict):
            items = {}
        count = schema.get("minItems")
        count = min(count, MAX_ITEMS) if isinstance(count, int) and count > 0 else 0
        contains = schema.get("contains")
        out = [self.value(s, depth + 1, i) for i, s in enumerate(prefix[: max(count, 0)])]
        while len(out) < count:
            out.append(self.value(items, depth + 1, len(out)))
        if isinstance(contains, dict) and not out:
            out.append(self.value(contains, depth + 1, 0))
        return out

    def string(self, schema: dict[str, Any], variant: int) -> str:
        fmt = schema.get("format")
        text = _FORMATS.get(fmt, self.word) if isinstance(fmt, str) else self.word
        if variant:
            text = f"{text}{variant}" if fmt not in _FORMATS else text
        lo, hi = schema.get("minLength"), schema.get("maxLength")
        if isinstance(lo, int) and len(text) < lo:
            text = text + "x" * (min(lo, MAX_CHARS) - len(text))
        if isinstance(hi, int) and hi >= 0 and len(text) > hi:
            text = text[:hi]
        pattern = schema.get("pattern")
        if isinstance(pattern, str):
            text = _matching(pattern, text, lo, hi)
        return text


def _pick_type(schema: dict[str, Any]) -> str | None:
    kind = schema.get("type")
    if isinstance(kind, list):
        kinds = [k for k in kind if isinstance(k, str)]
        non_null = [k for k in kinds if k != "null"]
        return (non_null or kinds or [None])[0]
    if isinstance(kind, str):
        return kind
    if "properties" in schema or "required" in schema or "additionalProperties" in schema:
        return "object"
    if "items" in schema or "prefixItems" in schema or "minItems" in schema:
        return "array"
    if any(k in schema for k in ("minLength", "maxLength", "pattern", "format")):
        return "string"
    if any(k in schema for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")):
        return "number"
    return None


def _common_type(a: Any, b: Any) -> Any:
    """The first type both `allOf` parts allow (an integer is a number); `b` if none."""
    la, lb = (a if isinstance(a, list) else [a]), (b if isinstance(b, list) else [b])

    def allowed(t: Any, others: list[Any]) -> bool:
        return t in others or (t == "integer" and "number" in others)

    both = [t for t in la if allowed(t, lb)] + [t for t in lb if t == "integer" and "number" in la]
    return both[0] if both else b


def _number(schema: dict[str, Any], variant: int, integer: bool) -> int | float:
    lo, hi = schema.get("minimum"), schema.get("maximum")
    xlo, xhi = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    step = schema.get("multipleOf")
    lo = lo if _is_num(lo) else None
    hi = hi if _is_num(hi) else None
    if _is_num(xlo):
        lo = max(lo, xlo) if lo is not None else xlo
    if _is_num(xhi):
        hi = min(hi, xhi) if hi is not None else xhi
    # draft 4: exclusiveMinimum / exclusiveMaximum are booleans about minimum / maximum
    strict_lo = xlo is True or (_is_num(xlo) and lo == xlo)
    strict_hi = xhi is True or (_is_num(xhi) and hi == xhi)
    unit = step if _is_num(step) and step > 0 else (1 if integer else None)
    candidates: list[float] = [0 + variant]
    if lo is not None:
        candidates.append(lo + variant)
    if hi is not None:
        candidates.append(hi - variant)
    for x in candidates:
        for value in _snap(x, unit, lo, hi, integer):
            if _fits(value, lo, hi, strict_lo, strict_hi, step):
                return value
    if lo is not None and hi is not None:  # an open interval narrower than one unit
        mid = (lo + hi) / 2
        return int(mid) if integer and float(mid).is_integer() else mid
    return 0


def _snap(x: float, unit: float | None, lo: Any, hi: Any, integer: bool) -> list[int | float]:
    if unit is None:
        out: list[float] = [x]
        if lo is not None:
            out.append(lo + 1 if hi is None or lo + 1 < hi else (lo + hi) / 2)
        return out
    out = [math.ceil(x / unit) * unit, math.floor(x / unit) * unit]
    out += [out[0] + unit, out[1] - unit]
    if integer:
        return [int(round(v)) for v in out if float(round(v)) == round(v, 9)]
    return out


def _fits(value: float, lo: Any, hi: Any, strict_lo: bool, strict_hi: bool, step: Any) -> bool:
    if lo is not None and (value < lo or (strict_lo and value == lo)):
        return False
    if hi is not None and (value > hi or (strict_hi and value == hi)):
        return False
    if _is_num(step) and step > 0:
        q = value / step
        return abs(q - round(q)) < 1e-9
    return True


def _is_num(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _matching(pattern: str, text: str, lo: Any, hi: Any) -> str:
    try:
        regex = re.compile(pattern)
    except re.error:
        return text
    for candidate in (text, *_PATTERN_TRIES):
        if len(candidate) > MAX_PATTERN_INPUT or not _length_ok(candidate, lo, hi):
            continue
        if regex.search(candidate):
            return candidate
    return text


def _length_ok(text: str, lo: Any, hi: Any) -> bool:
    return not (isinstance(lo, int) and len(text) < lo) and not (
        isinstance(hi, int) and len(text) > hi
    )
