"""An error over the payload limit is cut to fit, type included, or replaced."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tripwire.server.work import CUT_NOTE, TOO_LARGE, cut_error


def encoded(error: dict[str, str]) -> int:
    return sum(len(value.encode()) for value in error.values())


@pytest.mark.parametrize(
    ("error", "limit"),
    [
        ({"type": "E" * 200_000, "message": "m", "stack": ""}, 1000),
        ({"type": "HTTPError", "message": "é" * 5000, "stack": "s" * 5000}, 1000),
        ({"type": "HTTPError", "message": "x" * 5000, "stack": ""}, 300),
    ],
)
def test_a_cut_error_fits_and_says_it_was_cut(error: dict[str, str], limit: int) -> None:
    cut = cut_error(error, encoded(error), limit, "task error")
    assert cut["type"] != TOO_LARGE
    assert encoded(cut) <= limit
    assert any(value.endswith(CUT_NOTE) for value in cut.values())


def test_a_limit_too_small_to_say_anything_gives_output_too_large() -> None:
    error = {"type": "HTTPError", "message": "x" * 500, "stack": ""}
    cut = cut_error(error, 520, 40, "task error")
    assert cut == {
        "type": TOO_LARGE,
        "message": "task error is 520 bytes, over the limit of 40 bytes",
        "stack": "",
    }


@given(st.text(max_size=300), st.text(max_size=3000), st.text(max_size=3000), st.integers(1, 4000))
def test_whatever_the_error_the_result_fits_or_is_the_fixed_error(
    kind: str, message: str, stack: str, limit: int
) -> None:
    error = {"type": kind, "message": message, "stack": stack}
    cut = cut_error(error, encoded(error), limit, "run error")
    assert encoded(cut) <= limit or cut["type"] == TOO_LARGE
