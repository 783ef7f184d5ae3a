"""The one exception the wire layer raises: input that must be dropped, with its reason."""

from __future__ import annotations

from netstack.drops import Drop


class Malformed(Exception):
    """A header failed validation; `reason` is the drop counter to bump."""

    __slots__ = ("reason",)

    def __init__(self, reason: Drop) -> None:
        super().__init__(reason.value)
        self.reason = reason
