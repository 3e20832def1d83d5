"""Synthesize TCG PC Client event logs for tests.

Written independently of the parser (plain struct packing and hashlib), so a log built here
and the PCR values it predicts are a second opinion on ``tpm2_attest.eventlog``. Covers the
formats the real test logs lack (SHA-1 legacy, SHA-384/SHA-512 banks, StartupLocality,
H-CRTM), UEFI structures (variables, signature lists, image loads, device paths, GPT...) and
hostile variants (lying lengths, truncation, impossible values).
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
import struct
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

LOGS_DIR = Path(os.environ.get(
    "TPM2_ATTEST_EVENTLOGS",
    Path(__file__).resolve().parent / "data" / "eventlogs"))
"""The real logs (tests/data/eventlogs, see tests/data/README.md; env TPM2_ATTEST_EVENTLOGS)."""

# TPM_ALG ids, digest sizes and hash functions of the banks a log may carry.
BANKS: dict[str, tuple[int, int, Callable[[bytes], bytes]]] = {
    "sha1": (0x0004, 20, lambda b: hashlib.sha1(b).digest()),
    "sha256": (0x000B, 32, lambda b: hashlib.sha256(b).digest()),
    "sha384": (0x000C, 48, lambda b: hashlib.sha384(b).digest()),
    "sha512": (0x000D, 64, lambda b: hashlib.sha512(b).digest()),
}

# Event types (PFP 1.06).
EV_POST_CODE = 0x1
EV_NO_ACTION = 0x3
EV_SEPARATOR = 0x4
EV_ACTION = 0x5
EV_EVENT_TAG = 0x6
EV_S_CRTM_CONTENTS = 0x7
EV_S_CRTM_VERSION = 0x8
EV_IPL = 0xD
EV_EFI_VARIABLE_DRIVER_CONFIG = 0x80000001
EV_EFI_VARIABLE_BOOT = 0x80000002
EV_EFI_BOOT_SERVICES_APPLICATION = 0x80000003
EV_EFI_BOOT_SERVICES_DRIVER = 0x80000004
EV_EFI_GPT_EVENT = 0x80000006
EV_EFI_ACTION = 0x80000007
EV_EFI_PLATFORM_FIRMWARE_BLOB = 0x80000008
EV_EFI_HANDOFF_TABLES = 0x80000009
EV_EFI_PLATFORM_FIRMWARE_BLOB2 = 0x8000000A
EV_EFI_HANDOFF_TABLES2 = 0x8000000B
EV_EFI_HCRTM_EVENT = 0x80000010
EV_EFI_VARIABLE_AUTHORITY = 0x800000E0

EFI_GLOBAL_VARIABLE = "8be4df61-93ca-11d2-aa0d-00e098032b8c"
EFI_IMAGE_SECURITY_DATABASE = "d719b2cb-3d3a-4596-a3bc-dad00e67656f"
EFI_CERT_X509 = "a5c059a1-94e4-4aa7-87b5-ab155c2bf072"
EFI_CERT_SHA256 = "c1c41626-504c-4092-aca9-41f936934328"
OWNER = "77fa9abd-0359-4d32-bd60-28f4e78f784b"
SHIM_LOCK = "605dab50-e046-4300-abb6-3dd810dd8b23"


def guid(text: str) -> bytes:
    """EFI_GUID bytes (mixed-endian) of a GUID string."""
    return uuid.UUID(text).bytes_le


# ---------------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------------


def legacy_record(pcr: int, etype: int, digest: bytes, data: bytes, size: int | None = None) -> bytes:
    """TCG_PCClientPCREvent; ``size`` overrides eventSize (to lie)."""
    assert len(digest) == 20
    return struct.pack("<II", pcr, etype) + digest + struct.pack(
        "<I", len(data) if size is None else size
    ) + data


def agile_record(
    pcr: int,
    etype: int,
    digests: Sequence[tuple[int, bytes]],
    data: bytes,
    *,
    count: int | None = None,
    size: int | None = None,
) -> bytes:
    """TCG_PCR_EVENT2; ``count``/``size`` override the digest count / eventSize (to lie)."""
    out = struct.pack("<III", pcr, etype, len(digests) if count is None else count)
    for alg, d in digests:
        out += struct.pack("<H", alg) + d
    return out + struct.pack("<I", len(data) if size is None else size) + data


def spec_id_data(
    algs: Sequence[tuple[int, int]],
    *,
    uintn: int = 2,
    vendor: bytes = b"",
    count: int | None = None,
    vendor_size: int | None = None,
    signature: bytes = b"Spec ID Event03\0",
) -> bytes:
    """TCG_EfiSpecIDEventStruct."""
    out = signature + struct.pack("<IBBBBI", 0, 0, 2, 0, uintn, len(algs) if count is None else count)
    for alg, size in algs:
        out += struct.pack("<HH", alg, size)
    return out + bytes((len(vendor) if vendor_size is None else vendor_size,)) + vendor


def spec_id_record(banks: Iterable[str], **kw: object) -> bytes:
    """The legacy-format first record of a crypto-agile log."""
    algs = [(BANKS[b][0], BANKS[b][1]) for b in banks]
    return legacy_record(0, EV_NO_ACTION, bytes(20), spec_id_data(algs, **kw))  # type: ignore[arg-type]


def startup_locality_data(locality: int) -> bytes:
    return b"StartupLocality\0" + bytes((locality,))


# ---------------------------------------------------------------------------------------------
# A log builder that predicts the PCR values
# ---------------------------------------------------------------------------------------------


@dataclass
class _Rec:
    pcr: int
    etype: int
    data: bytes
    digests: dict[str, bytes]


@dataclass
class LogBuilder:
    """Build a log event by event; :meth:`expected` replays it independently."""

    banks: Sequence[str] = ("sha256",)
    legacy: bool = False
    uintn: int = 2
    vendor: bytes = b""
    records: list[_Rec] = field(default_factory=list)
    locality: int | None = None
    hcrtm: bool = False

    def event(
        self,
        pcr: int,
        etype: int,
        data: bytes,
        *,
        measured: bytes | None = None,
        digests: dict[str, bytes] | None = None,
    ) -> LogBuilder:
        """Add an event; its digests hash ``measured`` (default: the data) in every bank."""
        banks = ("sha1",) if self.legacy else self.banks
        if digests is None:
            m = data if measured is None else measured
            digests = {b: BANKS[b][2](m) for b in banks}
        self.records.append(_Rec(pcr, etype, data, dict(digests)))
        return self

    def no_action(self, data: bytes, pcr: int = 0) -> LogBuilder:
        banks = ("sha1",) if self.legacy else self.banks
        return self.event(pcr, EV_NO_ACTION, data, digests={b: bytes(BANKS[b][1]) for b in banks})

    def startup_locality(self, locality: int) -> LogBuilder:
        self.locality = locality
        return self.no_action(startup_locality_data(locality))

    def hcrtm_event(self, measured: bytes = b"H-CRTM code") -> LogBuilder:
        self.hcrtm = True
        return self.event(0, EV_EFI_HCRTM_EVENT, b"HCRTM", measured=measured)

    def build(self) -> bytes:
        if self.legacy:
            return b"".join(legacy_record(r.pcr, r.etype, r.digests["sha1"], r.data)
                            for r in self.records)
        out = spec_id_record(self.banks, uintn=self.uintn, vendor=self.vendor)
        for r in self.records:
            digests = [(BANKS[b][0], d) for b, d in r.digests.items()]
            out += agile_record(r.pcr, r.etype, digests, r.data)
        return out

    def expected(self, bank: str) -> dict[int, bytes]:
        """PCR values the log must replay to, computed here without the library."""
        size, h = BANKS[bank][1], BANKS[bank][2]
        pcrs: dict[int, bytes] = {}
        if self.hcrtm:
            pcrs[0] = bytes(size - 1) + b"\x04"
        elif self.locality is not None:
            pcrs[0] = bytes(size - 1) + bytes((self.locality,))
        for r in self.records:
            if r.etype == EV_NO_ACTION:
                continue
            pcrs[r.pcr] = h(pcrs.get(r.pcr, bytes(size)) + r.digests[bank])
        return pcrs


# ---------------------------------------------------------------------------------------------
# UEFI structures
# ---------------------------------------------------------------------------------------------


def uefi_variable(guid_text: str, name: str, value: bytes, *, name_len: int | None = None,
                  data_len: int | None = None) -> bytes:
    """UEFI_VARIABLE_DATA; the length overrides make lying variables."""
    n = name.encode("utf-16-le")
    return (guid(guid_text)
            + struct.pack("<QQ", len(name) if name_len is None else name_len,
                          len(value) if data_len is None else data_len)
            + n + value)


def signature_list(type_guid: str, entries: Sequence[tuple[str, bytes]], *,
                   sig_size: int | None = None, list_size: int | None = None) -> bytes:
    """One EFI_SIGNATURE_LIST of equally sized entries (owner GUID + data)."""
    size = 16 + (len(entries[0][1]) if entries else 0) if sig_size is None else sig_size
    body = b"".join(guid(o) + d for o, d in entries)
    total = 28 + len(body) if list_size is None else list_size
    return guid(type_guid) + struct.pack("<III", total, 0, size) + body


def dp_node(t: int, st: int, data: bytes = b"", length: int | None = None) -> bytes:
    return struct.pack("<BBH", t, st, len(data) + 4 if length is None else length) + data


def dp_end() -> bytes:
    return dp_node(0x7F, 0xFF)


def dp_file(path: str) -> bytes:
    return dp_node(4, 4, (path + "\0").encode("utf-16-le"))


def dp_pciroot(uid: int = 0) -> bytes:
    return dp_node(2, 1, struct.pack("<II", 0x0A0341D0, uid))


def dp_pci(dev: int, fn: int) -> bytes:
    return dp_node(1, 1, bytes((fn, dev)))


def dp_hd_gpt(num: int, start: int, size: int, sig: str) -> bytes:
    return dp_node(4, 1, struct.pack("<IQQ", num, start, size) + guid(sig) + bytes((2, 2)))


def image_load(device_path: bytes, *, location: int = 0x7F000000, length: int = 0x20000,
               link: int = 0, uintn: int = 8, dp_len: int | None = None) -> bytes:
    """UEFI_IMAGE_LOAD_EVENT with UINTN fields of ``uintn`` bytes."""
    fmt = "<QQQQ" if uintn == 8 else "<QIII"
    return struct.pack(fmt, location, length, link,
                       len(device_path) if dp_len is None else dp_len) + device_path


def blob(base: int, length: int) -> bytes:
    return struct.pack("<QQ", base, length)


def blob2(desc: bytes, base: int, length: int) -> bytes:
    return bytes((len(desc),)) + desc + struct.pack("<QQ", base, length)


def handoff_tables(tables: Sequence[tuple[str, int]], count: int | None = None) -> bytes:
    out = struct.pack("<Q", len(tables) if count is None else count)
    return out + b"".join(guid(g) + struct.pack("<Q", a) for g, a in tables)


def gpt_data(disk: str, partitions: Sequence[tuple[str, str, int, int, str]],
             count: int | None = None) -> bytes:
    """UEFI_GPT_DATA: header, NumberOfPartitions (UINT64), 128-byte entries."""
    hdr = (b"EFI PART" + struct.pack("<IIII", 0x10000, 92, 0, 0)
           + struct.pack("<QQQQ", 1, 999, 34, 966) + guid(disk)
           + struct.pack("<QIII", 2, 128, 128, 0))
    assert len(hdr) == 92
    out = hdr + struct.pack("<Q", len(partitions) if count is None else count)
    for ptype, pid, first, last, name in partitions:
        n = name.encode("utf-16-le").ljust(72, b"\0")
        out += guid(ptype) + guid(pid) + struct.pack("<QQQ", first, last, 0) + n
    return out


def load_option(description: str, device_path: bytes, attributes: int = 1,
                optional: bytes = b"") -> bytes:
    return (struct.pack("<IH", attributes, len(device_path))
            + (description + "\0").encode("utf-16-le") + device_path + optional)


def self_signed_cert(cn: str) -> bytes:
    """A small self-signed EC certificate (DER) for signature databases and authorities."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=3650))
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.DER)


# ---------------------------------------------------------------------------------------------
# Whole logs
# ---------------------------------------------------------------------------------------------


@dataclass
class SecureBootLog:
    """A synthesized boot whose PCR 7 carries Secure Boot configuration."""

    builder: LogBuilder
    certs: dict[str, bytes]
    dbx_hashes: list[bytes]

    def build(self) -> bytes:
        return self.builder.build()


def secure_boot_log(
    banks: Sequence[str] = ("sha1", "sha256"),
    *,
    enabled: bool = True,
    legacy: bool = False,
    extra_pcr7: Callable[[LogBuilder], None] | None = None,
    authorities: bool = True,
    debug: bool = False,
) -> SecureBootLog:
    """A plausible UEFI boot: S-CRTM, PCR 7 Secure Boot variables, separators, a boot
    application verified by a db certificate (authority), ExitBootServices."""
    b = LogBuilder(banks=banks, legacy=legacy)
    certs = {n: self_signed_cert(n) for n in ("PK", "KEK", "db")}
    dbx = [hashlib.sha256(bytes((i,))).digest() for i in range(3)]
    b.event(0, EV_S_CRTM_VERSION, "1.0\0".encode("utf-16-le"))
    b.event(0, EV_EFI_PLATFORM_FIRMWARE_BLOB, blob(0xFFC00000, 0x400000), measured=b"firmware")
    if debug:
        b.event(7, EV_EFI_ACTION, b"UEFI Debug Mode")
    b.event(7, EV_EFI_VARIABLE_DRIVER_CONFIG,
            uefi_variable(EFI_GLOBAL_VARIABLE, "SecureBoot", b"\x01" if enabled else b"\x00"))
    for name, g in (("PK", EFI_GLOBAL_VARIABLE), ("KEK", EFI_GLOBAL_VARIABLE),
                    ("db", EFI_IMAGE_SECURITY_DATABASE)):
        value = signature_list(EFI_CERT_X509, [(OWNER, certs[name])])
        b.event(7, EV_EFI_VARIABLE_DRIVER_CONFIG, uefi_variable(g, name, value))
    b.event(7, EV_EFI_VARIABLE_DRIVER_CONFIG,
            uefi_variable(EFI_IMAGE_SECURITY_DATABASE, "dbx",
                          signature_list(EFI_CERT_SHA256, [(OWNER, h) for h in dbx])))
    if extra_pcr7 is not None:
        extra_pcr7(b)
    for pcr in range(8):
        b.event(pcr, EV_SEPARATOR, b"\0\0\0\0")
    b.event(4, EV_EFI_ACTION, b"Calling EFI Application from Boot Option")
    path = (dp_pciroot() + dp_pci(0x1F, 2)
            + dp_hd_gpt(1, 0x800, 0x100000, "11111111-2222-3333-4444-555555555555")
            + dp_file("\\EFI\\BOOT\\BOOTX64.EFI") + dp_end())
    if authorities:
        b.event(7, EV_EFI_VARIABLE_AUTHORITY,
                uefi_variable(EFI_IMAGE_SECURITY_DATABASE, "db", guid(OWNER) + certs["db"]))
    b.event(4, EV_EFI_BOOT_SERVICES_APPLICATION, image_load(path), measured=b"PE image")
    b.event(5, EV_EFI_ACTION, b"Exit Boot Services Invocation")
    b.event(5, EV_EFI_ACTION, b"Exit Boot Services Returned with Success")
    return SecureBootLog(b, certs, dbx)


def rich_log(banks: Sequence[str] = ("sha256",), *, legacy: bool = False,
             no_action: bool = True) -> LogBuilder:
    """A log exercising every decoder (all types tpm2-tools 5.4 knows when ``no_action`` is
    False, so the referee can judge it)."""
    b = LogBuilder(banks=banks, legacy=legacy)
    if no_action:
        b.startup_locality(3)
    b.event(0, EV_S_CRTM_CONTENTS, blob(0xFFF00000, 0x100000), measured=b"crtm")
    b.event(0, EV_S_CRTM_VERSION, guid("546bfb1e-1d0c-4055-a4ad-4ef4bf17b83a"))
    b.event(0, EV_POST_CODE, b"ACPI DATA", measured=b"acpi")
    b.event(0, EV_EFI_PLATFORM_FIRMWARE_BLOB2, blob2(b"Fv(PEI)", 0xFF000000, 0x1000),
            measured=b"fv")
    b.event(1, EV_EFI_HANDOFF_TABLES,
            handoff_tables([("eb9d2d31-2d88-11d3-9a16-0090273fc14d", 0x7F000000)]),
            measured=b"smbios")
    b.event(1, EV_EFI_HANDOFF_TABLES2,
            b"\x08SMBIOS3\0" + handoff_tables([("f2fd1544-9794-4a2c-992e-e5bbcf20e394",
                                                  0x7E000000)]), measured=b"smbios3")
    b.event(1, EV_EFI_VARIABLE_BOOT, uefi_variable(EFI_GLOBAL_VARIABLE, "BootOrder", b"\x01\x00"),
            measured=b"\x01\x00")
    b.event(1, EV_EFI_VARIABLE_BOOT,
            uefi_variable(EFI_GLOBAL_VARIABLE, "Boot0001",
                          load_option("Linux", dp_file("\\EFI\\linux.efi") + dp_end())))
    b.event(2, EV_EFI_BOOT_SERVICES_DRIVER,
            image_load(dp_pciroot() + dp_pci(2, 0) + dp_node(4, 8, struct.pack("<IQQ", 0, 0, 0xFFFF))
                       + dp_end()), measured=b"option rom")
    b.event(4, EV_EFI_GPT_EVENT,
            gpt_data("aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
                     [("c12a7328-f81f-11d2-ba4b-00a0c93ec93b",
                       "12345678-1234-1234-1234-123456789abc", 34, 1000, "EFI System")]))
    b.event(5, EV_EVENT_TAG, struct.pack("<II", 0x1234, 3) + b"abc")
    for pcr in range(8):
        b.event(pcr, EV_SEPARATOR, b"\0\0\0\0")
    b.event(8, EV_IPL, b"grub_cmd: linux /vmlinuz root=/dev/sda1\0",
            measured=b"linux /vmlinuz root=/dev/sda1")
    b.event(9, EV_IPL, b"/boot/vmlinuz\0", measured=b"kernel image")
    b.event(14, EV_IPL, b"MokList\0", measured=b"moklist")
    return b


# ---------------------------------------------------------------------------------------------
# Fuzzing oracle (shared by the hypothesis test and the atheris script)
# ---------------------------------------------------------------------------------------------


def regression_inputs() -> list[bytes]:
    """Inputs that once broke the parser (found by fuzzing), kept in tests/fuzz/regressions."""
    folder = Path(__file__).resolve().parent / "fuzz" / "regressions"
    return [p.read_bytes() for p in sorted(folder.glob("*.bin"))]


def seed_logs() -> list[bytes]:
    """Real logs plus synthesized ones in the formats the real ones lack."""
    logs = [p.read_bytes() for p in sorted(LOGS_DIR.glob("*")) if p.is_file()]
    logs += regression_inputs()
    rich = rich_log(("sha1", "sha256", "sha384", "sha512"))
    rich.hcrtm_event()
    return [
        *logs,
        rich.build(),
        rich_log(legacy=True).build(),
        secure_boot_log(("sha256", "sha384")).build(),
        secure_boot_log(legacy=True, debug=True).build(),
    ]


def exercise(data: bytes) -> None:
    """Drive every entry point with ``data``; anything but the documented errors escaping
    (EventLogError, ValueError for unknown banks, VerificationError) is a bug."""
    import json

    from tpm2_attest.eventlog import EventLogError, parse_event_log, secure_boot_state
    from tpm2_attest.tpm2.constants import HASH_SIZES
    from tpm2_attest.verify.errors import VerificationError
    from tpm2_attest.verify.eventlog import verify_event_log

    for strict in (True, False):
        try:
            log = parse_event_log(data, strict=strict)
        except EventLogError as exc:
            assert exc.offset is None or 0 <= exc.offset <= len(data), exc
            continue
        assert sum(len(e.data) for e in log.events) <= len(data)
        json.dumps(log.to_dict())
        for alg, _ in log.algorithms:
            if alg not in HASH_SIZES:
                continue
            try:
                pcrs = log.replay(alg)
            except EventLogError:
                continue
            try:
                result = verify_event_log(log, pcrs, bank=alg)
            except VerificationError:
                continue
            assert result.verified == frozenset(pcrs)
            json.dumps(result.to_dict())
            json.dumps(result.state.to_dict())
            assert len(json.dumps(result.state.summary())) < 64_000
        with contextlib.suppress(EventLogError):
            json.dumps(secure_boot_state(log).to_dict())


# ---------------------------------------------------------------------------------------------
# Machine-state measurements (what GCE firmware, GRUB, systemd, the Linux EFI stub and Windows
# log), built from their documented formats for tests/test_machine_state.py
# ---------------------------------------------------------------------------------------------

EV_NONHOST_INFO = 0x11


def ucs2z(text: str) -> bytes:
    """UTF-16LE with a NUL terminator."""
    return (text + "\0").encode("utf-16-le")


def gce_scrtm_version(version: int) -> bytes:
    """The EV_S_CRTM_VERSION data of a GCE VM: UCS-2 "GCE Virtual Firmware v<N>" + NUL."""
    return ucs2z(f"GCE Virtual Firmware v{version}")


def gce_nonhost_info(technology: int) -> bytes:
    """GCE's EV_NONHOST_INFO: "GCE NonHostInfo\\0", the technology byte, 15 reserved bytes."""
    return b"GCE NonHostInfo\0" + bytes((technology,)) + bytes(15)


def grub_string(builder: LogBuilder, kind: str, text: str, *, pcr: int = 8) -> LogBuilder:
    """A GRUB PCR 8 string as grub-core/commands/tpm.c logs it: data "<kind>: <text>\\0",
    digest over <text> alone."""
    return builder.event(pcr, EV_IPL, f"{kind}: {text}".encode() + b"\0", measured=text.encode())


def grub_file(builder: LogBuilder, name: str, contents: bytes) -> LogBuilder:
    """A file GRUB read: PCR 9, data = the file name + NUL, digest over the contents."""
    return builder.event(9, EV_IPL, name.encode() + b"\0", measured=contents)


def systemd_cmdline(builder: LogBuilder, text: str, *, pcr: int = 12,
                    with_nul: bool = True) -> LogBuilder:
    """systemd-boot/-stub's command line: EV_IPL, UTF-16 data with NUL; the digest over the
    UTF-16 text with its NUL (strsize16), or without when ``with_nul`` is False."""
    data = ucs2z(text)
    return builder.event(pcr, EV_IPL, data,
                         measured=data if with_nul else text.encode("utf-16-le"))


def uki_section(builder: LogBuilder, name: str, contents: bytes) -> LogBuilder:
    """systemd-stub's pair of PCR 11 events for one UKI section: the name (digest over the ASCII
    name and its NUL), then the contents, both described by the UTF-16 name."""
    builder.event(11, EV_IPL, ucs2z(name), measured=name.encode() + b"\0")
    return builder.event(11, EV_IPL, ucs2z(name), measured=contents)


def tagged(tag: int, data: bytes) -> bytes:
    """TCG_PCClientTaggedEvent."""
    return struct.pack("<II", tag, len(data)) + data


def sipa(etype: int, value: bytes) -> bytes:
    """One SIPA event of the Windows Boot Configuration Log: type, size, data."""
    return struct.pack("<II", etype, len(value)) + value


def gce_boot(builder: LogBuilder, *, version: int = 1, technology: int | None = 0,
             apps: Sequence[tuple[str, bytes]] = (("\\EFI\\BOOT\\BOOTX64.EFI", b"shim"),),
             ebs: bool = True) -> LogBuilder:
    """A GCE-like firmware phase: S-CRTM version, NonHostInfo, separators, boot applications
    (device path, PE contents standing for the Authenticode digest) and ExitBootServices."""
    builder.event(0, EV_S_CRTM_VERSION, gce_scrtm_version(version))
    if technology is not None:
        builder.event(0, EV_NONHOST_INFO, gce_nonhost_info(technology))
    builder.event(4, EV_EFI_ACTION, b"Calling EFI Application from Boot Option")
    for pcr in range(8):
        builder.event(pcr, EV_SEPARATOR, b"\0\0\0\0")
    for path, contents in apps:
        builder.event(4, EV_EFI_BOOT_SERVICES_APPLICATION, image_load(dp_file(path) + dp_end()),
                      measured=contents)
    if ebs:
        builder.event(5, EV_EFI_ACTION, b"Exit Boot Services Invocation")
        builder.event(5, EV_EFI_ACTION, b"Exit Boot Services Returned with Success")
    return builder
