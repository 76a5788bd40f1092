"""Semantic versions: the semver.org 2.0.0 grammar and precedence."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tripwire.server.errors import InvalidArgument
from tripwire.server.versions import Version, parse

# semver.org §11.4, in increasing precedence.
CHAIN = [
    "1.0.0-alpha",
    "1.0.0-alpha.1",
    "1.0.0-alpha.beta",
    "1.0.0-beta",
    "1.0.0-beta.2",
    "1.0.0-beta.11",
    "1.0.0-rc.1",
    "1.0.0",
]


def v(text: str) -> Version:
    return parse(text, "job.version")


def test_semver_precedence_chain() -> None:
    parsed = [v(t) for t in CHAIN]
    for (i, a), (j, b) in itertools.product(enumerate(parsed), repeat=2):
        assert (a < b) is (i < j), (CHAIN[i], CHAIN[j])
        assert (a == b) is (i == j)
    assert sorted(reversed(parsed)) == parsed


@pytest.mark.parametrize(
    ("lower", "higher"),
    [
        ("1.9.0", "1.10.0"),
        ("1.0.0", "2.0.0"),
        ("2.0.0", "2.1.0"),
        ("2.1.0", "2.1.1"),
        ("0.0.9", "0.1.0"),
        ("1.0.0-2", "1.0.0-10"),
        ("1.0.0-999", "1.0.0-a"),
        ("1.0.0-a", "1.0.0-a.0"),
        ("1.0.0-A", "1.0.0-a"),
        ("1.0.0-rc.1", "1.0.0"),
        ("1.0.0", "1.0.1-alpha"),
    ],
)
def test_ordering(lower: str, higher: str) -> None:
    assert v(lower) < v(higher)
    assert v(higher) > v(lower)
    assert v(lower) != v(higher)


def test_build_metadata_is_ignored_by_precedence() -> None:
    assert v("1.0.0+build.1") == v("1.0.0+build.2") == v("1.0.0")
    assert hash(v("1.0.0+a")) == hash(v("1.0.0"))
    assert not v("1.0.0+a") < v("1.0.0")
    assert v("1.0.0-alpha+001") < v("1.0.0+001")


@pytest.mark.parametrize(
    "text",
    [
        "1.0.0",
        "0.0.0",
        "10.20.30",
        "1.0.0-alpha",
        "1.0.0-0.3.7",
        "1.0.0-x.7.z.92",
        "1.0.0-x-y-z.--",
        "1.0.0-alpha+001",
        "1.0.0+20130313144700",
        "1.0.0-beta+exp.sha.5114f85",
        "1.0.0+21AF26D3----117B344092BD",
        "1.0.0-0A.is.legal",
        "99999999999999999999.0.0",
    ],
)
def test_valid_versions_round_trip(text: str) -> None:
    assert str(v(text)) == text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "1",
        "1.2",
        "1.2.3.4",
        "01.2.3",
        "1.02.3",
        "1.2.03",
        "v1.2.3",
        " 1.2.3",
        "1.2.3 ",
        "1.2.3-",
        "1.2.3+",
        "1.2.3-01",
        "1.2.3-alpha..1",
        "1.2.3-alpha_beta",
        "1.2.3+build..1",
        "1.2.3-+build",
        "-1.2.3",
        "1.2.3-é",
        "1.2.٣",
        "1.2.3\n",
        "latest",
    ],
)
def test_invalid_versions(text: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        v(text)
    assert info.value.field == "job.version"
    assert repr(text) in str(info.value)


ALNUM = "0123456789abcXYZ-"
IDENT = st.one_of(
    st.integers(0, 30).map(str),
    st.text(ALNUM, min_size=1, max_size=5).filter(lambda s: not s.isdigit()),
)
VERSIONS = st.builds(
    Version,
    st.integers(0, 5),
    st.integers(0, 5),
    st.integers(0, 5),
    st.lists(IDENT, max_size=3).map(tuple),
    st.lists(st.text(ALNUM, min_size=1, max_size=4), max_size=2).map(tuple),
)
PLAIN = st.tuples(st.integers(0, 20), st.integers(0, 20), st.integers(0, 20))
FAST = settings(max_examples=200, deadline=None)


@FAST
@given(VERSIONS)
def test_parse_str_round_trips(version: Version) -> None:
    again = parse(str(version), "v")
    assert again == version
    assert again.build == version.build
    assert str(again) == str(version)


@FAST
@given(PLAIN, PLAIN)
def test_plain_versions_order_like_tuples(a: tuple[int, int, int], b: tuple[int, int, int]) -> None:
    va, vb = v(".".join(map(str, a))), v(".".join(map(str, b)))
    assert (va < vb) is (a < b)
    assert (va == vb) is (a == b)
    assert (va > vb) is (a > b)


@FAST
@given(VERSIONS, VERSIONS, VERSIONS)
def test_total_order(a: Version, b: Version, c: Version) -> None:
    # Exactly one of <, ==, > holds; <= is transitive.
    assert [a < b, a == b, a > b].count(True) == 1
    assert (a <= b) is (not a > b)
    if a <= b and b <= c:
        assert a <= c
    assert sorted([a, b, c]) == sorted([c, b, a])
