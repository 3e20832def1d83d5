"""Event-log failures: every malformed, hostile or inconsistent log raises :class:`EventLogError`."""

from __future__ import annotations


class EventLogError(ValueError):
    """The event log is malformed (truncated, oversized, lying lengths, impossible values).

    ``offset`` is the byte offset in the log where the problem was found and ``event`` the
    sequence number of the record concerned (0 = first record), when known.
    """

    def __init__(self, message: str, offset: int | None = None, event: int | None = None) -> None:
        self.message = message
        self.offset = offset
        self.event = event
        where: list[str] = []
        if event is not None:
            where.append(f"event {event}")
        if offset is not None:
            where.append(f"offset {offset}")
        super().__init__(f"{message} ({', '.join(where)})" if where else message)


class EventLogBankError(EventLogError):
    """The log cannot be replayed in the requested PCR bank (no digests for it)."""


class SecureBootError(EventLogError):
    """The Secure Boot events of PCR 7 are inconsistent (duplicates, order, digests, types)."""
