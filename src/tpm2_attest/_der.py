"""A bounded DER (X.690) TLV reader: what the lenient certificate parser and the trust bundle's
AIA/name look-ups share. No schema, no I/O, no dependencies; refuses what DER forbids
outright (indefinite lengths, high tag numbers, lengths past their container, nesting
deeper than ``MAX_DEPTH``) and notes what it tolerates (non-minimal lengths)."""

from __future__ import annotations

from typing import Final

__all__ = ["MAX_DEPTH", "Malformed", "Node", "children", "header", "parse", "parse_exact", "tlv"]

MAX_DEPTH: Final = 32
"""Deepest nesting accepted (certificates use about 10)."""


class Malformed(ValueError):
    """Input the lenient DER walker refuses."""


class Node:
    """One TLV: tag, original content and, when constructed, its children."""

    __slots__ = ("children", "content", "tag")

    def __init__(self, tag: int, content: bytes, children: list[Node] | None) -> None:
        self.tag = tag
        self.content = content
        self.children = children


def header(buf: bytes, pos: int, end: int, notes: set[str]) -> tuple[int, int, int]:
    """Read one TLV header; return (tag, content start, content end)."""
    if pos + 2 > end:
        raise Malformed(f"truncated TLV at offset {pos}")
    tag = buf[pos]
    if tag & 0x1F == 0x1F:
        raise Malformed(f"high tag number form at offset {pos}")
    first = buf[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    elif first == 0x80:
        raise Malformed(f"indefinite length at offset {pos - 2}")
    else:
        n = first & 0x7F
        if n > 4 or pos + n > end:
            raise Malformed(f"bad length field at offset {pos - 2}")
        length = int.from_bytes(buf[pos : pos + n], "big")
        pos += n
        if length < 0x80 or n != (length.bit_length() + 7) // 8:
            notes.add("non-minimal-length")
    if pos + length > end:
        raise Malformed(f"length {length} runs past its container at offset {pos}")
    return tag, pos, pos + length


def parse(buf: bytes, pos: int, end: int, depth: int, notes: set[str]) -> tuple[Node, int]:
    """Parse one TLV (recursively when constructed), bounded in depth."""
    if depth > MAX_DEPTH:
        raise Malformed("nesting too deep")
    tag, start, stop = header(buf, pos, end, notes)
    children: list[Node] | None = None
    if tag & 0x20:
        children = []
        p = start
        while p < stop:
            child, p = parse(buf, p, stop, depth + 1, notes)
            children.append(child)
    return Node(tag, buf[start:stop], children), stop


def parse_exact(data: bytes, notes: set[str]) -> Node:
    node, end = parse(data, 0, len(data), 0, notes)
    if end != len(data):
        raise Malformed("trailing bytes")
    return node


def tlv(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        return bytes((tag, n)) + content
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(size))) + size + content


def children(data: bytes, start: int = 0, end: int | None = None) -> list[tuple[int, int, int, int]]:
    """The TLVs laid end to end in ``data[start:end]``: (tag, header start, content start,
    content end) each, without descending. Raises Malformed."""
    stop = len(data) if end is None else end
    out = []
    pos = start
    while pos < stop:
        tag, cstart, cend = header(data, pos, stop, set())
        out.append((tag, pos, cstart, cend))
        pos = cend
    return out
