"""What the health monitor asks of each dependency (PostgreSQL, storage, the PACS)."""

from __future__ import annotations

from typing import Protocol


class Probe(Protocol):
    """One dependency's check, reported under `name`. Returning means it answers; raising, or not
    returning within the monitor's timeout, means it does not.
    """

    name: str

    async def check(self) -> None:
        """Return when the dependency answers; raise otherwise."""
