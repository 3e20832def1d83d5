"""IMA template descriptors and field encodings (the kernel's ima_template.c / ima_template_lib.c).

A template is a list of fields; an entry stores each field's data as the kernel built it
(``ima_write_template_field_data``):

- ``d``: the raw digest (SHA-1 or MD5 only; the legacy ``ima`` template);
- ``d-ng``, ``d-modsig``: ``<algo> ":" NUL <digest>``; ``d-ngv2``: ``<type> ":" <algo> ":" NUL
  <digest>`` (type ``ima`` or ``verity``);
- ``n``, ``n-ng``, ``xattrnames``: a string with its NUL terminator, spaces replaced by ``_``;
- ``sig``, ``buf``, ``modsig``, ``evmsig``, ``xattrlengths``, ``xattrvalues``: raw bytes
  (shown as hex in ASCII lists);
- ``iuid``, ``igid`` (4 bytes), ``imode`` (2 bytes): integers in host order (little-endian
  with ``ima_canonical_fmt``), shown in decimal in ASCII lists.

The template hash of an entry is ``H(u32 len || data)`` over all fields, except for the
legacy ``ima`` template: ``H(d || n padded with NULs to 256 bytes)``.
"""

from __future__ import annotations

from typing import Final, Literal

Kind = Literal["digest", "digest_ng", "string", "hex", "uint"]

FIELDS: Final[dict[str, Kind]] = {
    "d": "digest",
    "n": "string",
    "d-ng": "digest_ng",
    "d-ngv2": "digest_ng",
    "n-ng": "string",
    "sig": "hex",
    "buf": "hex",
    "d-modsig": "digest_ng",
    "modsig": "hex",
    "evmsig": "hex",
    "iuid": "uint",
    "igid": "uint",
    "imode": "uint",
    "xattrnames": "string",
    "xattrlengths": "hex",
    "xattrvalues": "hex",
}
"""Every field id the kernel defines, with how its data is encoded."""

UINT_SIZES: Final[dict[str, int]] = {"iuid": 4, "igid": 4, "imode": 2}

TEMPLATES: Final[dict[str, tuple[str, ...]]] = {
    "ima": ("d", "n"),
    "ima-ng": ("d-ng", "n-ng"),
    "ima-sig": ("d-ng", "n-ng", "sig"),
    "ima-ngv2": ("d-ngv2", "n-ng"),
    "ima-sigv2": ("d-ngv2", "n-ng", "sig"),
    "ima-buf": ("d-ng", "n-ng", "buf"),
    "ima-modsig": ("d-ng", "n-ng", "sig", "d-modsig", "modsig"),
    "evm-sig": ("d-ng", "n-ng", "evmsig", "xattrnames", "xattrlengths", "xattrvalues",
                "iuid", "igid", "imode"),
}
"""The kernel's built-in template descriptors."""

REQUIRED: Final = frozenset({"d", "n", "d-ng", "d-ngv2", "n-ng"})
"""Fields the kernel always fills (the others may be empty: no signature, no modsig...)."""

IMA_NAME_PAD: Final = 256
"""The legacy ``ima`` template hashes its name NUL-padded to IMA_EVENT_NAME_LEN_MAX + 1."""

MAX_TEMPLATE_NAME: Final = 255
MAX_FIELDS: Final = 15
"""IMA_TEMPLATE_NUM_FIELDS_MAX."""


def template_fields(name: str) -> tuple[str, ...] | None:
    """The field ids of a template: a built-in name, or a format string ``d-ng|n-ng|sig``
    (the name the kernel shows for a custom ``ima_template_fmt=``); None when unknown."""
    fields = TEMPLATES.get(name)
    if fields is not None:
        return fields
    parts = tuple(name.split("|"))
    if 0 < len(parts) <= MAX_FIELDS and all(p in FIELDS for p in parts):
        return parts
    return None
