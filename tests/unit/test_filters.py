"""EventFilter: v2's matching rules, stricter validation, and explanations."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tripwire.server.errors import InvalidArgument
from tripwire.server.filters import OPERATORS as OPERATOR_NAMES
from tripwire.server.filters import _same, explain, matches, validate_filter

# (id, value, filter, expected)
MATCH_CASES: list[tuple[str, Any, dict[str, Any], bool]] = [
    # --- the whole value, and empty filters
    ("empty filter, object", {"a": 1}, {}, True),
    ("empty filter, null value", None, {}, True),
    ("null value, non-empty filter", None, {"a": [1]}, False),
    ("empty list passes", {"a": 1}, {"a": []}, True),
    ("empty list passes when key missing", {}, {"a": []}, True),
    ("empty nested filter, key missing", {}, {"a": {}}, True),
    ("empty nested filter, empty list value", {"a": []}, {"a": {}}, False),
    # --- primitive lists: OR with strict equality
    ("string in list", {"plan": "pro"}, {"plan": ["pro", "team"]}, True),
    ("string not in list", {"plan": "free"}, {"plan": ["pro", "team"]}, False),
    ("string list, key missing", {}, {"plan": ["pro"]}, False),
    ("string list, null value", {"plan": None}, {"plan": ["pro"]}, False),
    ("string equality is case-sensitive", {"plan": "Pro"}, {"plan": ["pro"]}, False),
    ("number in list", {"n": 2}, {"n": [1, 2]}, True),
    ("int equals float", {"n": 1}, {"n": [1.0]}, True),
    ("float equals int", {"n": 1.0}, {"n": [1]}, True),
    ("number never equals numeric string", {"n": "1"}, {"n": [1]}, False),
    ("numeric string never equals number", {"n": 1}, {"n": ["1"]}, False),
    ("true never equals 1", {"b": True}, {"b": [1]}, False),
    ("1 never equals true", {"b": 1}, {"b": [True]}, False),
    ("0 never equals false", {"b": 0}, {"b": [False]}, False),
    ("boolean in list", {"b": False}, {"b": [False]}, True),
    ("list value never equals a primitive list", {"tags": ["a"]}, {"tags": ["a"]}, False),
    ("v2 footgun: tags [a] vs [a, b]", {"tags": ["a"]}, {"tags": ["a", "b"]}, False),
    ("object value never equals a primitive", {"a": {"b": 1}}, {"a": [1]}, False),
    # --- keys AND
    ("two keys both pass", {"a": 1, "b": "x"}, {"a": [1], "b": ["x"]}, True),
    ("two keys one fails", {"a": 1, "b": "y"}, {"a": [1], "b": ["x"]}, False),
    # --- nested objects
    ("nested match", {"user": {"age": 30}}, {"user": {"age": [30]}}, True),
    ("nested mismatch", {"user": {"age": 31}}, {"user": {"age": [30]}}, False),
    ("nested, parent missing", {}, {"user": {"age": [30]}}, False),
    ("nested, parent null", {"user": None}, {"user": {"age": [30]}}, False),
    (
        "v2 footgun: $exists false under a missing parent",
        {},
        {"a": {"b": [{"$exists": False}]}},
        False,
    ),
    ("$exists false under a present parent", {"a": {}}, {"a": {"b": [{"$exists": False}]}}, True),
    ("primitive parent has no fields", {"a": 5}, {"a": {"b": [{"$exists": False}]}}, True),
    ("primitive parent, field required", {"a": 5}, {"a": {"b": [5]}}, False),
    (
        "array of objects: any element",
        {"items": [{"sku": "a"}, {"sku": "b"}]},
        {"items": {"sku": ["b"]}},
        True,
    ),
    (
        "array of objects: none",
        {"items": [{"sku": "a"}, {"sku": "c"}]},
        {"items": {"sku": ["b"]}},
        False,
    ),
    ("array of objects: empty", {"items": []}, {"items": {"sku": ["b"]}}, False),
    (
        "array element must match all keys at once",
        {"items": [{"sku": "a", "n": 1}, {"sku": "b", "n": 2}]},
        {"items": {"sku": ["a"], "n": [2]}},
        False,
    ),
    ("array with null element", {"items": [None, {"sku": "b"}]}, {"items": {"sku": ["b"]}}, True),
    ("deep nesting", {"a": {"b": {"c": {"d": "x"}}}}, {"a": {"b": {"c": {"d": ["x"]}}}}, True),
    # --- operator lists: AND
    ("two operators both pass", {"age": 30}, {"age": [{"$gt": 20}, {"$lt": 40}]}, True),
    ("two operators one fails", {"age": 45}, {"age": [{"$gt": 20}, {"$lt": 40}]}, False),
    # --- $startsWith / $endsWith
    ("$startsWith yes", {"f": "images/a.png"}, {"f": [{"$startsWith": "images/"}]}, True),
    (
        "$startsWith case-sensitive",
        {"f": "Images/a.png"},
        {"f": [{"$startsWith": "images/"}]},
        False,
    ),
    ("$startsWith non-string", {"f": 12}, {"f": [{"$startsWith": "1"}]}, False),
    ("$startsWith missing", {}, {"f": [{"$startsWith": ""}]}, False),
    ("$endsWith yes", {"f": "a.png"}, {"f": [{"$endsWith": ".png"}]}, True),
    ("$endsWith no", {"f": "a.jpg"}, {"f": [{"$endsWith": ".png"}]}, False),
    ("$endsWith missing", {}, {"f": [{"$endsWith": ".png"}]}, False),
    # --- $ignoreCaseEquals
    ("$ignoreCaseEquals case", {"s": "HeLLo"}, {"s": [{"$ignoreCaseEquals": "hello"}]}, True),
    (
        "$ignoreCaseEquals accent-sensitive",
        {"s": "resume"},
        {"s": [{"$ignoreCaseEquals": "résumé"}]},
        False,
    ),
    (
        "$ignoreCaseEquals accents + case",
        {"s": "RÉSUMÉ"},
        {"s": [{"$ignoreCaseEquals": "résumé"}]},
        True,
    ),
    (
        "$ignoreCaseEquals NFD vs NFC",
        {"s": "re\u0301sume\u0301"},
        {"s": [{"$ignoreCaseEquals": "résumé"}]},
        True,
    ),
    # The truth of these is Node's "a".localeCompare("b", undefined, {sensitivity: "accent"}).
    *[
        (f"$ignoreCaseEquals {a!r} {b!r}", {"s": a}, {"s": [{"$ignoreCaseEquals": b}]}, same)
        for a, b, same in [
            ("straße", "STRASSE", False),
            ("\uff21\uff22\uff23", "abc", True),  # fullwidth ABC
            ("x²", "X2", True),
            ("Ⅸ", "ix", True),
            ("ΟΔΟΣ", "οδος", True),
            ("ﬁle", "FILE", True),
            ("ǅ", "dž", True),
            ("résumé", "RESUME", False),
            ("カタカナ", "かたかな", True),
            ("\uff76\uff80\uff76\uff85", "かたかな", True),  # half-width katakana
            ("ちょっと", "チヨツト", True),
            ("co\u00adop", "coop", True),  # a soft hyphen
            ("a\u200bb", "AB", True),  # a zero-width space
            ("a\tb", "ab", False),
            ("\u0661\u0662\u0663", "123", True),  # Arabic-Indic digits
            ("\u0967\u0968\u0969", "123", True),  # Devanagari digits
            ("\u2460", "1", True),  # a circled digit
            ("\u0661\u0662\u0663", "124", False),
        ]
    ],
    ("$ignoreCaseEquals non-string", {"s": 1}, {"s": [{"$ignoreCaseEquals": "1"}]}, False),
    ("$ignoreCaseEquals missing", {}, {"s": [{"$ignoreCaseEquals": "x"}]}, False),
    # --- $exists
    ("$exists true, present", {"a": 0}, {"a": [{"$exists": True}]}, True),
    ("$exists true, null counts", {"a": None}, {"a": [{"$exists": True}]}, True),
    ("$exists true, missing", {}, {"a": [{"$exists": True}]}, False),
    ("$exists false, missing", {}, {"a": [{"$exists": False}]}, True),
    ("$exists false, null", {"a": None}, {"a": [{"$exists": False}]}, False),
    # --- $isNull
    ("$isNull true, null", {"a": None}, {"a": [{"$isNull": True}]}, True),
    ("$isNull true, value", {"a": 0}, {"a": [{"$isNull": True}]}, False),
    ("$isNull true, missing", {}, {"a": [{"$isNull": True}]}, False),
    ("$isNull false, value", {"a": 0}, {"a": [{"$isNull": False}]}, True),
    ("$isNull false, null", {"a": None}, {"a": [{"$isNull": False}]}, False),
    ("$isNull false, missing", {}, {"a": [{"$isNull": False}]}, True),
    # --- $anythingBut
    ("$anythingBut scalar, other", {"a": "x"}, {"a": [{"$anythingBut": "y"}]}, True),
    ("$anythingBut scalar, same", {"a": "y"}, {"a": [{"$anythingBut": "y"}]}, False),
    ("$anythingBut list, in", {"a": 2}, {"a": [{"$anythingBut": [1, 2]}]}, False),
    ("$anythingBut list, out", {"a": 3}, {"a": [{"$anythingBut": [1, 2]}]}, True),
    ("$anythingBut strict: true vs 1", {"a": True}, {"a": [{"$anythingBut": 1}]}, True),
    ("$anythingBut int vs float", {"a": 1.0}, {"a": [{"$anythingBut": 1}]}, False),
    ("$anythingBut missing", {}, {"a": [{"$anythingBut": "y"}]}, True),
    ("$anythingBut null", {"a": None}, {"a": [{"$anythingBut": "y"}]}, True),
    # --- $gt $gte $lt $lte
    ("$gt yes", {"n": 21}, {"n": [{"$gt": 20}]}, True),
    ("$gt equal", {"n": 20}, {"n": [{"$gt": 20}]}, False),
    ("$gt float", {"n": 20.5}, {"n": [{"$gt": 20}]}, True),
    ("$gt numeric string", {"n": "21"}, {"n": [{"$gt": 20}]}, False),
    ("$gt bool is not a number", {"n": True}, {"n": [{"$gt": 0}]}, False),
    ("$gt missing", {}, {"n": [{"$gt": 0}]}, False),
    ("$gte equal", {"n": 20}, {"n": [{"$gte": 20}]}, True),
    ("$gte less", {"n": 19}, {"n": [{"$gte": 20}]}, False),
    ("$gte missing", {}, {"n": [{"$gte": 0}]}, False),
    ("$lt yes", {"n": -1}, {"n": [{"$lt": 0}]}, True),
    ("$lt equal", {"n": 0}, {"n": [{"$lt": 0}]}, False),
    ("$lt null", {"n": None}, {"n": [{"$lt": 1}]}, False),
    ("$lt missing", {}, {"n": [{"$lt": 1}]}, False),
    ("$lte equal", {"n": 0}, {"n": [{"$lte": 0}]}, True),
    ("$lte bool", {"n": False}, {"n": [{"$lte": 0}]}, False),
    ("$lte missing", {}, {"n": [{"$lte": 1}]}, False),
    # --- $between (inclusive)
    ("$between low end", {"n": 1}, {"n": [{"$between": [1, 5]}]}, True),
    ("$between high end", {"n": 5}, {"n": [{"$between": [1, 5]}]}, True),
    ("$between inside", {"n": 2.5}, {"n": [{"$between": [1, 5]}]}, True),
    ("$between outside", {"n": 5.01}, {"n": [{"$between": [1, 5]}]}, False),
    ("$between string", {"n": "3"}, {"n": [{"$between": [1, 5]}]}, False),
    ("$between missing", {}, {"n": [{"$between": [1, 5]}]}, False),
    # --- $includes
    ("$includes yes", {"tags": ["a", "b"]}, {"tags": [{"$includes": "a"}]}, True),
    ("$includes no", {"tags": ["b"]}, {"tags": [{"$includes": "a"}]}, False),
    ("$includes strict", {"tags": [1]}, {"tags": [{"$includes": "1"}]}, False),
    ("$includes true vs 1", {"tags": [1]}, {"tags": [{"$includes": True}]}, False),
    ("$includes int vs float", {"tags": [1.0]}, {"tags": [{"$includes": 1}]}, True),
    ("$includes on a string", {"tags": "abc"}, {"tags": [{"$includes": "a"}]}, False),
    ("$includes missing", {}, {"tags": [{"$includes": "a"}]}, False),
    # --- $not
    ("$not primitive differs", {"a": "x"}, {"a": [{"$not": "y"}]}, True),
    ("$not primitive equal", {"a": "y"}, {"a": [{"$not": "y"}]}, False),
    ("$not strict", {"a": 1}, {"a": [{"$not": "1"}]}, True),
    ("$not array without", {"a": ["x"]}, {"a": [{"$not": "y"}]}, True),
    ("$not array with", {"a": ["x", "y"]}, {"a": [{"$not": "y"}]}, False),
    ("$not null fails", {"a": None}, {"a": [{"$not": "y"}]}, False),
    ("$not object fails", {"a": {"b": 1}}, {"a": [{"$not": "y"}]}, False),
    ("$not missing fails", {}, {"a": [{"$not": "y"}]}, False),
]


@pytest.mark.parametrize(
    ("value", "filter", "expected"),
    [pytest.param(v, f, e, id=i) for i, v, f, e in MATCH_CASES],
)
def test_matches(value: Any, filter: dict[str, Any], expected: bool) -> None:
    validate_filter(filter, "filter")
    assert matches(value, filter) is expected
    assert (explain(value, filter, "payload") is None) is expected


# (id, filter, path in the error, words in the problem)
INVALID_CASES: list[tuple[str, Any, str, str]] = [
    ("not an object", ["a"], "f", "must be an object, got a list"),
    ("bare string", {"plan": "pro"}, "f.plan", 'write ["pro"]'),
    ("bare number", {"a": {"b": 1}}, "f.a.b", "write [1]"),
    ("bare null", {"a": None}, "f.a", '[{"$isNull": true}]'),
    ("bare operator object", {"age": {"$gt": 20}}, "f.age.$gt", "inside a list"),
    ("operator as a key", {"age": {"$between": [18, 65]}}, "f.age.$between", "[18, 65]}]"),
    ("list operator as a key", {"tags": {"$includes": ["a"]}}, "f.tags.$includes", "a list"),
    # As v2's value lists read: the hint takes the value out of its list of one.
    ("operand in a list", {"age": {"$gte": [18]}}, "f.age.$gte", 'write [{"$gte": 18}]'),
    ("string operand in a list", {"a": {"$startsWith": ["x"]}}, "f.a.$startsWith", '"x"}]'),
    ("list operand kept", {"a": {"$anythingBut": ["x"]}}, "f.a.$anythingBut", '["x"]}]'),
    ("operator at the top", {"$exists": [True]}, "f.$exists", "inside a list"),
    ("strings with numbers", {"a": ["x", 1]}, "f.a[1]", "only strings"),
    ("bool with number", {"a": [True, 1]}, "f.a[1]", "only booleans"),
    ("number with bool", {"a": [1, False]}, "f.a[1]", "only numbers"),
    ("primitive with operator", {"a": ["x", {"$gt": 1}]}, "f.a[1]", "this is an operator"),
    ("operator with primitive", {"a": [{"$gt": 1}, 2]}, "f.a[1]", "this is a number"),
    ("null in list", {"a": ["x", None]}, "f.a[1]", "$isNull"),
    ("null first in list", {"a": [None]}, "f.a[0]", "$isNull"),
    ("nested list", {"a": [["x"]]}, "f.a[0]", "nested"),
    ("non-finite number", {"a": [float("inf")]}, "f.a[0]", "finite"),
    ("empty operator object", {"a": [{}]}, "f.a[0]", "exactly one key, got 0"),
    ("two operators in one object", {"a": [{"$gt": 1, "$lt": 5}]}, "f.a[0]", "got 2 ($gt, $lt)"),
    ("unknown operator", {"a": [{"$regex": "x"}]}, "f.a[0]", "unknown operator '$regex'"),
    ("plain key as operator", {"a": [{"b": 1}]}, "f.a[0]", "unknown operator 'b'"),
    ("$gt string", {"a": [{"$gt": "1"}]}, "f.a[0]", "$gt needs a finite number"),
    ("$gt bool", {"a": [{"$gt": True}]}, "f.a[0]", "$gt needs a finite number"),
    ("$gte null", {"a": [{"$gte": None}]}, "f.a[0]", "$gte needs"),
    ("$lt list", {"a": [{"$lt": [1]}]}, "f.a[0]", "$lt needs"),
    ("$lte nan", {"a": [{"$lte": float("nan")}]}, "f.a[0]", "$lte needs"),
    ("$between scalar", {"a": [{"$between": 1}]}, "f.a[0]", "$between needs"),
    ("$between three", {"a": [{"$between": [1, 2, 3]}]}, "f.a[0]", "$between needs"),
    ("$between reversed", {"a": [{"$between": [5, 1]}]}, "f.a[0]", "low <= high"),
    ("$between strings", {"a": [{"$between": ["1", "5"]}]}, "f.a[0]", "$between needs"),
    ("$between bool", {"a": [{"$between": [False, 1]}]}, "f.a[0]", "$between needs"),
    ("$startsWith number", {"a": [{"$startsWith": 1}]}, "f.a[0]", "$startsWith needs a string"),
    ("$endsWith null", {"a": [{"$endsWith": None}]}, "f.a[0]", "$endsWith needs a string"),
    ("$ignoreCaseEquals list", {"a": [{"$ignoreCaseEquals": ["x"]}]}, "f.a[0]", "needs a string"),
    ("$exists string", {"a": [{"$exists": "true"}]}, "f.a[0]", "$exists needs true or false"),
    ("$isNull number", {"a": [{"$isNull": 1}]}, "f.a[0]", "$isNull needs true or false"),
    ("$anythingBut null", {"a": [{"$anythingBut": None}]}, "f.a[0]", "$anythingBut needs"),
    ("$anythingBut object", {"a": [{"$anythingBut": {"x": 1}}]}, "f.a[0]", "$anythingBut needs"),
    ("$anythingBut mixed list", {"a": [{"$anythingBut": ["x", 1]}]}, "f.a[0]", "of one kind"),
    ("$anythingBut nested list", {"a": [{"$anythingBut": [["x"]]}]}, "f.a[0]", "$anythingBut"),
    ("$includes list", {"a": [{"$includes": ["x"]}]}, "f.a[0]", "$includes needs"),
    ("$includes null", {"a": [{"$includes": None}]}, "f.a[0]", "$includes needs"),
    ("$not object", {"a": [{"$not": {"x": 1}}]}, "f.a[0]", "$not needs"),
    ("path through nesting", {"user": {"age": [{"$gt": 1}, {"$lt": "x"}]}}, "f.user.age[1]", "$lt"),
    ("odd key is quoted", {"a.b": {"c d": [1, "x"]}}, 'f["a.b"]["c d"][1]', "only numbers"),
]


@pytest.mark.parametrize(
    ("filter", "path", "words"),
    [pytest.param(f, p, w, id=i) for i, f, p, w in INVALID_CASES],
)
def test_validate_rejects(filter: Any, path: str, words: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        validate_filter(filter, "f")
    assert info.value.field == path
    assert str(info.value).startswith(f"{path}: ")
    assert words in str(info.value)


def test_validate_names_the_given_prefix() -> None:
    with pytest.raises(InvalidArgument) as info:
        validate_filter({"user": {"age": [{"$gt": 20}, "x"]}}, "job.trigger.event.filter")
    assert info.value.field == "job.trigger.event.filter.user.age[1]"


def test_validate_accepts_every_operator() -> None:
    validate_filter(
        {
            "s": [{"$startsWith": "a"}, {"$endsWith": "z"}, {"$ignoreCaseEquals": "az"}],
            "e": [{"$exists": True}, {"$isNull": False}],
            "n": [{"$gt": 1}, {"$gte": 1.5}, {"$lt": 9}, {"$lte": 8}, {"$between": [2, 2]}],
            "b": [{"$anythingBut": "x"}, {"$anythingBut": [1, 2]}, {"$anythingBut": []}],
            "t": [{"$includes": True}, {"$not": 3}],
            "p": [True, False],
            "q": [],
            "nested": {"deeper": {"x": ["y"]}},
        },
        "f",
    )


@pytest.mark.parametrize(
    ("value", "filter", "sentence"),
    [
        pytest.param(
            {"user": {"age": 15}},
            {"user": {"age": [{"$gt": 20}]}},
            'payload.user.age is 15, which fails {"$gt": 20}',
            id="operator",
        ),
        pytest.param(
            {},
            {"plan": ["pro", "team"]},
            'payload.plan is missing; expected one of ["pro", "team"]',
            id="missing",
        ),
        pytest.param(
            {"n": "1"},
            {"n": [1]},
            'payload.n is "1"; expected 1 (a string never equals a number)',
            id="type mismatch",
        ),
        pytest.param(
            {"tags": ["a"]},
            {"tags": ["a", "b"]},
            'payload.tags is ["a"]; expected one of ["a", "b"] '
            '(a list never equals a value; use {"$includes": "a"})',
            id="list footgun",
        ),
        pytest.param(
            {},
            {"a": {"b": [{"$exists": False}]}},
            'payload.a is missing; expected an object matching {"b": [{"$exists": false}]}',
            id="missing parent",
        ),
        pytest.param(
            {"items": [{"sku": "a"}]},
            {"items": {"sku": ["b"]}},
            'no element of payload.items matches {"sku": ["b"]} '
            '(payload.items[0].sku is "a"; expected "b")',
            id="no element",
        ),
        pytest.param(
            {"a": 1, "b": 2},
            {"a": [2], "b": [3]},
            "payload.a is 1; expected 2",
            id="first failing key",
        ),
    ],
)
def test_explain_sentences(value: Any, filter: dict[str, Any], sentence: str) -> None:
    assert explain(value, filter, "payload") == sentence


# --- properties --------------------------------------------------------------------------

KEYS = st.sampled_from(["a", "b", "c", "tags", "n"])
STRINGS = st.sampled_from(["", "x", "y", "X", "Ünïcode", "1"])
NUMBERS = st.one_of(
    st.integers(-3, 3), st.sampled_from([0.5, 1.0, -2.0, 2.5]), st.floats(-1e6, 1e6)
)
PRIMITIVES = st.one_of(STRINGS, NUMBERS, st.booleans())

JSON_VALUES = st.recursive(
    st.one_of(st.none(), PRIMITIVES),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(KEYS, inner, max_size=4)),
    max_leaves=12,
)
OBJECTS = st.dictionaries(KEYS, JSON_VALUES, max_size=5)

PRIMITIVE_LISTS = st.one_of(
    st.lists(STRINGS, max_size=3),
    st.lists(NUMBERS, max_size=3),
    st.lists(st.booleans(), max_size=2),
)
OPERATORS = st.one_of(
    st.builds(lambda op, s: {op: s}, st.sampled_from(["$startsWith", "$endsWith"]), STRINGS),
    st.builds(lambda s: {"$ignoreCaseEquals": s}, STRINGS),
    st.builds(lambda op, b: {op: b}, st.sampled_from(["$exists", "$isNull"]), st.booleans()),
    st.builds(lambda x: {"$anythingBut": x}, st.one_of(PRIMITIVES, PRIMITIVE_LISTS)),
    st.builds(lambda op, n: {op: n}, st.sampled_from(["$gt", "$gte", "$lt", "$lte"]), NUMBERS),
    st.builds(lambda a, b: {"$between": sorted([a, b])}, NUMBERS, NUMBERS),
    st.builds(lambda op, p: {op: p}, st.sampled_from(["$includes", "$not"]), PRIMITIVES),
)
MATCHERS = st.one_of(PRIMITIVE_LISTS, st.lists(OPERATORS, min_size=1, max_size=3))
FILTERS = st.recursive(
    st.dictionaries(KEYS, MATCHERS, max_size=3),
    lambda inner: st.dictionaries(KEYS, st.one_of(MATCHERS, inner), max_size=3),
    max_leaves=8,
)

FAST = settings(max_examples=300, deadline=None)


@FAST
@given(FILTERS)
def test_generated_filters_are_valid(filter: dict[str, Any]) -> None:
    validate_filter(filter, "f")


@FAST
@given(st.one_of(JSON_VALUES, OBJECTS), FILTERS)
def test_explain_agrees_with_matches(value: Any, filter: dict[str, Any]) -> None:
    reason = explain(value, filter, "payload")
    assert (reason is None) is matches(value, filter)
    if reason is not None:
        assert reason.startswith(("payload", "no element of payload"))


@FAST
@given(JSON_VALUES)
def test_empty_filter_matches_everything(value: Any) -> None:
    assert matches(value, {})
    assert explain(value, {}, "payload") is None


def _filter_from_leaves(value: dict[str, Any]) -> dict[str, Any]:
    """A filter that pins every leaf of `value` the way a user would write it."""
    out: dict[str, Any] = {}
    for key, v in value.items():
        if isinstance(v, dict):
            out[key] = _filter_from_leaves(v)
        elif isinstance(v, list):
            first = next((x for x in v if x is not None and not isinstance(x, list)), None)
            if isinstance(first, dict):
                out[key] = _filter_from_leaves(first)
            elif first is not None:
                out[key] = [{"$includes": first}]
        elif v is None:
            out[key] = [{"$isNull": True}]
        else:
            out[key] = [v]
    return out


@FAST
@given(OBJECTS)
def test_filter_built_from_a_values_leaves_matches_it(value: dict[str, Any]) -> None:
    filter = _filter_from_leaves(value)
    validate_filter(filter, "f")
    assert matches(value, filter), explain(value, filter, "payload")


# Any key but an operator's name, which a filter refuses as a key.
FILTER_KEYS = st.text(min_size=1, max_size=3).filter(lambda k: k not in OPERATOR_NAMES)


@FAST
@given(st.one_of(JSON_VALUES, OBJECTS), FILTERS, FILTER_KEYS, MATCHERS)
def test_adding_a_key_never_turns_a_miss_into_a_match(
    value: Any, filter: dict[str, Any], key: str, matcher: Any
) -> None:
    if key in filter:
        return
    wider = {**filter, key: matcher}
    validate_filter(wider, "f")
    if not matches(value, filter):
        assert not matches(value, wider)


def test_a_jobs_filter_is_explained_in_one_order_whatever_the_struct_gives() -> None:
    from google.protobuf import struct_pb2
    from tripwire.server.api.convert import struct_to_py

    struct = struct_pb2.Struct()
    struct.update({"plan": ["pro"], "age": [{"$gte": 18}], "b": {"z": [1], "a": [2]}})
    assert list(struct_to_py(struct, "f")) == ["age", "b", "plan"]
    assert list(struct_to_py(struct, "f")["b"]) == ["a", "z"]


_PRIMITIVES = st.one_of(
    st.booleans(),
    st.integers(-3, 3),
    st.sampled_from([0.0, 1.0, -0.0, 2.5]),
    st.text("ab", max_size=2),
)


@given(st.one_of(_PRIMITIVES, st.none(), st.lists(_PRIMITIVES, max_size=2)), st.data())
def test_a_long_value_list_matches_as_the_value_by_value_comparison(value: Any, data: Any) -> None:
    # Lists of eight or more values are looked up in a set: the same answers as
    # comparing one by one (true is not 1, 1 is 1.0, "1" is not 1).
    kind = data.draw(
        st.sampled_from(
            [
                st.booleans(),
                st.integers(-3, 3) | st.sampled_from([0.0, 2.5]),
                st.text("ab", max_size=2),
            ]
        )
    )
    values = data.draw(st.lists(kind, min_size=8, max_size=12))
    filter = {"a": values}
    validate_filter(filter, "f")
    by_one = any(_same(value, v) for v in values)
    assert matches({"a": value}, filter) is by_one
    assert matches({"a": value}, {"a": [{"$anythingBut": values}]}) is (not by_one)
