"""A byte budget for PushMasks slices held in memory, per process and per user.

Each slice of a push is buffered while it is stored (chunks queued for the storage worker,
and the part the SDK sends), so 16 streams of one user with 8 slices in flight each could hold
more than a pod has. Slices reserve their share before their bytes are read and give it back
when they are stored or abandoned; a reservation that does not fit is refused, never queued,
so the caller decides what waits.
"""

from __future__ import annotations

from collections.abc import Hashable


class PushMemoryBudget:
    """Bytes of pushed slices in memory, per process and per user. Unlocked: call it from the event
    loop only, where each call runs whole. `try_reserve` never waits, and every reservation must
    be released exactly once.
    """

    def __init__(self, *, per_process: int, per_user: int) -> None:
        if per_process < 1 or per_user < 1:
            raise ValueError("budgets must be positive")
        self.per_process = per_process
        self.per_user = per_user
        self._in_use = 0
        self._by_user: dict[Hashable, int] = {}

    @property
    def in_use(self) -> int:
        return self._in_use

    def used_by(self, user: Hashable) -> int:
        return self._by_user.get(user, 0)

    def try_reserve(self, user: Hashable, size: int) -> bool:
        """Reserve `size` bytes for `user` if both budgets allow it."""
        held = self._by_user.get(user, 0)
        if self._in_use + size > self.per_process or held + size > self.per_user:
            return False
        self._in_use += size
        self._by_user[user] = held + size
        return True

    def release(self, user: Hashable, size: int) -> None:
        self._in_use = max(0, self._in_use - size)
        left = self._by_user.get(user, 0) - size
        if left > 0:
            self._by_user[user] = left
        else:
            self._by_user.pop(user, None)
