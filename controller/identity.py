"""A cache key by identity, for the policy's pure caches of immutable values too costly to hash.

A frozen config or a period's learned bins hash by value: every field, every bin, on every
reading. Held under `Same`, a value hashes by its id and equals only itself; the key holds it, so
no other object can take that id while the key is cached. A cache keyed so still returns only
what the function returns for that very value: for a pure function of an immutable value, the
same answer.
"""

from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T")


class Same(Generic[T]):
    """`value` as a cache key by identity."""

    __slots__ = ("value",)

    def __init__(self, value: T):
        self.value = value

    def __hash__(self) -> int:
        return id(self.value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Same) and other.value is self.value
