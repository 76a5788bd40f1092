"""Trigger.dev v2's EventFilter language: validation, matching and explanations.

Matching reproduces v2's `eventFilterMatches` rule for rule, including its sharp edges
(a list value never equals a primitive list; a nested filter on a missing key fails),
because filters written for v2 must keep selecting the same events. Validation is
where we differ: v2 silently dropped a malformed filter, which then never matched;
here it is rejected at registration with the path of the bad part.

Values are JSON-shaped Python data. JavaScript's strict equality is emulated: a bool
never equals a number (Python says True == 1), while int and float compare by value
(JavaScript has one number type, and protobuf's Struct turns every 1 into 1.0).
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Callable, Mapping
from typing import Any, Final

from .errors import InvalidArgument


class _Missing:
    """A key absent from its object; unlike None (JSON null) it does not "exist"."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final = _Missing()

_STRING_OPS = frozenset({"$startsWith", "$endsWith", "$ignoreCaseEquals"})
_BOOL_OPS = frozenset({"$exists", "$isNull"})
_NUMBER_OPS = frozenset({"$gt", "$gte", "$lt", "$lte"})
_PRIMITIVE_OPS = frozenset({"$includes", "$not"})
OPERATORS: Final = frozenset(
    _STRING_OPS | _BOOL_OPS | _NUMBER_OPS | _PRIMITIVE_OPS | {"$anythingBut", "$between"}
)


# --- JavaScript value semantics -------------------------------------------------------


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _a(kind: str) -> str:
    """A kind of value with its article: "a number", "an object"."""
    return f"an {kind}" if kind[:1] in "aeiou" else f"a {kind}"


def _kind(v: object) -> str:
    """The JSON type name of `v`, as used in messages and mixed-list checks."""
    if v is MISSING:
        return "missing"
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if _is_number(v):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list | tuple):
        return "list"
    if isinstance(v, Mapping):
        return "object"
    return type(v).__name__


def _same(a: object, b: object) -> bool:
    """JavaScript `a === b` where `b` is a filter primitive (string, number or boolean)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if _is_number(a):
        return _is_number(b) and a == b
    return isinstance(a, str) and isinstance(b, str) and a == b


def _key(v: object) -> object:
    """What `_same` compares: equal keys exactly when `_same` holds (None: `v` is
    no primitive, and equals nothing)."""
    if isinstance(v, bool):
        return ("boolean", v)
    if _is_number(v):
        return ("number", v)
    if isinstance(v, str):
        return ("string", v)
    return None


# What `derived` made of a value, by the value's id and the maker (the entry keeps
# the value, so the id stays its own); forgotten past 1,024 entries.
_derived: dict[tuple[int, Callable[[Any], Any]], tuple[Any, Any]] = {}


def derived(value: Any, make: Callable[[Any], Any]) -> Any:
    """`make(value)` for a value of a job's definition (a filter's list, a schema's
    enum), made once rather than at every event: the definition never changes."""
    key = (id(value), make)
    entry = _derived.get(key)
    if entry is None or entry[0] is not value:
        if len(_derived) >= 1024:
            _derived.clear()
        entry = _derived[key] = (value, make(value))
    return entry[1]


def _key_set(values: list[Any]) -> frozenset[object]:
    return frozenset(map(_key, values))


def _one_of(v: object, values: list[Any]) -> bool:
    """Whether `v` is one of a filter's `values` (as `_same` has it), in constant
    time: a list of 50,000 values held against each element of a payload array
    made a 2 KB event take seconds to match."""
    if len(values) < 8:
        return any(_same(v, p) for p in values)
    key = _key(v)
    return key is not None and key in derived(values, _key_set)


def _finite(v: object) -> bool:
    return _is_number(v) and math.isfinite(v)  # type: ignore[arg-type]


def _same_letter() -> dict[int, int | None]:
    """What $ignoreCaseEquals maps after NFKC and lower case, as collation does."""
    # One letter where collation has one: final sigma, the old Cyrillic letter forms.
    # (Not casefold, which makes "ß" "ss": collation keeps them apart.)
    table: dict[int, int | None] = {0x3C2: 0x3C3}
    table.update({c: ord(chr(c).casefold()) for c in range(0x1C80, 0x1C89)})
    # Small kana are their full-size letters, katakana hiragana (tertiary differences).
    small = "ぁぃぅぇぉっゃゅょゎゕゖㇰㇱㇲㇳㇴㇵㇶㇷㇸㇹㇺㇻㇼㇽㇾㇿ"
    full = "あいうえおつやゆよわかけくしすとぬはひふへほむらりるれろ"
    kana = {ord(s): ord(f) for s, f in zip(small, full, strict=True)}
    table.update(kana)
    table.update({c: kana.get(c - 0x60, c - 0x60) for c in range(0x30A1, 0x30F7)})
    # Ignored altogether: format and control characters (but not the ones that are
    # white space), variation selectors, the grapheme joiner. (Planes 0, 1 and 14
    # hold every Cf and Cc character.)
    for c in (*range(0x20000), *range(0xE0000, 0xE1000)):
        category = unicodedata.category(chr(c))
        if category == "Cf" or (category == "Cc" and chr(c) not in "\t\n\v\f\r\x85"):
            table[c] = None
    for c in (0x34F, *range(0xFE00, 0xFE10), *range(0xE0100, 0xE01F0)):
        table[c] = None
    # A digit of any script is its ASCII digit ("١٢٣" equals "123"), as in collation.
    for c in range(0x30000):
        digit = unicodedata.digit(chr(c), None)
        if digit is not None and c not in table:
            table[c] = ord(str(digit))
    return table


_SAME_LETTER = _same_letter()


def _fold(s: str) -> str:
    """A key that is equal where v2's `localeCompare(sensitivity: "accent")` says equal:
    case ignored, accents not; compatibility forms (fullwidth, superscripts, ligatures,
    Roman numerals, half-width kana) equal to their plain letters, katakana to hiragana,
    digits of every script to ASCII digits, format characters ignored. Checked against
    Node's ICU for every character with its case and compatibility variants, and every
    mark or control character put inside a word: it differs for spacing accents (as "¨"
    against " \u0308"), the long s (taken for an s), some 450 marks collation ignores
    (Hebrew cantillation, say), which count here, and some 540 characters collation
    takes for a letter or digit that have no digit value or decomposition to show it
    (negative circled letters, combining Latin letters, Hangzhou numerals, Tibetan half
    digits; and characters newer than Python's Unicode database)."""
    lowered = unicodedata.normalize("NFKC", s).lower().translate(_SAME_LETTER)
    return unicodedata.normalize("NFKC", lowered)


def _field(value: object, key: str) -> object:
    # Only objects have fields; everything else reads as missing (v2 indexed any value,
    # but no JSON payload relies on reading "length" off a string).
    if isinstance(value, Mapping):
        return value.get(key, MISSING)
    return MISSING


# --- Operators ------------------------------------------------------------------------


def _starts_with(v: object, s: Any) -> bool:
    return isinstance(v, str) and v.startswith(s)


def _ends_with(v: object, s: Any) -> bool:
    return isinstance(v, str) and v.endswith(s)


def _ignore_case_equals(v: object, s: Any) -> bool:
    return isinstance(v, str) and _fold(v) == _fold(s)


def _exists(v: object, want: Any) -> bool:
    return (v is not MISSING) is bool(want)


def _is_null(v: object, want: Any) -> bool:
    return (v is None) is bool(want)


def _anything_but(v: object, x: Any) -> bool:
    if isinstance(x, list):
        return not _one_of(v, x)
    return not _same(v, x)


def _gt(v: object, n: Any) -> bool:
    return _is_number(v) and v > n


def _gte(v: object, n: Any) -> bool:
    return _is_number(v) and v >= n


def _lt(v: object, n: Any) -> bool:
    return _is_number(v) and v < n


def _lte(v: object, n: Any) -> bool:
    return _is_number(v) and v <= n


def _between(v: object, bounds: Any) -> bool:
    return _is_number(v) and bounds[0] <= v <= bounds[1]


def _includes(v: object, p: Any) -> bool:
    return isinstance(v, list | tuple) and any(_same(item, p) for item in v)


def _not(v: object, p: Any) -> bool:
    if isinstance(v, list | tuple):
        return not any(_same(item, p) for item in v)
    if isinstance(v, str | int | float):
        return not _same(v, p)
    return False  # null, an object, or missing


_OPS: Final[Mapping[str, Callable[[object, Any], bool]]] = {
    "$startsWith": _starts_with,
    "$endsWith": _ends_with,
    "$ignoreCaseEquals": _ignore_case_equals,
    "$exists": _exists,
    "$isNull": _is_null,
    "$anythingBut": _anything_but,
    "$gt": _gt,
    "$gte": _gte,
    "$lt": _lt,
    "$lte": _lte,
    "$between": _between,
    "$includes": _includes,
    "$not": _not,
}


def _op_passes(v: object, op: Mapping[str, Any]) -> bool:
    ((name, operand),) = op.items()
    return _OPS[name](v, operand)


# --- Matching -------------------------------------------------------------------------


def matches(value: Any, filter: Mapping[str, Any]) -> bool:
    """Whether `value` passes `filter`; the filter must have passed `validate_filter`."""
    if value is None or value is MISSING:
        return not filter
    for key, matcher in filter.items():
        v = _field(value, key)
        if isinstance(matcher, list):
            if not matcher:
                continue
            if isinstance(matcher[0], Mapping):
                if not all(_op_passes(v, op) for op in matcher):
                    return False
            elif not _one_of(v, matcher):
                return False
        elif isinstance(v, list | tuple):
            if not any(matches(item, matcher) for item in v):
                return False
        elif not matches(v, matcher):
            return False
    return True


def explain(value: Any, filter: Mapping[str, Any], root: str) -> str | None:
    """None when `value` passes `filter`, else a sentence naming the first failing path.

    `root` names `value` in the sentence (e.g. "payload"). Walks the filter in the
    same order as `matches`, so both agree on every input.
    """
    if value is None or value is MISSING:
        if not filter:
            return None
        return f"{root} is {_show(value)}; expected an object matching {_json(filter)}"
    for key, matcher in filter.items():
        path = _join(root, key)
        v = _field(value, key)
        if isinstance(matcher, list):
            if not matcher:
                continue
            if isinstance(matcher[0], Mapping):
                for op in matcher:
                    if not _op_passes(v, op):
                        return f"{path} is {_show(v)}, which fails {_json(op)}"
            elif not _one_of(v, matcher):
                return f"{path} is {_show(v)}; expected {_expected(matcher)}{_hint(v, matcher)}"
        elif isinstance(v, list | tuple):
            if not v:
                return f"{path} is []; expected an element matching {_json(matcher)}"
            if not any(matches(item, matcher) for item in v):
                first = explain(v[0], matcher, f"{path}[0]")
                return f"no element of {path} matches {_json(matcher)} ({first})"
        else:
            reason = explain(v, matcher, path)
            if reason is not None:
                return reason
    return None


_PLAIN_KEY = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]*")
_SHOW_LIMIT = 80


def _join(path: str, key: str) -> str:
    if _PLAIN_KEY.fullmatch(key):
        return f"{path}.{key}" if path else key
    return f"{path}[{json.dumps(key, ensure_ascii=False)}]"


def _json(x: object) -> str:
    text = json.dumps(x, ensure_ascii=False, default=repr)
    return text if len(text) <= _SHOW_LIMIT else text[: _SHOW_LIMIT - 1] + "…"


def _show(v: object) -> str:
    return "missing" if v is MISSING else _json(v)


def _expected(matcher: list[Any]) -> str:
    return _json(matcher[0]) if len(matcher) == 1 else f"one of {_json(matcher)}"


def _hint(v: object, matcher: list[Any]) -> str:
    if isinstance(v, list | tuple):
        return f" (a list never equals a value; use {_json({'$includes': matcher[0]})})"
    if _kind(v) in ("string", "number", "boolean") and _kind(v) != _kind(matcher[0]):
        return f" (a {_kind(v)} never equals a {_kind(matcher[0])})"
    return ""


# --- Validation -----------------------------------------------------------------------


def validate_filter(filter: Mapping[str, Any], field: str) -> None:
    """Raise InvalidArgument at the first part of `filter` that is not a valid EventFilter.

    `field` is the path of the filter itself (e.g. "job.trigger.event.filter"); the
    error names the bad part below it, e.g. "job.trigger.event.filter.user.age[1]".
    """
    if not isinstance(filter, Mapping):
        raise InvalidArgument(field, f"a filter must be an object, got {_a(_kind(filter))}")
    for key, matcher in filter.items():
        if not isinstance(key, str):
            raise InvalidArgument(field, f"filter keys must be strings, got {key!r}")
        path = _join(field, key)
        if key in OPERATORS:
            # v2 would read this as a payload key named like the operator, which no
            # payload has: the filter could never match.
            raise InvalidArgument(
                path, f"operators go inside a list: write [{_json({key: _operand(key, matcher)})}]"
            )
        if isinstance(matcher, list):
            _validate_matcher(matcher, path)
        elif isinstance(matcher, Mapping):
            validate_filter(matcher, path)
        elif matcher is None:
            raise InvalidArgument(
                path, 'null cannot be matched by value; write [{"$isNull": true}]'
            )
        else:
            raise InvalidArgument(
                path,
                f"expected a list of values, a list of operators or a nested filter object, "
                f"got the {_kind(matcher)} {_json(matcher)}; write [{_json(matcher)}]",
            )


def _validate_matcher(matcher: list[Any], path: str) -> None:
    if not matcher:
        return
    first = _element_kind(matcher[0], f"{path}[0]")
    for i, item in enumerate(matcher):
        item_path = f"{path}[{i}]"
        kind = _element_kind(item, item_path)
        if kind != first:
            raise InvalidArgument(
                item_path,
                f"a filter list must hold only {first}s, but this is {_a(kind)}; "
                f"write one key per kind or use operators",
            )
        if kind == "operator":
            _validate_operator(item, item_path)


def _element_kind(item: object, path: str) -> str:
    if isinstance(item, Mapping):
        return "operator"
    kind = _kind(item)
    if kind == "null":
        raise InvalidArgument(path, 'null cannot be matched by value; use {"$isNull": true}')
    if kind == "list":
        raise InvalidArgument(path, "lists cannot be nested in a filter list")
    _check_primitive(item, path, "a filter list value")
    return kind


def _check_primitive(item: object, path: str, what: str) -> None:
    kind = _kind(item)
    if kind not in ("string", "number", "boolean"):
        raise InvalidArgument(path, f"{what} must be a string, number or boolean, got {_a(kind)}")
    if kind == "number" and not _finite(item):
        raise InvalidArgument(path, f"{what} must be a finite number, got {item!r}")


def _operand(name: str, given: object) -> object:
    """The operand `given` written for operator `name`, as the hint of a misplaced
    operator shows it: one that takes a single value and was given it in a list
    of one (`{"$gte": [18]}`, as v2's value lists read) takes the value itself."""
    if (
        isinstance(given, list)
        and len(given) == 1
        and _operand_problem(name, given) is not None
        and _operand_problem(name, given[0]) is None
    ):
        return given[0]
    return given


def _validate_operator(op: Mapping[str, Any], path: str) -> None:
    if len(op) != 1:
        keys = ", ".join(str(k) for k in op) or "none"
        raise InvalidArgument(
            path,
            f"an operator object needs exactly one key, got {len(op)} ({keys}); "
            f'put each operator in its own object, e.g. [{{"$gt": 1}}, {{"$lt": 5}}]',
        )
    ((name, operand),) = op.items()
    if name not in OPERATORS:
        raise InvalidArgument(
            path, f"unknown operator {name!r}; expected one of {', '.join(sorted(OPERATORS))}"
        )
    problem = _operand_problem(name, operand)
    if problem is not None:
        raise InvalidArgument(path, f"{name} needs {problem}, got {_json(operand)}")


def _operand_problem(name: str, operand: object) -> str | None:
    """What `name` needs, when `operand` is not it."""
    kind = _kind(operand)
    finite = _finite(operand)
    if name in _STRING_OPS:
        return None if kind == "string" else "a string"
    if name in _BOOL_OPS:
        return None if kind == "boolean" else "true or false"
    if name in _NUMBER_OPS:
        return None if finite else "a finite number"
    if name in _PRIMITIVE_OPS:
        return None if kind in ("string", "boolean") or finite else "a string, number or boolean"
    if name == "$between":
        ok = (
            isinstance(operand, list)
            and len(operand) == 2
            and all(_finite(b) for b in operand)
            and operand[0] <= operand[1]
        )
        return None if ok else "[low, high]: two finite numbers with low <= high"
    # $anythingBut: one primitive, or a list of primitives of one kind.
    wanted = "a string, number or boolean, or a list of them all of one kind"
    items = operand if isinstance(operand, list) else [operand]
    kinds = {_kind(x) for x in items}
    if not kinds <= {"string", "number", "boolean"} or len(kinds) > 1:
        return wanted
    if kinds == {"number"} and not all(_finite(x) for x in items):
        return wanted
    return None
