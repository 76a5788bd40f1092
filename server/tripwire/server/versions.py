"""Semantic versions (semver.org 2.0.0): parsing and precedence.

Job versions are compared by semver precedence, never as strings, so that
"1.10.0" is newer than "1.9.0" and "1.0.0-rc.1" is older than "1.0.0".
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import total_ordering

from .errors import InvalidArgument

# Long enough for any real version; it also keeps every number small enough to convert.
MAX_VERSION_LENGTH = 256

# The regular expression semver.org recommends, with names that match the fields below.
_SEMVER = re.compile(
    r"(?P<major>0|[1-9]\d*)\.(?P<minor>0|[1-9]\d*)\.(?P<patch>0|[1-9]\d*)"
    r"(?:-(?P<prerelease>(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)"
    r"(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+(?P<build>[0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?",
    re.ASCII,
)

# Numeric identifiers rank below alphanumeric ones (§11.4.3); the tag makes tuples of
# mixed identifiers comparable without a custom comparison per element.
_Ident = tuple[int, int, str]


def _ident_key(ident: str) -> _Ident:
    if ident.isdigit():
        return (0, int(ident), "")
    return (1, 0, ident)


@total_ordering
@dataclass(frozen=True, eq=False)
class Version:
    major: int
    minor: int
    patch: int
    prerelease: tuple[str, ...] = ()
    build: tuple[str, ...] = field(default=())

    def _key(self) -> tuple[int, int, int, int, tuple[_Ident, ...]]:
        # A release (no prerelease) outranks every prerelease of the same core (§11.3).
        return (
            self.major,
            self.minor,
            self.patch,
            0 if self.prerelease else 1,
            tuple(_ident_key(i) for i in self.prerelease),
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        # Build metadata does not take part in precedence (§10), so not in equality either.
        return self._key() == other._key()

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._key() < other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __str__(self) -> str:
        text = f"{self.major}.{self.minor}.{self.patch}"
        if self.prerelease:
            text += "-" + ".".join(self.prerelease)
        if self.build:
            text += "+" + ".".join(self.build)
        return text


def parse(text: str, field: str) -> Version:
    """Parse `text` as a semver 2.0.0 version; `field` names it in the error."""
    if len(text) > MAX_VERSION_LENGTH:
        raise InvalidArgument(field, f"is longer than {MAX_VERSION_LENGTH} characters")
    m = _SEMVER.fullmatch(text)
    if m is None:
        raise InvalidArgument(
            field, f"{text!r} is not a semantic version (MAJOR.MINOR.PATCH[-pre][+build])"
        )
    pre = m["prerelease"]
    build = m["build"]
    return Version(
        major=int(m["major"]),
        minor=int(m["minor"]),
        patch=int(m["patch"]),
        prerelease=tuple(pre.split(".")) if pre else (),
        build=tuple(build.split(".")) if build else (),
    )
