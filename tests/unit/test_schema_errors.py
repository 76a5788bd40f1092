"""Schema validation errors as a run keeps them: bounded, whatever the payload."""

from __future__ import annotations

import pytest
from tripwire.server import matching
from tripwire.server.errors import InvalidArgument
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


def test_a_huge_offending_value_is_not_copied_into_the_message() -> None:
    validator = check_schema({"properties": {"b": {"maxLength": 10}}}, "schema")
    ((error,),) = [schema_errors(validator, {"b": "x" * 1_000_000})]
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
    ],
)
def test_a_pattern_re2_cannot_run_is_refused_naming_it(schema: dict, path: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        check_schema(schema, "schema")
    assert err.value.field == path
    assert "backreferences and lookaround are not supported" in err.value.message
    assert "b'" not in err.value.message  # RE2's reason, as text


def test_a_pattern_in_a_value_is_data_not_a_regular_expression() -> None:
    check_schema({"const": {"pattern": "(a)\\1"}, "default": {"pattern": "(?=x)"}}, "schema")
