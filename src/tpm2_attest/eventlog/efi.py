"""UEFI structures found inside event data: EFI_SIGNATURE_LIST databases and EFI_LOAD_OPTION."""

from __future__ import annotations

import hashlib
import struct
from typing import TYPE_CHECKING, Any, Final

from .._frozen import frozen
from . import guids
from ._le import LeReader, guid_text
from .devicepath import device_path_text
from .errors import EventLogError
from .wellknown import name_of_fingerprint

if TYPE_CHECKING:
    from cryptography import x509

_SIGLIST: Final = struct.Struct("<16sIII")
_WIN_CERT: Final = struct.Struct("<IHH16s")
_EFI_TIME_SIZE: Final = 16
WIN_CERT_TYPE_EFI_GUID: Final = 0x0EF1
WIN_CERT_REVISION: Final = 0x0200

_HASH_SIGNATURE_SIZES: Final[dict[str, int]] = {
    guids.EFI_CERT_SHA1: 20,
    guids.EFI_CERT_SHA224: 28,
    guids.EFI_CERT_SHA256: 32,
    guids.EFI_CERT_SHA384: 48,
    guids.EFI_CERT_SHA512: 64,
}


@frozen
class SignatureEntry:
    """One EFI_SIGNATURE_DATA of a signature list: owner GUID + data, with the parsed X.509
    certificate for EFI_CERT_X509 entries (``certificate_error`` says why parsing failed)."""

    signature_type: str
    owner: str
    data: bytes
    certificate: x509.Certificate | None = None
    certificate_error: str | None = None

    @property
    def type_name(self) -> str:
        """``EFI_CERT_X509``, ``EFI_CERT_SHA256``... or the type GUID when unknown."""
        return guids.SIGNATURE_TYPES.get(self.signature_type, self.signature_type)

    @property
    def is_certificate(self) -> bool:
        """True for EFI_CERT_X509 entries."""
        return self.signature_type == guids.EFI_CERT_X509

    @property
    def hash_value(self) -> bytes | None:
        """The hash for EFI_CERT_SHA* entries (the data itself), else None."""
        size = _HASH_SIGNATURE_SIZES.get(self.signature_type)
        return self.data if size is not None and len(self.data) == size else None

    @property
    def sha256(self) -> bytes:
        """SHA-256 of the entry data (the certificate fingerprint for X.509 entries)."""
        return hashlib.sha256(self.data).digest()

    @property
    def fingerprint(self) -> bytes:
        """SHA-256 of the DER certificate of an X.509 entry (padding after it left out), of the
        data for other entries: what identifies a certificate in a policy."""
        if self.is_certificate:
            return hashlib.sha256(der_prefix(self.data) or self.data).digest()
        return self.sha256

    @property
    def well_known(self) -> str | None:
        """The well-known name of an X.509 entry (``MS_THIRD_PARTY_UEFI_CA_2011``...), else None."""
        return name_of_fingerprint(self.fingerprint) if self.is_certificate else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description."""
        d: dict[str, Any] = {"type": self.type_name, "owner": self.owner}
        owner_name = guids.guid_name(self.owner)
        if owner_name:
            d["owner_name"] = owner_name
        if self.is_certificate:
            d["sha256"] = self.fingerprint.hex()
            name = self.well_known
            if name is not None:
                d["well_known"] = name
            if self.certificate is not None:
                c = self.certificate
                d["subject"] = c.subject.rfc4514_string()
                d["issuer"] = c.issuer.rfc4514_string()
                d["serial"] = f"{c.serial_number:x}"
                d["not_before"] = c.not_valid_before_utc.isoformat()
                d["not_after"] = c.not_valid_after_utc.isoformat()
            else:
                d["certificate_error"] = self.certificate_error
        elif self.hash_value is not None:
            d["hash"] = self.data.hex()
        else:
            d["data"] = self.data.hex()
        return d


def der_prefix(data: bytes) -> bytes | None:
    """The DER element (an X.509 certificate's outer SEQUENCE) at the start of ``data`` when
    bytes follow it (signature data padded past its certificate), else None."""
    if len(data) < 2 or data[0] != 0x30:
        return None
    first = data[1]
    if first < 0x80:
        head, length = 2, first
    elif 0x81 <= first <= 0x84 and len(data) >= 2 + (first & 0x7F):
        n = first & 0x7F
        head, length = 2 + n, int.from_bytes(data[2 : 2 + n], "big")
    else:
        return None
    end = head + length
    return data[:end] if end < len(data) else None


def parse_certificate(der: bytes) -> tuple[x509.Certificate | None, str | None]:
    """Parse a DER X.509 certificate; return (certificate, None) or (None, reason).

    Bytes after the certificate (padding some firmware leaves in signature data) are ignored.
    cryptography decodes some fields lazily, so the ones this package reads (names, serial,
    validity, TBS bytes) are touched here: a certificate returned will not raise later.
    """
    cert, err = _parse_certificate(der)
    if cert is None:
        prefix = der_prefix(der)
        if prefix is not None:
            cert2, _ = _parse_certificate(prefix)
            if cert2 is not None:
                return cert2, None
    return cert, err


def _parse_certificate(der: bytes) -> tuple[x509.Certificate | None, str | None]:
    from cryptography import x509  # on first use: most events carry no certificate

    try:
        cert = x509.load_der_x509_certificate(der)
        cert.subject.rfc4514_string()
        cert.issuer.rfc4514_string()
        _ = (cert.serial_number, cert.not_valid_before_utc, cert.not_valid_after_utc,
             cert.tbs_certificate_bytes)
    except Exception as exc:  # cryptography raises ValueError and friends
        return None, f"{type(exc).__name__}: {exc}"
    return cert, None


def parse_signature_lists(data: bytes, base: int = 0) -> tuple[SignatureEntry, ...]:
    """Parse a sequence of EFI_SIGNATURE_LIST (a PK/KEK/db/dbx value) into its entries.

    Every size is checked against the bytes present; a malformed database raises
    EventLogError (offsets relative to ``base``). An empty value is an empty database.
    """
    entries: list[SignatureEntry] = []
    pos, end = 0, len(data)
    while pos < end:
        if end - pos < _SIGLIST.size:
            raise EventLogError("EFI_SIGNATURE_LIST: truncated header", base + pos)
        type_raw, list_size, header_size, sig_size = _SIGLIST.unpack_from(data, pos)
        if list_size > end - pos:
            raise EventLogError(
                f"EFI_SIGNATURE_LIST: SignatureListSize {list_size} exceeds the data", base + pos
            )
        body = list_size - _SIGLIST.size - header_size
        if body < 0:
            raise EventLogError("EFI_SIGNATURE_LIST: sizes inconsistent", base + pos)
        if sig_size < 16:
            raise EventLogError(f"EFI_SIGNATURE_LIST: SignatureSize {sig_size} < 16", base + pos)
        if body % sig_size:
            raise EventLogError(
                "EFI_SIGNATURE_LIST: list body is not a whole number of signatures", base + pos
            )
        sig_type = guid_text(type_raw)
        p = pos + _SIGLIST.size + header_size
        stop = pos + list_size
        while p < stop:
            owner = guid_text(data, p)
            payload = data[p + 16 : p + sig_size]
            if sig_type == guids.EFI_CERT_X509:
                cert, err = parse_certificate(payload)
                entries.append(SignatureEntry(sig_type, owner, payload, cert, err))
            else:
                entries.append(SignatureEntry(sig_type, owner, payload))
            p += sig_size
        pos = stop
    return tuple(entries)


def parse_variable_update(data: bytes, base: int = 0) -> tuple[SignatureEntry, ...]:
    """The signature entries of a signature-database update such as Microsoft's dbx updates.

    The input is either an authenticated variable payload (UEFI 2.10 section 8.2.2:
    EFI_VARIABLE_AUTHENTICATION_2 = EFI_TIME + WIN_CERTIFICATE_UEFI_GUID of type
    EFI_CERT_TYPE_PKCS7, then the EFI_SIGNATURE_LISTs) or bare EFI_SIGNATURE_LISTs. The
    signature is not checked (the firmware does that); this reads what the update revokes or
    adds. Raises EventLogError when the framing is broken.
    """
    if len(data) >= _EFI_TIME_SIZE + _WIN_CERT.size:
        length, revision, cert_type, guid = _WIN_CERT.unpack_from(data, _EFI_TIME_SIZE)
        if (revision == WIN_CERT_REVISION and cert_type == WIN_CERT_TYPE_EFI_GUID
                and guid_text(guid) == guids.EFI_CERT_TYPE_PKCS7):
            start = _EFI_TIME_SIZE + length
            if length < _WIN_CERT.size or start > len(data):
                raise EventLogError(f"WIN_CERTIFICATE dwLength {length} does not fit the data",
                                    base + _EFI_TIME_SIZE)
            return parse_signature_lists(data[start:], base + start)
    return parse_signature_lists(data, base)


@frozen
class LoadOption:
    """EFI_LOAD_OPTION (the value of a Boot#### variable)."""

    attributes: int
    description: str
    device_path: str | None
    device_path_error: str | None
    optional_data: bytes

    @property
    def active(self) -> bool:
        """LOAD_OPTION_ACTIVE."""
        return bool(self.attributes & 1)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description."""
        d: dict[str, Any] = {
            "attributes": self.attributes,
            "active": self.active,
            "description": self.description,
            "device_path": self.device_path,
        }
        if self.device_path_error:
            d["device_path_error"] = self.device_path_error
        if self.optional_data:
            d["optional_data"] = self.optional_data.hex()
        return d


def parse_load_option(data: bytes, base: int = 0) -> LoadOption:
    """Parse EFI_LOAD_OPTION; raise EventLogError when its framing is broken."""
    r = LeReader(data, base)
    attributes = r.u32("EFI_LOAD_OPTION.Attributes")
    path_len = r.u16("EFI_LOAD_OPTION.FilePathListLength")
    description = r.ucs2z("EFI_LOAD_OPTION.Description")
    path_off = r.pos
    path = r.raw(path_len, "EFI_LOAD_OPTION.FilePathList")
    try:
        text: str | None = device_path_text(path, base + path_off)
        err = None
    except EventLogError as exc:
        text, err = None, str(exc)
    return LoadOption(attributes, description, text, err, r.rest())
