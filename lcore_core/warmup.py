"""A gate for a backend that misbehaves when its very first calls come together.

Llama Stack 0.7 makes its stores on first use: concurrent first conversation creates race on the
table ("no such table", 500s), and a burst of first Responses calls takes seconds each. Until one
call has succeeded the gate lets calls through one at a time; after that it costs nothing.
"""

from __future__ import annotations

import asyncio

from lcore_core.metrics import waiting_on_llama


class FirstCallsAlone:
    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self.warm = False

    async def admit(self) -> bool:
        """Wait for a turn; True when this call holds the gate and must `settle` it."""
        if self.warm:
            return False
        with waiting_on_llama():  # waiting for Llama Stack, not LCore's own time
            await self._lock.acquire()
        if self.warm:
            self._lock.release()
            return False
        return True

    def settle(self, admitted: bool, succeeded: bool) -> None:
        """After a call `admit` returned True for: open the gate for good if it `succeeded`."""
        if admitted:
            self.warm = self.warm or succeeded
            self._lock.release()
