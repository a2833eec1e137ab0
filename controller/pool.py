"""What the rest of the controller needs of an actuator: the session pool or the legacy reservation pool."""

from __future__ import annotations

from typing import Protocol

from controller.policy import Decision, Supply


class Actuator(Protocol):
    """What the loop needs: how many sessions exist, and a way to change that."""

    @property
    def supply(self) -> Supply: ...

    def apply(self, decision: Decision) -> None: ...


class Pool(Actuator, Protocol):
    """What a leadership term needs besides: adopt what a previous term held, keep it, give it up."""

    async def adopt(self) -> int:
        """Take over the sessions the ledger holds; how many are still alive."""
        ...

    async def maintain(self) -> None:
        """Forever: keep what is held alive and notice what ended."""
        ...

    def released(self, session_id: str) -> bool:
        """A worker said this session ended; False when the pool does not hold it."""
        ...

    async def shutdown(self, *, release: bool, timeout: float = 10.0) -> None:
        """Cancel requests; close what is held when `release`, else leave it leased for the next term."""
        ...
