"""The one retry delay: jittered, capped, and still a number after days of failures."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from controller.backoff import backoff


@given(attempt=st.integers(0, 10**7), base=st.floats(0.01, 5), cap=st.floats(0.1, 600))
def test_the_delay_stays_within_its_exponential_bound_and_its_cap(attempt: int, base: float, cap: float) -> None:
    delay = backoff(attempt, base=base, cap=cap)
    assert 0 <= delay <= min(cap, base * 2 ** min(attempt, 30))


def test_the_delay_grows_then_stops_at_the_cap() -> None:
    assert max(backoff(0) for _ in range(200)) <= 0.5
    assert max(backoff(10**6) for _ in range(200)) > 10  # uniform up to the 15 s cap, not stuck low
