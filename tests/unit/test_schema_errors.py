"""Schema validation errors as a run keeps them: bounded, whatever the payload."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from tripwire.server import matching
from tripwire.server.errors import InvalidArgument, ResourceExhausted
from tripwire.server.matching import (
    MAX_VALIDATION_ERRORS,
    MAX_VALIDATION_MESSAGE,
    check_schema,
    schema_errors,
)


def test_errors_are_listed_by_path_with_json_pointers() -> None:
    validator = check_schema(
        {"properties": {"a": {"type": "string"}, "b": {"type": "integer"}}}, "schema"
    )
    assert schema_errors(validator, {"b": "x", "a": 1}) == (
        {"path": "/a", "message": "1 is not of type 'string'"},
        {"path": "/b", "message": "'x' is not of type 'integer'"},
    )
    assert schema_errors(validator, {"a": "ok"}) == ()


def test_a_missing_required_property_is_at_its_own_path_escaped_as_a_pointer() -> None:
    # Where the value should be, as v2's zod says; a key's "/" and "~" escaped.
    validator = check_schema(
        {
            "required": ["user", "a/b"],
            "properties": {
                "tags": {"type": "array"},
                "user": {"required": ["id"], "properties": {"x~y": {"type": "string"}}},
            },
        },
        "schema",
    )
    assert schema_errors(validator, {"tags": 5}) == (
        {"path": "/a~1b", "message": "'a/b' is a required property"},
        {"path": "/tags", "message": "5 is not of type 'array'"},
        {"path": "/user", "message": "'user' is a required property"},
    )
    assert schema_errors(validator, {"a/b": 1, "user": {"x~y": 1}}) == (
        {"path": "/user/id", "message": "'id' is a required property"},
        {"path": "/user/x~0y", "message": "1 is not of type 'string'"},
    )


def test_a_required_name_holding_quotes_is_at_its_own_path() -> None:
    validator = check_schema({"required": ["a", "x'a'y", 'q"']}, "schema")
    assert [e["path"] for e in schema_errors(validator, {})] == ["/a", '/q"', "/x'a'y"]


def test_many_missing_required_properties_cost_one_pass() -> None:
    names = [f"p{i:05d}" for i in range(5000)]
    validator = check_schema({"required": names}, "schema")
    errors = schema_errors(validator, {})
    assert [e["path"] for e in errors[:-1]] == [f"/{n}" for n in names[:MAX_VALIDATION_ERRORS]]
    assert errors[-1]["message"] == f"and {5000 - MAX_VALIDATION_ERRORS} more"


def test_errors_are_in_path_order_with_indexes_as_numbers() -> None:
    validator = check_schema({"items": {"type": "string"}}, "schema")
    errors = schema_errors(validator, list(range(12)))
    assert [e["path"] for e in errors[:-1]] == [f"/{i}" for i in range(MAX_VALIDATION_ERRORS)]


def test_a_huge_offending_value_is_quoted_short_so_the_message_says_what_is_wrong() -> None:
    validator = check_schema(
        {"properties": {"b": {"maxLength": 10}, "c": {"type": "object"}}}, "schema"
    )
    errors = schema_errors(validator, {"b": "x" * 1_000_000, "c": list(range(100_000))})
    assert errors == (
        {"path": "/b", "message": f"'{'x' * 37}...{'x' * 38}' is too long"},
        {"path": "/c", "message": "[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, ...] is not of type 'object'"},
    )


@pytest.mark.parametrize(
    ("schema", "payload"),
    [
        ({"required": ["a", "b"]}, {"x": [1] * 1000}),
        ({"dependentRequired": {"x": ["a"]}}, {"x": [1] * 1000}),
        ({"additionalProperties": False}, {"x": [1] * 1000}),
        ({"unevaluatedProperties": False}, {"x": [1] * 1000}),
        ({"contains": {"type": "integer"}, "maxContains": 1}, [1] * 1000),
        ({"contains": {"type": "string"}, "minContains": 2}, ["s", *[1] * 1000]),
    ],
)
def test_a_message_not_quoting_the_value_costs_nothing_of_its_size(
    schema: dict, payload: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each error about a large object (a 1 MiB payload missing ten properties)
    # wrote the whole of it out once more: a tenth of a second held on the loop.
    written: list[Any] = []

    def python_repr(value: Any) -> str:
        written.append(value)
        return repr(value)

    monkeypatch.setattr(matching, "repr", python_repr, raising=False)
    assert schema_errors(check_schema(schema, "schema"), payload)
    assert payload not in written


@pytest.mark.parametrize(
    ("schema", "payload", "message"),
    [
        ({"type": "string"}, None, "null is not of type 'string'"),
        ({"type": "integer"}, True, "true is not of type 'integer'"),
        ({"type": ["string", "null"]}, False, "false is not of type 'string', 'null'"),
        ({"enum": ["x", "y"]}, {"k": [False]}, "{'k': [false]} is not one of ['x', 'y']"),
        ({"enum": [None, True]}, 1, "1 is not one of [null, true]"),
        ({"const": False}, 0, "false was expected"),
        ({"const": {"a": None}}, {}, "{'a': null} was expected"),
        ({"minItems": 2}, [None], "[null] is too short"),
        ({"maxProperties": 0}, {"a": True}, "{'a': true} is expected to be empty"),
        ({"uniqueItems": True}, [True, True], "[true, true] has non-unique elements"),
        (
            {"anyOf": [{"type": "string"}, {"type": "number"}]},
            None,
            "null is not valid under any of the given schemas",
        ),
        ({"not": {"type": "boolean"}}, True, "true should not be valid under {'type': 'boolean'}"),
        ({"not": {"const": None}}, None, "null should not be valid under {'const': null}"),
        (
            {"oneOf": [{"type": "null"}, {"type": "string"}, {"const": None}]},
            None,
            "null is valid under each of {'type': 'null'}, {'const': null}",
        ),
        (
            {"oneOf": [{"type": "string"}, {"type": "number"}]},
            True,
            "true is not valid under any of the given schemas",
        ),
        (
            {"items": False},
            [None, True],
            "Expected at most 0 items but found 2 extra: [null, true]",
        ),
        (
            {"prefixItems": [{}], "items": False},
            [1, None],
            "Expected at most 1 item but found 1 extra: null",
        ),
        (
            {"prefixItems": [{}], "items": False},
            [0, *range(100_000)],
            "Expected at most 1 item but found 100000 extra: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, ...]",
        ),
        (
            {"unevaluatedItems": False},
            [None],
            "Unevaluated items are not allowed (null was unexpected)",
        ),
        (
            {"prefixItems": [{}], "unevaluatedItems": {"type": "string"}},
            [0, "a", False, {"b": True}],
            "Unevaluated items are not allowed (false, {'b': true} were unexpected)",
        ),
        (
            {"unevaluatedItems": False},
            list(range(12)),
            "Unevaluated items are not allowed (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, ... were unexpected)",
        ),
        # Strings, numbers and names are quoted as before.
        ({"minimum": 5}, 4.5, "4.5 is less than the minimum of 5"),
        ({"pattern": "^a"}, "b", "'b' does not match '^a'"),
        ({"required": ["id"]}, {}, "'id' is a required property"),
    ],
)
def test_values_are_quoted_in_jsons_words_not_pythons(
    schema: dict, payload: Any, message: str
) -> None:
    # The messages reach clients in every language: null, true and false, never
    # Python's None, True and False.
    (error,) = schema_errors(check_schema(schema, "schema"), payload)
    assert error["message"] == message


# Short enough that no message is cut before its end.
_scalars = st.none() | st.booleans() | st.integers(-999, 999) | st.sampled_from([0.5, -2.25, 1e20])
_no_strings = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from("abc"), inner, max_size=3)
    ),
    max_leaves=12,
)


@given(_no_strings)
def test_no_python_literal_is_ever_quoted(value: Any) -> None:
    (error,) = schema_errors(check_schema({"type": "string"}, "schema"), value)
    assert error["message"].endswith(" is not of type 'string'")
    assert not {"None", "True", "False"} & set(error["message"].replace(",", " ").split())


@pytest.mark.parametrize(
    ("schema", "payload", "path"),
    [
        ({"properties": {"d": False}}, {"d": None}, "/d"),
        ({"patternProperties": {"^p": False}}, {"p1": 3}, "/p1"),
        ({"additionalProperties": False, "properties": {"a": {}}}, {"a": 1, "x": 2}, ""),
        ({"prefixItems": [True, False]}, [1, 2], "/1"),
        ({"properties": {"u": {"items": {"prefixItems": [False]}}}}, {"u": [[], [7]]}, "/u/1/0"),
        ({"$defs": {"no": False}, "properties": {"r": {"$ref": "#/$defs/no"}}}, {"r": 1}, "/r"),
        ({"allOf": [False]}, {"x": 1}, ""),
    ],
)
def test_a_false_subschema_refuses_the_part_at_its_own_path(
    schema: dict, payload: Any, path: str
) -> None:
    (error,) = schema_errors(check_schema(schema, "schema"), payload)
    assert error["path"] == path
    if schema.get("additionalProperties") is False:
        assert error["message"] == "Additional properties are not allowed ('x' was unexpected)"
    else:
        assert error["message"].endswith(" is not allowed here (the schema here is false)")


def test_a_schema_refused_at_registration_quotes_in_jsons_words_too() -> None:
    with pytest.raises(InvalidArgument) as raised:
        check_schema({"properties": {"a": {"type": None}}}, "schema")
    assert raised.value.message == (
        "schema/properties/a/type: not a valid JSON Schema: null is not valid under any of "
        "the given schemas"
    )


def test_a_message_too_long_even_so_is_cut() -> None:
    validator = check_schema({"properties": {"b": {"pattern": "^" + "a" * 500 + "$"}}}, "schema")
    ((error,),) = [schema_errors(validator, {"b": "b"})]
    assert error["path"] == "/b"
    assert len(error["message"]) == MAX_VALIDATION_MESSAGE and error["message"].endswith("...")


def test_only_the_first_errors_are_kept_and_the_rest_counted() -> None:
    validator = check_schema({"items": {"type": "string"}}, "schema")
    errors = schema_errors(validator, list(range(100)))
    assert len(errors) == MAX_VALIDATION_ERRORS + 1
    assert errors[-1] == {"path": "...", "message": f"and {100 - MAX_VALIDATION_ERRORS} more"}


def test_patterns_match_with_re2_whatever_the_text() -> None:
    # `^(a+)+$` backtracks exponentially in Python's re (thirty a's and a "!" take half
    # a minute); through RE2 every keyword that matches a pattern is linear.
    schema = {
        "properties": {"s": {"pattern": "^(a+)+$"}},
        "patternProperties": {"^(x+)+$": {"type": "integer"}},
        "additionalProperties": {"type": "string"},
    }
    validator = check_schema(schema, "schema")
    matching._re2.cache_clear()
    bad = "a" * 40 + "!"
    assert schema_errors(validator, {"s": bad, "x" * 40 + "!": 1}) == (
        {"path": "/s", "message": f"{bad!r} does not match '^(a+)+$'"},
        {"path": "/" + "x" * 40 + "!", "message": "1 is not of type 'string'"},
    )
    assert schema_errors(validator, {"s": "aaa", "xx": 1, "other": "y"}) == ()
    assert matching._re2.cache_info().currsize == 2  # both patterns went through RE2


@pytest.mark.parametrize(
    ("schema", "path"),
    [
        ({"properties": {"s": {"pattern": "(a)\\1"}}}, "schema/properties/s/pattern"),
        ({"patternProperties": {"^(?=x)": {}}}, "schema/patternProperties/^(?=x)"),
        ({"items": {"pattern": "a(?!b)"}}, "schema/items/pattern"),
        ({"pattern": "abc\\"}, "schema/pattern"),  # a trailing backslash
    ],
)
def test_a_pattern_re2_cannot_run_is_refused_naming_it(schema: dict, path: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        check_schema(schema, "schema")
    assert err.value.field == path
    assert "RE2, in linear time, without backreferences or lookaround" in err.value.message
    assert "b'" not in err.value.message  # RE2's reason, as text


def test_patterns_re2_takes_are_taken_though_python_re_refuses_them() -> None:
    validator = check_schema(
        {"properties": {"name": {"pattern": "^\\p{L}+$"}, "id": {"pattern": "^(?<n>[0-9]+)$"}}},
        "schema",
    )
    assert schema_errors(validator, {"name": "Ada", "id": "42"}) == ()
    assert [e["path"] for e in schema_errors(validator, {"name": "Ada1", "id": "x"})] == [
        "/id",
        "/name",
    ]


# The truth of each: JavaScript's `new RegExp(pattern, "u").test(text)` (Node 20), as
# ajv and every other ECMA-262 validator of JSON Schema patterns has it.
@pytest.mark.parametrize(
    ("pattern", "text", "matches"),
    [
        ("^\\S+$", "bob\u00a0smith", False),  # a no-break space is white space
        ("^\\S+$", "bob", True),
        ("^[^\\s]+$", "a\u3000b", False),  # so is the ideographic space
        ("^\\s$", "\ufeff", True),
        ("^\\s$", "\u0085", False),  # not NEL
        ("^[\\S]$", "\u00a0", False),
        ("^[\\s\\S]+$", "a\nb", True),
        ("^.+$", "a\rb", False),  # a dot takes no line terminator
        ("^.+$", "a\u2028b", False),
        ("^.+$", "ab", True),
        ("^[.]$", "x", False),  # in a class, a dot is a dot
        ("^a\\.b$", "axb", False),
        ("^\\u00e9$", "\u00e9", True),
        ("^\\d+$", "\u0661", False),  # \d and \w are ASCII's
        ("^\\w+$", "\u00e9", False),
        # In a class, a "-" after a class escape is a "-" (not a range from it).
        ("^[\\w\\s-.]+$", "a b-c.", True),
        ("^[\\w\\s-.]+$", "a!", False),
        ("^[\\d-x]$", "-", True),
        ("^[\\d-x]$", "a", False),
    ],
)
def test_patterns_mean_what_ecma_262_says(pattern: str, text: str, matches: bool) -> None:
    validator = check_schema({"pattern": pattern}, "schema")
    assert (schema_errors(validator, text) == ()) is matches


def test_a_pattern_in_a_value_is_data_not_a_regular_expression() -> None:
    check_schema({"const": {"pattern": "(a)\\1"}, "default": {"pattern": "(?=x)"}}, "schema")


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-3, 3)
    | st.sampled_from([0.0, 1.0, 2.5])
    | st.text("ab", max_size=2),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text("ab", max_size=2), inner, max_size=3)
    ),
    max_leaves=8,
)


@pytest.mark.parametrize(
    ("items", "unique"),
    [
        ([1, 1.0], False),  # the same number
        ([1, True], True),  # a boolean is not a number
        ([0, False], True),
        ([{"a": 1, "b": 2}, {"b": 2, "a": 1}], False),  # key order does not count
        ([[1, 2], [2, 1]], True),  # element order does
        ([None, "null", 0, False, [], {}], True),
        ([[True], [1]], True),
        ([{"a": [1.0]}, {"a": [1]}], False),
    ],
)
def test_unique_items_follows_json_equality(items: list, unique: bool) -> None:
    validator = check_schema({"uniqueItems": True}, "schema")
    assert (schema_errors(validator, items) == ()) is unique


@given(st.lists(_json, max_size=6))
def test_unique_items_agrees_with_jsonschemas_own(items: list) -> None:
    ours = check_schema({"uniqueItems": True}, "schema").is_valid(items)
    assert ours is Draft202012Validator({"uniqueItems": True}).is_valid(items)


def test_unique_items_on_a_large_array_of_mixed_values_is_linear() -> None:
    # jsonschema's own compares every pair when it cannot sort (mixed types):
    # 20,000 elements took over twenty seconds on the event loop.
    validator = check_schema({"uniqueItems": True}, "schema")
    items: list = [f"tag-{i}" for i in range(20_000)] + [1]
    assert schema_errors(validator, items) == ()
    (error,) = schema_errors(validator, [*items, "tag-7"])
    assert error == {
        "path": "",
        "message": "['tag-0', 'tag-1', 'tag-2', 'tag-3', 'tag-4', 'tag-5', 'tag-6', 'tag-7', "
        "'tag-8', 'tag-9', ...] has non-unique elements",
    }


@pytest.mark.parametrize(
    "schema",
    [
        {"const": {"$ref": "https://example.com/x.json"}},
        {"properties": {"link": {"default": {"$ref": "other.json"}}}},
        {"examples": [{"$ref": "#/nowhere"}], "enum": [{"pattern": "(?=x)"}]},
        {"x-notes": {"pattern": "(a)\\1", "$ref": "elsewhere.json"}},  # unknown: data
    ],
)
def test_refs_and_patterns_inside_data_are_data(schema: dict) -> None:
    check_schema(schema, "schema")


@pytest.mark.parametrize(
    ("schema", "path"),
    [
        # Properties named like keywords are schemas all the same.
        ({"properties": {"default": {"pattern": "^(?!tmp)"}}}, "schema/properties/default/pattern"),
        ({"$defs": {"enum": {"pattern": "(a)\\1"}}}, "schema/$defs/enum/pattern"),
        ({"prefixItems": [{}, {"pattern": "(?<=a)b"}]}, "schema/prefixItems/1/pattern"),
        ({"properties": {"a/b": {"pattern": "(?=x)"}}}, "schema/properties/a~1b/pattern"),
    ],
)
def test_patterns_are_found_wherever_a_schema_is(schema: dict, path: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        check_schema(schema, "schema")
    assert err.value.field == path


def test_a_ref_under_a_property_named_like_a_keyword_is_checked() -> None:
    with pytest.raises(InvalidArgument) as err:
        check_schema({"properties": {"const": {"$ref": "#/$defs/missing"}}}, "schema")
    assert err.value.field == "schema/properties/const/$ref"


def test_unicode_escapes_in_patterns_mean_what_they_mean_in_json_schema() -> None:
    validator = check_schema(
        {"properties": {"s": {"pattern": "^[\\u0041-\\u005A]+$"}, "t": {"pattern": "^\\\\u0041$"}}},
        "schema",
    )
    assert schema_errors(validator, {"s": "ABC", "t": "\\u0041"}) == ()
    assert [e["path"] for e in schema_errors(validator, {"s": "abc", "t": "A"})] == ["/s", "/t"]


@pytest.fixture
def remote() -> Iterator[tuple[str, list[str]]]:
    """A schema served over HTTP on 127.0.0.1, and the paths asked for."""
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            body = json.dumps({"type": "string"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None: ...

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/s.json", hits
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


def test_a_remote_ref_behind_a_local_one_is_refused_and_never_fetched(
    remote: tuple[str, list[str]],
) -> None:
    url, hits = remote
    for schema in (
        {"$ref": "#/x", "x": {"$ref": url}},
        {"$ref": "#/x/0", "x": [{"properties": {"a": {"$ref": url}}}]},
        {"$ref": "#/const", "const": {"$ref": url}},
    ):
        with pytest.raises(InvalidArgument, match="points outside the schema"):
            check_schema(schema, "schema")
    assert hits == []


def test_a_validator_never_fetches_a_ref_whatever_the_schema(
    remote: tuple[str, list[str]],
) -> None:
    url, hits = remote
    errors = schema_errors(matching._validator({"$ref": url}), "x")
    assert errors[0]["message"].startswith("the schema cannot be applied")
    assert hits == []


def test_a_pattern_behind_a_local_ref_is_checked() -> None:
    schema = {"$ref": "#/x", "x": {"properties": {"code": {"pattern": "(?=a)"}}}}
    with pytest.raises(InvalidArgument) as err:
        check_schema(schema, "schema")
    assert err.value.field == "schema/x/properties/code/pattern"


def _doubling(levels: int) -> dict:
    """Each level applies the one below twice: 2^levels applications, in a few KB."""
    defs: dict = {"d0": {"type": "object"}}
    for i in range(1, levels + 1):
        defs[f"d{i}"] = {"allOf": [{"$ref": f"#/$defs/d{i - 1}"}, {"$ref": f"#/$defs/d{i - 1}"}]}
    return {"$defs": defs, "$ref": f"#/$defs/d{levels}"}


def test_a_schema_whose_refs_multiply_its_work_is_refused() -> None:
    with pytest.raises(InvalidArgument) as err:
        check_schema(_doubling(40), "schema")  # 2^40 steps for any value
    assert err.value.field == "schema"
    assert "takes over 300,000 steps" in err.value.message
    validator = check_schema(_doubling(8), "schema")  # shared parts within reason
    assert schema_errors(validator, {}) == ()
    assert schema_errors(validator, [])[0]["message"] == "[] is not of type 'object'"


def test_a_recursive_schema_is_weighed_by_its_parts_not_its_recursion() -> None:
    tree = {
        "$defs": {
            "node": {
                "type": "object",
                "properties": {"children": {"type": "array", "items": {"$ref": "#/$defs/node"}}},
            }
        },
        "$ref": "#/$defs/node",
    }
    validator = check_schema(tree, "schema")
    assert schema_errors(validator, {"children": [{"children": []}]}) == ()


def _nested(levels: int, wrap: Any) -> dict:
    schema: dict = {"type": "object"}
    for _ in range(levels):
        schema = wrap(schema)
    return schema


def _anchored_doubling(levels: int) -> dict:
    defs: dict = {"d0": {"$anchor": "a0", "type": "object"}}
    for i in range(1, levels + 1):
        two = [{"$ref": f"#a{i - 1}"}, {"$ref": f"#a{i - 1}"}]
        defs[f"d{i}"] = {"$anchor": f"a{i}", "allOf": two}
    return {"$defs": defs, "$ref": f"#a{levels}"}


BRANCHING_CYCLE = {  # each array level applies "a" twice to the same items
    "$defs": {"a": {"type": "array", "items": {"allOf": [{"$ref": "#/$defs/a"}] * 2}}},
    "$ref": "#/$defs/a",
}


@pytest.mark.parametrize(
    "schema",
    [
        pytest.param(_anchored_doubling(20), id="refs by anchor"),
        pytest.param(
            _nested(16, lambda s: {"anyOf": [s], "unevaluatedProperties": False}),
            id="nested unevaluatedProperties",
        ),
    ],
)
def test_schemas_whose_work_multiplies_on_any_value_are_refused(schema: dict) -> None:
    with pytest.raises(InvalidArgument, match="takes over 300,000 steps"):
        check_schema(schema, "schema")


def test_a_payload_a_schema_would_take_too_long_on_is_invalid_at_once() -> None:
    validator = check_schema(BRANCHING_CYCLE, "schema")  # cheap on shallow values
    assert schema_errors(validator, [[[]]]) == ()
    deep: list = []
    for _ in range(30):  # 2^30 steps, 62 bytes
        deep = [deep]
    (error,) = schema_errors(validator, deep)
    assert error["path"] == ""
    assert error["message"].startswith("the schema cannot be applied: validating this value")


_NODE = {"type": "object", "properties": {"left": {"$ref": "#"}, "right": {"$ref": "#"}}}
_ADDRESS = {"type": "object", "properties": {"street": {"type": "string"}}}


@pytest.mark.parametrize(
    ("schema", "payload"),
    [
        pytest.param(_NODE, {"left": {"right": {}}}, id="a binary tree"),
        pytest.param(
            {
                "$defs": {"Address": _ADDRESS},
                "properties": {
                    name: {"$ref": "#/$defs/Address"} for name in ("billing", "shipping", "home")
                },
            },
            {"billing": {"street": "x"}},
            id="one definition used in many places",
        ),
        pytest.param(
            {
                "$defs": {
                    **{f"C{i}": _ADDRESS for i in range(400)},
                    "Ping": {"type": "object"},
                },
                "$ref": "#/$defs/Ping",
            },
            {},
            id="a bundle of unused definitions",
        ),
        pytest.param(
            {
                "type": "object",
                "properties": {
                    f"s{i}": {"properties": {f"f{j}": {"type": "number"} for j in range(40)}}
                    for i in range(40)
                },
            },
            {"s1": {"f1": 1}},
            id="sixteen hundred fields",
        ),
        pytest.param(_doubling(8), {}, id="shared parts within reason"),
    ],
)
def test_large_and_recursive_schemas_whose_work_stays_linear_are_accepted(
    schema: dict, payload: Any
) -> None:
    assert schema_errors(check_schema(schema, "schema"), payload) == ()


def test_a_large_enum_or_const_is_checked_by_value_and_quoted_short() -> None:
    validator = check_schema(
        {"type": "array", "items": {"enum": list(range(30_000))}, "maxItems": 5000}, "schema"
    )
    assert schema_errors(validator, [5, 1.0, 29_999]) == ()  # 1.0 is 1
    (error,) = schema_errors(validator, [True])  # true is not 1
    assert error == {
        "path": "/0",
        "message": "true is not one of [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, ...]",
    }
    constant = check_schema({"const": {"ids": list(range(1000)), "n": 1}}, "schema")
    assert schema_errors(constant, {"n": 1.0, "ids": list(range(1000))}) == ()
    (error,) = schema_errors(constant, {"n": 1, "ids": [0]})
    assert error["message"] == "{'ids': [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, ...], 'n': 1} was expected"
    # Both as jsonschema has them when short.
    small = check_schema({"properties": {"a": {"enum": ["x", 2]}, "b": {"const": "y"}}}, "schema")
    assert [e["message"] for e in schema_errors(small, {"a": "z", "b": "z"})] == [
        "'z' is not one of ['x', 2]",
        "'y' was expected",
    ]


def test_errors_count_against_the_budget_so_failing_a_wide_any_of_everywhere_stops() -> None:
    validator = check_schema(
        {"type": "array", "items": {"anyOf": [{"const": i} for i in range(100)]}}, "schema"
    )
    assert schema_errors(validator, [7] * 1900) == ()
    (error,) = schema_errors(validator, [-1] * 1900)  # 190,000 failed consts
    assert "takes over 300,000 steps" in error["message"]


def test_values_validated_in_one_call_share_its_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(matching, "MAX_CALL_STEPS", 400_000)  # three values' worth, and more
    validator = check_schema(BRANCHING_CYCLE, "schema")
    costly: list = []
    for _ in range(14):  # 114,684 steps: within a value's budget
        costly = [costly]
    assert schema_errors(validator, costly) == ()
    with matching.call_budget():
        for _ in range(matching.MAX_CALL_STEPS // 114_684):
            assert schema_errors(validator, costly) == ()
        with pytest.raises(ResourceExhausted, match="takes over 400,000 steps"):
            schema_errors(validator, costly)
        with matching.call_budget(shared=False):  # each value on its own budget
            assert schema_errors(validator, costly) == ()
    assert schema_errors(validator, costly) == ()  # outside a call: no shared budget


def test_a_large_value_against_many_consts_and_enums_is_not_walked_for_each(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    validator = check_schema(
        {
            "properties": {
                "kind": {"oneOf": [{"const": i, "title": f"kind {i}"} for i in range(250)]},
                "tag": {"enum": ["a", "b", [1, 2]]},
            }
        },
        "schema",
    )
    canonical = matching._canonical
    calls = 0

    def counted(value: Any) -> Any:
        nonlocal calls
        calls += 1
        return canonical(value)

    monkeypatch.setattr(matching, "_canonical", counted)
    big = list(range(90_000))
    errors = schema_errors(validator, {"kind": big, "tag": big})
    assert [e["path"] for e in errors] == ["/kind", "/tag"]
    assert calls < 100  # each comparison stops at the first difference
