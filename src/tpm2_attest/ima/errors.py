"""IMA measurement-list failures: every malformed or hostile list raises :class:`ImaLogError`."""

from __future__ import annotations


class ImaLogError(ValueError):
    """The IMA measurement list is malformed (truncated, oversized, lying lengths, bad text).

    ``offset`` is the byte offset in the list where the problem was found, ``line`` the
    1-based line of an ASCII list and ``entry`` the 0-based index of the entry concerned,
    when known.
    """

    def __init__(self, message: str, *, offset: int | None = None, line: int | None = None,
                 entry: int | None = None) -> None:
        self.message = message
        self.offset = offset
        self.line = line
        self.entry = entry
        where: list[str] = []
        if entry is not None:
            where.append(f"entry {entry}")
        if line is not None:
            where.append(f"line {line}")
        if offset is not None:
            where.append(f"offset {offset}")
        super().__init__(f"{message} ({', '.join(where)})" if where else message)
