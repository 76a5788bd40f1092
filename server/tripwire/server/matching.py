"""Which jobs an event runs: an in-memory index of the latest job versions.

The index is rebuilt per environment whenever a job changes (registration is
rare, events are not), so matching an event is a dict lookup by name plus the
filters of the few jobs listening to that name. The store changes it inside
the write that changes the job (and puts it back if that write is rolled
back), so the writes after it in the same transaction already match against
the new job: an event or an invoke stored after a disable never runs it.
"""

from __future__ import annotations

import ast
import functools
import json
import re
import reprlib
import threading
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import jsonschema._keywords
import jsonschema._utils
import re2
from jsonschema import Draft202012Validator, FormatChecker, validators
from jsonschema._utils import equal as json_equal
from jsonschema.exceptions import SchemaError, ValidationError
from jsonschema.protocols import Validator
from referencing import Registry
from referencing.exceptions import NoSuchResource, Unresolvable
from referencing.jsonschema import DRAFT202012

from . import filters
from .errors import InvalidArgument, ResourceExhausted
from .models import DEFAULT_SOURCE, Job, RunSpec

_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False


# A piece of a JSON Schema (ECMA-262) pattern: an escape (a backslash and what it
# escapes), a bracket, a dot, or a run of anything else.
_PIECE = re.compile(r"\\(?:u[0-9A-Fa-f]{4}|.)|\\|[\[\].]|[^\\\[\].]+", re.DOTALL)
# ECMA-262's class escapes: in a class, a "-" right after one is a "-" (Annex B).
_CLASS_ESCAPES = frozenset({"\\d", "\\D", "\\s", "\\S", "\\w", "\\W"})
# ECMA-262's white space and line terminators (its \s), as ranges of RE2 classes.
_SPACE = r"\t-\r \x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}\x{202f}\x{205f}\x{3000}\x{feff}"
_NOT_SPACE = (
    r"\x{0}-\x{8}\x{e}-\x{1f}\x{21}-\x{9f}\x{a1}-\x{167f}\x{1681}-\x{1fff}"
    r"\x{200b}-\x{2027}\x{202a}-\x{202e}\x{2030}-\x{205e}\x{2060}-\x{2fff}"
    r"\x{3001}-\x{fefe}\x{ff00}-\x{10ffff}"
)


@functools.lru_cache(maxsize=1024)
def _re2(pattern: str) -> Any:
    return re2.compile(ecma_to_re2(pattern), options=_RE2_OPTIONS)


def ecma_to_re2(pattern: str) -> str:
    """A JSON Schema pattern in RE2's syntax, meaning what ECMA-262 (which JSON Schema
    patterns follow, as every JavaScript validator does) says: `\\uXXXX` is RE2's
    `\\x{XXXX}`; `\\s` and `\\S` take Unicode's spaces (no-break space, U+3000, ...)
    and `.` no line terminator (RE2's know ASCII's only, and its `.` takes `\\r`).
    `\\d`, `\\w` and `\\b` are ASCII's in both."""
    out: list[str] = []
    in_class = after_class_escape = False
    for piece in _PIECE.findall(pattern):
        if after_class_escape and piece.startswith("-"):
            piece = "\\" + piece  # not a range from the escape's class (RE2 would say so)
        after_class_escape = in_class and piece in _CLASS_ESCAPES
        if piece.startswith("\\") and len(piece) == 6:
            out.append(f"\\x{{{piece[2:]}}}")
        elif piece in ("\\s", "\\S"):
            ranges = _SPACE if piece == "\\s" else _NOT_SPACE
            out.append(ranges if in_class else f"[{ranges}]")
        elif piece == "." and not in_class:
            out.append(r"[^\n\r\x{2028}\x{2029}]")
        else:
            if piece == "[":
                in_class = True
            elif piece == "]":
                in_class = False
            out.append(piece)
    return "".join(out)


class _LinearRe:
    """What jsonschema's keywords call as `re` (pattern, patternProperties and the
    additional or unevaluated properties they decide): RE2, which matches in time
    linear in the text, so that no schema can hold the event loop. Python's own `re`
    backtracks: `^(a+)+$` against thirty a's and a "!" takes half a minute."""

    @staticmethod
    def search(pattern: str, string: str) -> Any:
        return _re2(pattern).search(string)


jsonschema._keywords.re = _LinearRe  # type: ignore[attr-defined]
jsonschema._utils.re = _LinearRe  # type: ignore[attr-defined]


def _canonical(value: Any) -> Any:
    """A hashable form of a JSON value under JSON Schema's equality: 1 and 1.0 are
    equal, true and 1 are not, an object's key order does not count."""
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, dict):
        return ("object", frozenset((k, _canonical(v)) for k, v in value.items()))
    if isinstance(value, list):
        return ("array", tuple(_canonical(v) for v in value))
    return value  # a number, string or None: equal exactly when Python says so


def _unique_items(validator: Any, unique: Any, instance: Any, schema: Any) -> Any:
    """`uniqueItems` in time linear in the array. jsonschema's own compares every pair
    of elements when it cannot sort them (mixed types, objects): ten thousand strings
    and a number held the event loop for ten seconds."""
    if unique and validator.is_type(instance, "array"):
        seen: set[Any] = set()
        for item in instance:
            key = _canonical(item)
            if key in seen:
                yield ValidationError(f"{_QUOTE.repr(instance)} has non-unique elements")
                return
            seen.add(key)


# Validating one value costs at most this many steps: a keyword applied is one, an
# error it makes ERROR_STEPS more (jsonschema builds a message quoting values, and
# keywords such as anyOf collect them: about three keywords' worth of time). A
# schema whose $refs apply its parts again and again (an `allOf` of two refs to the
# level below, 40 levels deep, is 2^40 steps), or a payload failing a wide anyOf at
# every element, is stopped there, within about two seconds. A large real payload
# takes far fewer: 188 KB of objects of 20 typed fields, 13,802 (84 ms here).
MAX_STEPS = 300_000
ERROR_STEPS = 3
_budget = threading.local()


class TooCostly(Exception):
    """Validating a value took more than MAX_STEPS steps."""


def _charge(steps: int) -> None:
    _budget.left = left = getattr(_budget, "left", MAX_STEPS) - steps
    if left < 0:
        raise TooCostly(
            f"validating this value takes over {MAX_STEPS:,} steps "
            "(the schema's $refs apply its parts too many times, or it fails too many of them)"
        )


def _counted(keyword: Any, name: str = "") -> Any:
    subschemas = _SUBSCHEMAS_OF_PARTS.get(name)

    def counted(validator: Any, value: Any, instance: Any, schema: Any) -> Any:
        _charge(1)
        if subschemas is not None and filters.derived(value, subschemas):
            validator = _PathKeeping(validator)
        errors = keyword(validator, value, instance, schema)
        return None if errors is None else _charged(errors)

    return counted


def _holds_false(subschemas: Iterable[Any]) -> bool:
    return any(subschema is False for subschema in subschemas)


# The keywords that apply subschemas of their own to parts of the value, naming the
# part (the others refuse a part with a `false` of theirs by their own message):
# whether a value of theirs holds a `false` one.
_SUBSCHEMAS_OF_PARTS: dict[str, Callable[[Any], bool]] = {
    "properties": lambda value: _holds_false(value.values()),
    "patternProperties": lambda value: _holds_false(value.values()),
    "prefixItems": _holds_false,
}


class _PathKeeping:
    """The validator as a keyword sees it, but an error of a `false` subschema
    keeps the path to the part it refused: jsonschema's descend drops it, so that
    `{"properties": {"d": false}}` refused `{"d": 1}` at the root."""

    __slots__ = ("_validator",)

    def __init__(self, validator: Any) -> None:
        self._validator = validator

    def __getattr__(self, name: str) -> Any:
        return getattr(self._validator, name)

    def descend(
        self,
        instance: Any,
        schema: Any,
        path: Any = None,
        schema_path: Any = None,
        resolver: Any = None,
    ) -> Iterator[ValidationError]:
        if schema is not False:
            yield from self._validator.descend(instance, schema, path, schema_path, resolver)
            return
        error = ValidationError(  # as jsonschema's descend makes it, with no keyword
            f"{_FALSE_SCHEMA}{_QUOTE.repr(instance)}",  # the full repr costs the value's size
            validator=None,  # type: ignore[arg-type]
            validator_value=None,
            instance=instance,
            schema=schema,
        )
        if path is not None:
            error.path.appendleft(path)
        if schema_path is not None:
            error.schema_path.appendleft(schema_path)
        yield error


def _charged(errors: Iterable[ValidationError]) -> Iterator[ValidationError]:
    for error in errors:
        if not getattr(error, "_tripwire_charged", False):  # once, where it is made
            error._tripwire_charged = True  # type: ignore[attr-defined]
            _charge(ERROR_STEPS)
        yield error


def _budgeted() -> None:
    """A new value to validate: a full budget of steps."""
    _budget.left = MAX_STEPS


# All the values one call validates (an event against every job it matches, a
# SendEvents batch, a round of delayed deliveries) cost at most this many steps
# together, half a minute at worst instead of hours: past it the call is refused,
# storing nothing. A full batch (3 MiB) of typed objects against five schemas, or
# a 700 KB event against eighteen, takes about 1,000,000.
MAX_CALL_STEPS = 5_000_000


@contextmanager
def call_budget(shared: bool = True) -> Iterator[None]:
    """Validation inside shares MAX_CALL_STEPS (not `shared`: each value has its own
    budget only); a value the shared budget cannot pay for raises ResourceExhausted."""
    outer = getattr(_budget, "call_left", None)
    _budget.call_left = MAX_CALL_STEPS if shared else None
    try:
        yield
    finally:
        _budget.call_left = outer


class _JsonWords(reprlib.Repr):
    """Quotes a value in JSON's words for null, true and false (the clients reading
    the message may never have seen Python's None, True and False); strings stay in
    single quotes, which read cleanly inside a JSON reply."""

    def repr_NoneType(self, x: None, level: int) -> str:
        return "null"

    def repr_bool(self, x: bool, level: int) -> str:
        return "true" if x else "false"


# How an error message quotes a value (the payload's part at fault, an enum's list, a
# const): at most ten elements of a list or object, three levels down, strings cut;
# whatever its size, in bounded time.
_QUOTE = _JsonWords()
_QUOTE.maxlist = _QUOTE.maxtuple = _QUOTE.maxdict = _QUOTE.maxset = 10
_QUOTE.maxlevel = 3
_QUOTE.maxstring = _QUOTE.maxother = 80


def _enum_set(values: list[Any]) -> frozenset[Any]:
    return frozenset(map(_canonical, values))


def _enum(validator: Any, enums: Any, instance: Any, schema: Any) -> Any:
    """`enum` in constant time per scalar value (jsonschema's compares it with every
    allowed value, and quotes them all in each error: 30,000 values made a
    200-element payload take seconds). An object or array is compared value by
    value, as jsonschema does, which stops at the first difference (making a
    large one canonical for each check would cost its whole size every time)."""
    if isinstance(instance, (dict, list)):
        found = any(json_equal(instance, value) for value in enums)
    else:
        found = _canonical(instance) in filters.derived(enums, _enum_set)
    if not found:
        yield ValidationError(f"{_QUOTE.repr(instance)} is not one of {_QUOTE.repr(enums)}")


def _const(validator: Any, const: Any, instance: Any, schema: Any) -> Any:
    """`const` under JSON Schema's equality, its value quoted short."""
    if not json_equal(instance, const):
        yield ValidationError(f"{_QUOTE.repr(const)} was expected")


_JSONSCHEMA_ITEMS = Draft202012Validator.VALIDATORS["items"]


def _items(validator: Any, items: Any, instance: Any, schema: Any) -> Any:
    """`items`, the extra items a `false` refuses quoted short (jsonschema quotes
    them all, in Python's words: `found 1 extra: None`)."""
    if items is not False:
        yield from _JSONSCHEMA_ITEMS(validator, items, instance, schema)
        return
    if not validator.is_type(instance, "array"):
        return
    prefix = len(schema.get("prefixItems", []))
    extra = len(instance) - prefix
    if extra > 0:
        rest = instance[prefix:] if extra != 1 else instance[prefix]
        yield ValidationError(
            f"Expected at most {prefix} item{'' if prefix == 1 else 's'} but found {extra} "
            f"extra: {_QUOTE.repr(rest)}"
        )


def _unevaluated_items(validator: Any, unevaluated: Any, instance: Any, schema: Any) -> Any:
    """`unevaluatedItems` as jsonschema applies it, the items quoted short (it quotes
    every one, in Python's words: `(None was unexpected)`)."""
    if not validator.is_type(instance, "array"):
        return
    evaluated = jsonschema._utils.find_evaluated_item_indexes_by_schema(validator, instance, schema)
    items = [item for index, item in enumerate(instance) if index not in evaluated]
    if items:
        verb = "was" if len(items) == 1 else "were"
        quoted = ", ".join(_QUOTE.repr(item) for item in items[: _QUOTE.maxlist])
        more = ", ..." if len(items) > _QUOTE.maxlist else ""
        yield ValidationError(
            f"Unevaluated items are not allowed ({quoted}{more} {verb} unexpected)"
        )


_JSONSCHEMA_ONE_OF = Draft202012Validator.VALIDATORS["oneOf"]


def _one_of(validator: Any, one_of: Any, instance: Any, schema: Any) -> Any:
    """`oneOf`, the subschemas a value is valid under more than one of quoted short
    in JSON's words (jsonschema writes them in Python's: `{'const': None}`)."""
    for error in _JSONSCHEMA_ONE_OF(validator, one_of, instance, schema):
        if not error.context:  # valid under more than one (the other has the failures)
            valid = [s for s in one_of if validator.evolve(schema=s).is_valid(instance)]
            quoted = ", ".join(_QUOTE.repr(s) for s in valid)
            error.message = f"{_QUOTE.repr(instance)} is valid under each of {quoted}"
        yield error


# Draft 2020-12 with uniqueItems, enum and const in linear time, every keyword counted.
SchemaValidator: type[Validator] = validators.extend(  # type: ignore[no-untyped-call]
    Draft202012Validator,
    {
        name: _counted(keyword, name)
        for name, keyword in {
            **Draft202012Validator.VALIDATORS,
            "uniqueItems": _unique_items,
            "enum": _enum,
            "const": _const,
            "items": _items,
            "unevaluatedItems": _unevaluated_items,
            "oneOf": _one_of,
        }.items()
    },
)


def _no_retrieval(uri: str) -> Any:
    """What resolves a $ref outside the schema: nothing. jsonschema's default would
    fetch the URL, from the server, for every payload."""
    raise NoSuchResource(uri)


# Where a validator looks up what its schema does not hold: nowhere.
_LOCAL_ONLY: Registry[Any] = Registry(retrieve=_no_retrieval)  # type: ignore[call-arg]


def _validator(schema: Mapping[str, Any]) -> Validator:
    return SchemaValidator(schema, registry=_LOCAL_ONLY)


# Where a schema holds schemas (Draft 2020-12, and the older names pydantic and
# others still write). Anything else (const, enum, default, examples, unknown
# keywords) is data, whatever keys it has.
_ONE_SCHEMA = frozenset(
    {
        "additionalItems",
        "additionalProperties",
        "contains",
        "contentSchema",
        "else",
        "if",
        "items",
        "not",
        "propertyNames",
        "then",
        "unevaluatedItems",
        "unevaluatedProperties",
    }
)
_SCHEMA_LISTS = frozenset({"allOf", "anyOf", "items", "oneOf", "prefixItems"})
_SCHEMA_MAPS = frozenset(
    {"$defs", "definitions", "dependentSchemas", "patternProperties", "properties"}
)


def _schemas(root: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema object in a schema, with its JSON pointer, the root first: those
    its keywords hold, and those its local `$ref`s point to (anywhere in the
    document, where they are schemas whatever key holds them), each once."""
    seen: set[int] = set()
    pending: list[tuple[str, Any]] = [("", root)]
    while pending:
        path, node = pending.pop()
        for where, schema in _held(node, path):
            if id(schema) in seen:
                continue
            seen.add(id(schema))
            yield where, schema
            for key in ("$ref", "$dynamicRef"):
                ref = schema.get(key)
                if isinstance(ref, str) and ref.startswith("#/"):
                    target = _resolve(root, ref)
                    if isinstance(target, dict):
                        pending.append((ref[1:], target))


def _held(node: Any, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """`node`, if a schema object, and the schemas its keywords hold, depth first."""
    if not isinstance(node, dict):
        return
    yield path, node
    for key, value in node.items():
        where = f"{path}/{_pointer(key)}"
        if key in _ONE_SCHEMA and isinstance(value, dict):
            yield from _held(value, where)
        elif key in _SCHEMA_LISTS and isinstance(value, list):
            for i, item in enumerate(value):
                yield from _held(item, f"{where}/{i}")
        elif key in _SCHEMA_MAPS and isinstance(value, dict):
            for name, item in value.items():
                yield from _held(item, f"{where}/{_pointer(name)}")


def _resolve(root: Any, ref: str) -> Any:
    """What a local JSON-pointer `$ref` ("#/a/b") points to, or None."""
    node = root
    for token in urllib.parse.unquote(ref[2:]).split("/"):
        token = token.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and token in node:
            node = node[token]
        elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
            node = node[int(token)]
        else:
            return None
    return node


def _pointer(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def _patterns(schema: Any) -> list[tuple[str, str]]:
    """Every regular expression of a schema (`pattern`, the keys of
    `patternProperties`), with its JSON pointer."""
    found: list[tuple[str, str]] = []
    for path, node in _schemas(schema):
        if isinstance(node.get("pattern"), str):
            found.append((f"{path}/pattern", node["pattern"]))
        if isinstance(node.get("patternProperties"), dict):
            keyed = node["patternProperties"]
            found += [(f"{path}/patternProperties/{_pointer(p)}", p) for p in keyed]
    return found


def _refs(schema: Any) -> list[tuple[str, str]]:
    """Every "$ref" (or "$dynamicRef") of a schema, with its JSON pointer."""
    return [
        (f"{path}/{key}", node[key])
        for path, node in _schemas(schema)
        for key in ("$ref", "$dynamicRef")
        if isinstance(node.get(key), str)
    ]


def _nested_ids(schema: Any) -> bool:
    """Whether a schema below the root has its own $id (a new base for its refs)."""
    return any(path and isinstance(node.get("$id"), str) for path, node in _schemas(schema))


@dataclass(frozen=True)
class CompiledJob:
    job: Job
    names: frozenset[str]
    source: str
    filter: Mapping[str, Any] | None
    context_filter: Mapping[str, Any] | None
    validator: Validator | None

    @property
    def listens(self) -> bool:
        return self.job.enabled and bool(self.names)


# The metaschema's formats without `regex`, which is Python's `re`: it refuses what
# RE2 takes (`\p{L}`, `(?<name>...)`). check_schema tries every pattern with RE2,
# as it will be matched.
_SCHEMA_FORMATS = FormatChecker(())
_SCHEMA_FORMATS.checkers = {
    name: checker
    for name, checker in Draft202012Validator.FORMAT_CHECKER.checkers.items()
    if name != "regex"
}


def check_schema(schema: Mapping[str, Any], field: str) -> Validator:
    try:
        SchemaValidator.check_schema(dict(schema), format_checker=_SCHEMA_FORMATS)  # type: ignore[call-arg]
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.path)
        raise InvalidArgument(
            f"{field}{'/' + where if where else ''}", f"not a valid JSON Schema: {_message(exc)}"
        ) from None
    for path, pattern in _patterns(schema):
        try:
            _re2(pattern)
        except re2.error as exc:
            raise InvalidArgument(
                f"{field}{path}",
                f"pattern {pattern!r} cannot be used: {_re2_reason(exc)} (patterns are "
                "matched by RE2, in linear time, without backreferences or lookaround)",
            ) from None
    refs = _refs(schema)
    for path, ref in refs:
        if not ref.startswith("#"):
            raise InvalidArgument(
                f"{field}{path}", f"$ref {ref!r} points outside the schema; only local refs work"
            )
    if not _nested_ids(schema):  # with none, every local ref resolves from the root
        resolver = Registry().with_resource("", DRAFT202012.create_resource(schema)).resolver("")
        for path, ref in refs:
            try:
                resolver.lookup(ref)
            # A pointer that names a list's element by a word ("#/required/first")
            # fails inside the lookup with ValueError, not Unresolvable.
            except (Unresolvable, LookupError, TypeError, ValueError):
                raise InvalidArgument(
                    f"{field}{path}", f"$ref {ref!r} points to nothing in the schema"
                ) from None
    validator = _validator(schema)
    for probe in _PROBES:
        _budgeted()
        try:
            validator.is_valid(probe)
        except RecursionError:
            raise InvalidArgument(
                field, "refers to itself without end ($ref cycle); it can validate nothing"
            ) from None
        except Exception as exc:  # whatever else keeps it from being applied
            raise InvalidArgument(field, f"cannot be applied: {exc}") from None
    return validator


# One of each JSON type: a $ref cycle that applies to every value shows on all of them.
_PROBES: tuple[Any, ...] = (None, True, 0, "", [], {})


# A run keeps this many validation errors, each message cut to this length:
# jsonschema quotes the offending value, which may be as large as the payload,
# and the run travels in every reply that shows it.
MAX_VALIDATION_ERRORS = 10
MAX_VALIDATION_MESSAGE = 200


def schema_errors(validator: Validator, payload: Any) -> tuple[dict[str, str], ...]:
    """How `payload` fails the schema, as [{path, message}] (JSON pointer paths):
    the first MAX_VALIDATION_ERRORS by path, messages cut short."""
    call_left: int | None = getattr(_budget, "call_left", None)
    allowed = MAX_STEPS if call_left is None else min(MAX_STEPS, call_left)
    _budget.left = allowed
    try:
        errors = sorted(validator.iter_errors(payload), key=_by_path)
    except TooCostly as exc:
        if allowed < MAX_STEPS:  # the call's budget ran out, not the value's
            raise ResourceExhausted(
                f"validating the payloads of this call against the schemas of the jobs "
                f"they match takes over {MAX_CALL_STEPS:,} steps: send fewer or smaller "
                "events per call, or match them against fewer or simpler schemas"
            ) from None
        return ({"path": "", "message": _cut(f"the schema cannot be applied: {exc}")},)
    except RecursionError:  # a $ref cycle only some payloads reach, or a payload too deep
        return ({"path": "", "message": "the schema cannot be applied: it recurses without end"},)
    except Exception as exc:  # a user's schema must never stop delivery; registration
        # rejects what it can (unresolvable refs, top-level cycles)
        return ({"path": "", "message": _cut(f"the schema cannot be applied: {exc}")},)
    finally:
        if call_left is not None:
            _budget.call_left = call_left - (allowed - max(_budget.left, 0))
    kept = tuple(
        {
            "path": _cut("".join(f"/{_pointer(str(p))}" for p in _where(e))),
            "message": _cut(_message(e)),
        }
        for e in errors[:MAX_VALIDATION_ERRORS]
    )
    if len(errors) > MAX_VALIDATION_ERRORS:
        more = len(errors) - MAX_VALIDATION_ERRORS
        kept += ({"path": "...", "message": f"and {more} more"},)
    return kept


# The keywords whose messages _message keeps as they are: this module's own, which
# quote with _QUOTE already, and jsonschema's that do not begin with the value at
# fault (for those, quoting the value, a whole 1 MiB object missing a property,
# would only cost its size again for each error).
_KEPT = frozenset(
    {"const", "enum", "uniqueItems", "items", "unevaluatedItems"}
    | {"required", "dependentRequired", "additionalProperties", "unevaluatedProperties"}
    | {"minContains", "maxContains"}
)
_REQUIRED = " is a required property"
_FALSE_SCHEMA = "False schema does not allow "


def _message(error: Any) -> str:
    """jsonschema's message with the value at fault quoted by _QUOTE: jsonschema
    writes Python's repr of it in full (`None is not of type 'string'`, a whole
    array before what is wrong with it), where this has `null`, and a large value
    cut short so that the message still says what is wrong within its length."""
    message: str = error.message
    if error.validator in _KEPT:
        return message
    instance = error.instance
    if error.validator is None and message.startswith(_FALSE_SCHEMA):  # no keyword's
        return f"{_QUOTE.repr(instance)} is not allowed here (the schema here is false)"
    if error.validator == "not":  # jsonschema quotes the schema in Python's words too
        not_schema = _QUOTE.repr(error.validator_value)
        return f"{_QUOTE.repr(instance)} should not be valid under {not_schema}"
    python = repr(instance)
    if message.startswith(python):
        return _QUOTE.repr(instance) + message[len(python) :]
    return message


def _where(error: Any) -> list[Any]:
    """Where in the payload an error is: a missing required property at its own
    path (where the value should be, as v2's zod puts it), not at its object's. The
    name is read back from the message, which jsonschema writes as `repr(name)`."""
    path = list(error.absolute_path)
    if error.validator == "required" and error.message.endswith(_REQUIRED):
        try:
            name = ast.literal_eval(error.message.removesuffix(_REQUIRED))
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return path
        if isinstance(name, str):
            path.append(name)
    return path


def _by_path(error: Any) -> list[tuple[int, int, str]]:
    """Errors in path order, array indexes as numbers (/2 before /10)."""
    return [(0, p, "") if isinstance(p, int) else (1, 0, str(p)) for p in _where(error)]


def _cut(text: str) -> str:
    if len(text) <= MAX_VALIDATION_MESSAGE:
        return text
    return text[: MAX_VALIDATION_MESSAGE - 3] + "..."


def compile_job(job: Job) -> CompiledJob:
    kind, spec = next(iter(job.trigger.items()))
    schema = spec.get("schema") if kind in ("event", "invoke") else None
    validator = _validator(schema) if schema else None
    if kind != "event":
        return CompiledJob(job, frozenset(), "", None, None, validator)
    return CompiledJob(
        job=job,
        names=frozenset(spec.get("names", ())),
        source=spec.get("source") or DEFAULT_SOURCE,
        filter=spec.get("filter") or None,
        context_filter=spec.get("context_filter") or None,
        validator=validator,
    )


def _passes(key: str, value: Any, filter: Mapping[str, Any]) -> bool:
    """v2 matches the event record `{payload, context}` against `{payload: filter}`, so
    a filter on an array payload (or context) passes when any element does."""
    return filters.matches({key: value}, {key: filter})


def run_spec(compiled: CompiledJob, payload: Any) -> RunSpec:
    errors = schema_errors(compiled.validator, payload) if compiled.validator else ()
    return RunSpec(compiled.job.id, compiled.job.version, errors)


@dataclass(frozen=True)
class Verdict:
    job: Job
    matched: bool
    reason: str
    validation_errors: tuple[dict[str, str], ...] = ()


class _EnvIndex:
    def __init__(self, jobs: Mapping[str, CompiledJob]) -> None:
        self.jobs = dict(jobs)
        by_name: dict[str, list[CompiledJob]] = {}
        for compiled in self.jobs.values():
            if compiled.listens:
                for name in compiled.names:
                    by_name.setdefault(name, []).append(compiled)
        self.by_name = by_name


class JobIndex:
    """The latest version of every job, per environment."""

    def __init__(self) -> None:
        self._envs: dict[str, _EnvIndex] = {}

    def load(self, latest_jobs: Iterable[Job]) -> None:
        grouped: dict[str, dict[str, CompiledJob]] = {}
        for job in latest_jobs:
            grouped.setdefault(job.env, {})[job.id] = compile_job(job)
        self._envs = {env: _EnvIndex(jobs) for env, jobs in grouped.items()}

    def put(self, latest: Job) -> None:
        """Record `latest` as the version new events run for its job id."""
        current = self._envs.get(latest.env)
        jobs = dict(current.jobs) if current else {}
        jobs[latest.id] = compile_job(latest)
        # Swap in a new snapshot: readers on other threads never see a half-built index.
        self._envs = {**self._envs, latest.env: _EnvIndex(jobs)}

    def restore(self, env: str, job_id: str, previous: CompiledJob | None) -> None:
        """Put back what `get` returned before a `put` that was rolled back."""
        current = self._envs.get(env)
        jobs = dict(current.jobs) if current else {}
        if previous is None:
            jobs.pop(job_id, None)
        else:
            jobs[job_id] = previous
        self._envs = {**self._envs, env: _EnvIndex(jobs)}

    def get(self, env: str, job_id: str) -> CompiledJob | None:
        index = self._envs.get(env)
        return index.jobs.get(job_id) if index else None

    def match(self, env: str, name: str, source: str, payload: Any, context: Any) -> list[RunSpec]:
        index = self._envs.get(env)
        if index is None:
            return []
        specs = []
        for compiled in index.by_name.get(name, ()):
            if compiled.source != source:
                continue
            if compiled.filter and not _passes("payload", payload, compiled.filter):
                continue
            if compiled.context_filter and not _passes("context", context, compiled.context_filter):
                continue
            specs.append(run_spec(compiled, payload))
        return specs

    def explain(
        self, env: str, name: str, source: str, payload: Any, context: Any
    ) -> list[Verdict]:
        """A verdict for every event-triggered job of `env`, matches first."""
        index = self._envs.get(env)
        verdicts = []
        for compiled in index.jobs.values() if index else ():
            if compiled.job.trigger_kind != "event":
                continue
            verdicts.append(_verdict(compiled, name, source, payload, context))
        verdicts.sort(key=lambda v: (not v.matched, v.job.id))
        return verdicts


def _verdict(compiled: CompiledJob, name: str, source: str, payload: Any, context: Any) -> Verdict:
    job = compiled.job
    if not job.enabled:
        return Verdict(job, False, f"version {job.version} is disabled")
    if name not in compiled.names:
        names = json.dumps(sorted(compiled.names))
        return Verdict(job, False, f"name {json.dumps(name)} is not one of {names}")
    if source != compiled.source:
        return Verdict(
            job, False, f"source {json.dumps(source)} is not {json.dumps(compiled.source)}"
        )
    if compiled.filter:
        why = filters.explain({"payload": payload}, {"payload": compiled.filter}, "")
        if why is not None:
            return Verdict(job, False, f"filter: {why}")
    if compiled.context_filter:
        why = filters.explain({"context": context}, {"context": compiled.context_filter}, "")
        if why is not None:
            return Verdict(job, False, f"context_filter: {why}")
    spec = run_spec(compiled, payload)
    if spec.validation_errors:
        return Verdict(
            job,
            True,
            "matches, but the payload fails the schema: the run would be INVALID_PAYLOAD",
            spec.validation_errors,
        )
    return Verdict(job, True, "matches")


def _re2_reason(exc: Exception) -> str:
    """RE2's complaint, which comes as bytes."""
    reason = exc.args[0] if exc.args else exc
    return reason.decode("utf-8", "replace") if isinstance(reason, bytes) else str(reason)
