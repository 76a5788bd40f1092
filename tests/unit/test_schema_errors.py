"""Schema validation errors as a run keeps them: bounded, whatever the payload."""

from __future__ import annotations

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
