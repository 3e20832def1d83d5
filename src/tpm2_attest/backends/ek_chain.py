"""The EK certificate chain a TPM keeps in NV (TCG EK Credential Profile 2.x, 2.2.1.5.2).

What the profile says (v2.5 r2): TPM NV MAY hold every certificate of the EK certificate chain
but the root; they are X.509 DER certificates; more than one certificate, or more than one
chain, is stored as one concatenated sequence in the indices 0x01C00100-0x01C001FF, populated
from 0x01C00100 upwards; a sequence that does not fit one index overflows into the next larger
index, and a certificate may be split across two; no order of the certificates is required.
Intel PTT (11th-generation Core on) keeps the CAs of its chip there (ROM, kernel and PTT CAs,
concatenated in 0x01C00100), between the EK certificate and Intel's On Die CA.

So the chain is read as tpm2-tools-era readers and the tpm-ca-certificates project read it:
the indices that exist in the range (one TPM_CAP_HANDLES enumeration, not 256 probes), in
index order, each with the NV read that picks its authHandle from its attributes, their
contents concatenated and cut into DER certificates. Tolerated as in the EK certificate
indices: a TCG PC Client stored-certificate header (0x1001) at the start of an index, and
padding (all 0x00 or all 0xFF) from the end of a certificate to the end of its index.

Decided here: nothing of the chain ever makes ``Tpm.ek()`` fail. An index that cannot be read
(authorization, a policy-only index, not written) breaks the sequence there; bytes that are
not a DER certificate are skipped up to the next index; limits stop the reading. Each is
said in ``EkChain.note``. What is kept is only framed as certificates (an outer SEQUENCE of
tbsCertificate, signatureAlgorithm, signatureValue): the verifier parses and judges them, as
untrusted intermediates. Transport failures and malformed TPM responses still raise.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from .. import _der
from .._frozen import frozen
from ..commands import TpmCommands, nv_read_auth_handle
from ..errors import ErrorCode, TpmError
from ..evidence import EK_CHAIN_MAX_BYTES, EK_CHAIN_MAX_CERTS
from ..tpm2.constants import NV_EK_CHAIN_FIRST, NV_EK_CHAIN_LAST, TPMA_NV

__all__ = ["MAX_INDICES", "EkChain", "read_ek_chain", "split_ek_chain"]

MAX_INDICES: Final = 32
"""EK chain NV indices read at most (the range has 256; Intel PTT uses one)."""
_STORED_CERT: Final = b"\x10\x01"
_FULL_CERT: Final = b"\x10\x02"
_SKIPPED_CODES: Final = frozenset({ErrorCode.TPM_ERROR, ErrorCode.UNSUPPORTED, ErrorCode.KEY_NOT_FOUND,
                                   ErrorCode.REQUIRES_ELEVATION, ErrorCode.LOCKOUT})
"""Errors that make one index unreadable for this caller (the TPM refused), not the TPM unusable."""

Segment = tuple[int, bytes | None]
"""(NV index, its contents), or None as contents when the index could not be read."""


@frozen
class EkChain:
    """Certificates (DER) found in the EK chain indices, in stored order, and what was skipped."""

    certificates: tuple[bytes, ...] = ()
    note: str | None = None


def _certificate_shape(data: bytes, start: int, end: int) -> str | None:
    """Why data[start:end] is not framed as an X.509 certificate, or None when it is."""
    try:
        parts = _der.children(data, start, end)
    except _der.Malformed as exc:
        return str(exc)
    tags = [p[0] for p in parts]
    if tags != [0x30, 0x30, 0x03]:
        return "not tbsCertificate, signatureAlgorithm, signatureValue"
    return None


def split_ek_chain(segments: Sequence[Segment]) -> tuple[list[bytes], list[str]]:
    """Cut the concatenated contents of EK chain indices into DER certificates.

    ``segments`` are (index, contents) in index order; contents None means "not read", which
    ends a certificate split across it. Returns the certificates and the problems met (each
    names the index); at most EK_CHAIN_MAX_CERTS certificates. Linear in the input."""
    certs: list[bytes] = []
    problems: list[str] = []
    runs: list[list[tuple[int, bytes]]] = [[]]
    for index, contents in segments:
        if contents is None:
            runs.append([])
        else:
            runs[-1].append((index, contents))
    for run in runs:
        if not run:
            continue
        data = b"".join(c for _, c in run)
        bounds: list[tuple[int, int, int]] = []  # (start, end, index) of each index's bytes
        off = 0
        for index, contents in run:
            bounds.append((off, off + len(contents), index))
            off += len(contents)
        seg = 0
        pos = 0
        while pos < len(data):
            while bounds[seg][1] <= pos:
                seg += 1
            start, end, index = bounds[seg]
            at = f"NV 0x{index:08x} offset {pos - start}"
            rest = data[pos:end]
            if data[pos] in (0x00, 0xFF) and rest.count(data[pos]) == len(rest):
                pos = end  # padding to the end of the index
                continue
            if pos == start and rest[:2] == _STORED_CERT and len(rest) >= 5:
                # TCG PC Client stored certificate: tag, certType, u16 size, then the certificate
                # (after a 0x1002 full-certificate tag); what follows it in the index is padding.
                size = int.from_bytes(rest[3:5], "big")
                inner = rest[5 : 5 + size]
                skip = 2 if inner[:2] == _FULL_CERT else 0
                found, why = _split_one(inner[skip:])
                if why is not None:
                    problems.append(f"{at}: stored-certificate header: {why}")
                certs.extend(found)
                pos = end
                continue
            if len(certs) >= EK_CHAIN_MAX_CERTS:
                problems.append(f"{at}: more than {EK_CHAIN_MAX_CERTS} certificates; the rest skipped")
                return certs, problems
            cert_end, why = _frame(data, pos)
            if why is not None:
                problems.append(f"{at}: {why}; skipped to the next index")
                pos = end
                continue
            certs.append(data[pos:cert_end])
            pos = cert_end
    return certs[:EK_CHAIN_MAX_CERTS], problems


def _frame(data: bytes, pos: int) -> tuple[int, str | None]:
    """(end, None) for a certificate starting at ``pos``, else (pos, why not)."""
    if data[pos] != 0x30:
        return pos, f"byte 0x{data[pos]:02x} does not start a DER certificate"
    left = len(data) - pos
    first = data[pos + 1] if left >= 2 else None
    if first is None:
        return pos, "truncated: a certificate header cut short"
    if first < 0x80:
        head, length = 2, first
    elif 0x81 <= first <= 0x84:
        head = 2 + (first & 0x7F)
        if head > left:
            return pos, "truncated: a certificate header cut short"
        length = int.from_bytes(data[pos + 2 : pos + head], "big")
    else:
        return pos, "not a DER certificate (indefinite or oversized length)"
    if head + length > EK_CHAIN_MAX_BYTES:
        return pos, f"a certificate of {head + length} bytes is over the limit"
    if head + length > left:
        return pos, f"truncated: a certificate of {head + length} bytes, {left} left"
    why = _certificate_shape(data, pos + head, pos + head + length)
    if why is not None:
        return pos, f"not a certificate ({why})"
    return pos + head + length, None


def _split_one(data: bytes) -> tuple[list[bytes], str | None]:
    """Certificates laid end to end in ``data`` (inside a stored-certificate header)."""
    out: list[bytes] = []
    pos = 0
    while pos < len(data):
        rest = data[pos:]
        if data[pos] in (0x00, 0xFF) and rest.count(data[pos]) == len(rest):
            break
        end, why = _frame(data, pos)
        if why is not None:
            return out, why
        out.append(data[pos:end])
        pos = end
    return out, None


def read_ek_chain(cmd: TpmCommands) -> EkChain:
    """Read the EK certificate chain indices of this TPM (module docstring), within the limits:
    MAX_INDICES indices, EK_CHAIN_MAX_BYTES bytes (checked against each index's size before
    reading it), EK_CHAIN_MAX_CERTS certificates."""
    notes: list[str] = []
    try:
        handles = cmd.handles_in_range(NV_EK_CHAIN_FIRST, NV_EK_CHAIN_LAST, MAX_INDICES)
    except TpmError as exc:
        if exc.code not in _SKIPPED_CODES:
            raise
        return EkChain((), f"EK chain NV indices not listed: {exc.message}")
    if len(handles) > MAX_INDICES:
        notes.append(f"more than {MAX_INDICES} EK chain NV indices: read the first {MAX_INDICES}")
        handles = handles[:MAX_INDICES]
    segments: list[Segment] = []
    budget = EK_CHAIN_MAX_BYTES
    for index in handles:
        try:
            pub = cmd.nv_read_public(index)[0]
            if pub.nv_index != index:
                raise TpmError(f"NV_ReadPublic of 0x{index:08x} answered for 0x{pub.nv_index:08x}",
                               code=ErrorCode.BAD_RESPONSE, command="TPM2_NV_ReadPublic")
            if not pub.attributes & TPMA_NV.WRITTEN:
                notes.append(f"NV 0x{index:08x} is not written")
                segments.append((index, None))
                continue
            if pub.data_size > budget:
                notes.append(f"NV 0x{index:08x} ({pub.data_size} bytes) would pass the "
                             f"{EK_CHAIN_MAX_BYTES}-byte limit: it and the indices after it not read")
                break
            data = cmd.nv_read(index, pub.data_size, auth_handle=nv_read_auth_handle(pub))
        except TpmError as exc:
            if exc.code not in _SKIPPED_CODES:
                raise
            notes.append(f"NV 0x{index:08x} not read: {exc.message}")
            segments.append((index, None))
            continue
        budget -= len(data)
        segments.append((index, data))
    certs, problems = split_ek_chain(segments)
    notes.extend(problems)
    return EkChain(tuple(certs), "; ".join(notes) if notes else None)
