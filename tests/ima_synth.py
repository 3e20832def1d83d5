"""Synthesize Linux IMA measurement lists for tests.

Written independently of ``tpm2_attest.ima`` from the kernel's ima_fs.c / ima_template_lib.c
(plain struct packing and hashlib), so a list built here and the PCR values it predicts are
a second opinion on the parser and the verifier. Covers every built-in template (``ima``,
``ima-ng``, ``ima-sig``, ``ima-ngv2``, ``ima-sigv2``, ``ima-buf``, ``ima-modsig``,
``evm-sig``), custom format strings, an unknown field, violations, several PCRs, the classic
SHA-1 and the per-bank ``*_runtime_measurements_<alg>`` files, big-endian lists, and the
native and SHA-1-padded per-bank template digests.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

HASHES = {"sha1": hashlib.sha1, "sha256": hashlib.sha256, "sha384": hashlib.sha384,
          "sha512": hashlib.sha512, "sha3-256": hashlib.sha3_256}
SIZES = {"sha1": 20, "sha256": 32, "sha384": 48, "sha512": 64, "sha3-256": 32, "md5": 16}
HEX_FIELDS = {"sig", "buf", "modsig", "evmsig", "xattrlengths", "xattrvalues"}
STRING_FIELDS = {"n", "n-ng", "xattrnames"}
DIGEST_NG_FIELDS = {"d-ng", "d-ngv2", "d-modsig"}


def h(alg: str, data: bytes) -> bytes:
    return HASHES[alg](data).digest()


def d_ng(alg: str, digest: bytes) -> bytes:
    return alg.encode() + b":\0" + digest


def d_ngv2(kind: str, alg: str, digest: bytes) -> bytes:
    return f"{kind}:{alg}:".encode() + b"\0" + digest


def name(path: str | bytes) -> bytes:
    raw = path.encode("utf-8", "surrogateescape") if isinstance(path, str) else path
    return raw.replace(b" ", b"_") + b"\0"


def sig_v2(hash_algo: int, keyid: int, sig: bytes) -> bytes:
    """An EVM_IMA_XATTR_DIGSIG (3) v2 header and signature (struct signature_v2_hdr)."""
    return struct.pack(">BBBIH", 3, 2, hash_algo, keyid, len(sig)) + sig


@dataclass
class Entry:
    template: str
    fields: list[tuple[str, bytes]]
    pcr: int = 10
    violation: bool = False
    forced_hash: dict[str, bytes] = field(default_factory=dict, repr=False)
    """alg -> template hash to list instead of the computed one (tampering tests)."""

    def data(self, order: str = "<") -> bytes:
        """Template data as the binary list shows it (not for 'ima')."""
        return b"".join(struct.pack(order + "I", len(v)) + v for _, v in self.fields)

    def hash_input(self, order: str = "<") -> bytes:
        if self.template == "ima":
            (_, d), (_, n) = self.fields
            return d + n.ljust(256, b"\0")
        return self.data(order)

    def template_hash(self, alg: str, order: str = "<", padded: bool = False) -> bytes:
        if alg in self.forced_hash:
            return self.forced_hash[alg]
        if self.violation:
            return bytes(SIZES[alg])
        if padded:
            return h("sha1", self.hash_input(order)).ljust(SIZES[alg], b"\0")
        return h(alg, self.hash_input(order))

    @property
    def path(self) -> str:
        for fid, v in self.fields:
            if fid in ("n", "n-ng"):
                return v[:-1].decode("utf-8", "surrogateescape")
        raise KeyError("no name field")


# -- entries of every template -----------------------------------------------------------------

def file_digest(path: str, alg: str = "sha256") -> bytes:
    return h(alg, b"content of " + path.encode())


def ima(path: str, digest: bytes | None = None) -> Entry:
    return Entry("ima", [("d", digest if digest is not None else file_digest(path, "sha1")),
                         ("n", name(path))])


def ima_ng(path: str, alg: str = "sha256", digest: bytes | None = None, pcr: int = 10) -> Entry:
    d = digest if digest is not None else file_digest(path, alg)
    return Entry("ima-ng", [("d-ng", d_ng(alg, d)), ("n-ng", name(path))], pcr=pcr)


def ima_sig(path: str, sig: bytes = b"", alg: str = "sha256", digest: bytes | None = None) -> Entry:
    d = digest if digest is not None else file_digest(path, alg)
    return Entry("ima-sig", [("d-ng", d_ng(alg, d)), ("n-ng", name(path)), ("sig", sig)])


def ima_ngv2(path: str, kind: str = "ima", alg: str = "sha256") -> Entry:
    return Entry("ima-ngv2", [("d-ngv2", d_ngv2(kind, alg, file_digest(path, alg))), ("n-ng", name(path))])


def ima_sigv2(path: str, sig: bytes = b"", kind: str = "verity", alg: str = "sha256") -> Entry:
    return Entry("ima-sigv2", [("d-ngv2", d_ngv2(kind, alg, file_digest(path, alg))),
                               ("n-ng", name(path)), ("sig", sig)])


def ima_buf(label: str, buf: bytes, alg: str = "sha256") -> Entry:
    return Entry("ima-buf", [("d-ng", d_ng(alg, h(alg, buf))), ("n-ng", name(label)), ("buf", buf)])


def ima_modsig(path: str, modsig: bytes = b"", sig: bytes = b"", alg: str = "sha256") -> Entry:
    md = d_ng(alg, h(alg, b"modsig digest " + path.encode())) if modsig else b""
    return Entry("ima-modsig", [("d-ng", d_ng(alg, file_digest(path, alg))), ("n-ng", name(path)),
                                ("sig", sig), ("d-modsig", md), ("modsig", modsig)])


def evm_sig(path: str, uid: int = 0, gid: int = 0, mode: int = 0o100755, order: str = "<") -> Entry:
    return Entry("evm-sig", [
        ("d-ng", d_ng("sha256", file_digest(path))), ("n-ng", name(path)),
        ("evmsig", bytes.fromhex("05020304") + b"\x11" * 8),
        ("xattrnames", b"security.ima|security.selinux\0"),
        ("xattrlengths", struct.pack(order + "II", 10, 12)),
        ("xattrvalues", b"\x22" * 22),
        ("iuid", struct.pack(order + "I", uid)), ("igid", struct.pack(order + "I", gid)),
        ("imode", struct.pack(order + "H", mode)),
    ])


def custom(path: str, uid: int = 1000) -> Entry:
    """A custom ``ima_template_fmt=d-ng|n-ng|iuid``: the kernel shows the format as the name."""
    return Entry("d-ng|n-ng|iuid", [("d-ng", d_ng("sha256", file_digest(path))), ("n-ng", name(path)),
                                    ("iuid", struct.pack("<I", uid))])


def unknown(path: str) -> Entry:
    """A template this library does not know (binary lists only: ASCII cannot be rebuilt)."""
    return Entry("future-tmpl", [("x-new", b"\x01\x02\x03"), ("n-ng", name(path))])


def violation(path: str, alg: str = "sha256", digest_size: int | None = None) -> Entry:
    """A ToMToU / open-writers violation: zero digest in the fields, zero template hash."""
    size = SIZES[alg] if digest_size is None else digest_size
    return Entry("ima-ng", [("d-ng", d_ng(alg, bytes(size))), ("n-ng", name(path))], violation=True)


def boot_aggregate_entry(pcrs: dict[int, bytes], alg: str = "sha256", template: str = "ima-ng") -> Entry:
    """The first entry: H(PCR 0-7) for SHA-1, H(PCR 0-9) otherwise, in the bank of ``alg``."""
    idx = range(8) if alg == "sha1" else range(10)
    agg = h(alg, b"".join(pcrs[i] for i in idx))
    if template == "ima":
        return ima("boot_aggregate", agg)
    if template == "ima-sig":
        return ima_sig("boot_aggregate", alg=alg, digest=agg)
    return ima_ng("boot_aggregate", alg=alg, digest=agg)


def every_template(order: str = "<") -> list[Entry]:
    """One entry of each template and shape (no unknown template: ASCII-safe)."""
    return [
        ima("/usr/bin/legacy"),
        ima_ng("/usr/bin/bash"),
        ima_ng("/usr/lib/with space.so"),
        ima_ng("/usr/bin/sha1file", alg="sha1"),
        ima_ng("/usr/bin/sha512file", alg="sha512"),
        ima_sig("/usr/bin/unsigned"),
        ima_sig("/usr/bin/signed", sig=sig_v2(4, 0x12345678, b"\x5a" * 256)),
        ima_ngv2("/usr/bin/ngv2"),
        ima_sigv2("/usr/bin/verity", sig=sig_v2(4, 0x0BADBEEF, b"\x33" * 64)),
        ima_buf(".ima", b"\x30\x82\x01\x00" + b"\x44" * 60),
        ima_buf("kexec-cmdline", b"root=/dev/sda1 quiet"),
        ima_modsig("/lib/modules/mod.ko", modsig=b"\x30\x80" + b"\x66" * 40, sig=b""),
        ima_modsig("/lib/modules/plain.ko"),
        evm_sig("/usr/bin/evm", uid=1000, gid=100, order=order),
        custom("/opt/custom"),
        violation("/var/tmp/tomtou"),
        violation("/var/tmp/tomtou-old-kernel", digest_size=20),
        ima_ng("/usr/bin/other-pcr", pcr=11),
    ]


# -- list encodings ------------------------------------------------------------------------------

def binary(entries: Sequence[Entry], alg: str = "sha1", order: str = "<", padded: bool = False) -> bytes:
    """``binary_runtime_measurements`` (sha1) or ``binary_runtime_measurements_<alg>``."""
    out = bytearray()
    for e in entries:
        nm = e.template.encode()
        out += struct.pack(order + "I", e.pcr) + e.template_hash(alg, order, padded and alg != "sha1")
        out += struct.pack(order + "I", len(nm)) + nm
        if e.template == "ima":
            (_, d), (_, n) = e.fields
            out += d + struct.pack(order + "I", len(n) - 1) + n[:-1]
        else:
            data = e.data(order)
            out += struct.pack(order + "I", len(data)) + data
    return bytes(out)


def _ascii_field(fid: str, v: bytes, order: str = "<") -> str:
    if not v:
        return ""
    if fid in STRING_FIELDS:
        return v.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
    if fid in DIGEST_NG_FIELDS:
        prefix, _, digest = v.partition(b"\0")
        return prefix.decode() + digest.hex()
    if fid in ("iuid", "igid", "imode"):
        return str(int.from_bytes(v, "little" if order == "<" else "big"))
    return v.hex()


def ascii(entries: Sequence[Entry], alg: str = "sha1", padded: bool = False, order: str = "<") -> bytes:
    """``ascii_runtime_measurements`` (sha1) or ``ascii_runtime_measurements_<alg>``; ``order``
    is the host's (a big-endian kernel without ima_canonical_fmt hashes big-endian lengths)."""
    lines = []
    for e in entries:
        th = e.template_hash(alg, order, padded and alg != "sha1").hex()
        lines.append(f"{e.pcr:2d} {th} {e.template}" + "".join(" " + _ascii_field(f, v, order) for f, v in e.fields))
    return "".join(line + "\n" for line in lines).encode("utf-8", "surrogateescape")


# -- replay --------------------------------------------------------------------------------------

def bank_digest(e: Entry, bank: str, list_alg: str = "sha1", mode: str = "native", order: str = "<") -> bytes:
    """What the kernel extends into ``bank`` for ``e``."""
    size = SIZES[bank]
    if e.violation and mode == "legacy":
        # kernels before 5.8 (and later ones for TPM algorithms they do not map, such as SHA3)
        # extend the 20-byte SHA-1 value zero-padded: a violation is 0xff * 20, then zeros
        return (b"\xff" * 20).ljust(size, b"\0")
    if e.violation:
        return b"\xff" * size
    if mode in ("padded", "legacy"):
        return h("sha1", e.hash_input(order)).ljust(size, b"\0")
    return h(bank, e.hash_input(order))


def pcr_values(entries: Iterable[Entry], bank: str, mode: str = "native", order: str = "<",
               initial: dict[int, bytes] | None = None) -> dict[int, bytes]:
    values = dict(initial or {})
    for e in entries:
        old = values.get(e.pcr, bytes(SIZES[bank]))
        values[e.pcr] = h(bank, old + bank_digest(e, bank, mode=mode, order=order))
    return values


# -- fuzzing oracle (shared by tests/test_ima_fuzz.py and tests/fuzz/fuzz_ima.py) ---------------

def seed_lists() -> list[bytes]:
    """Valid lists of every shape, to mutate."""
    from pathlib import Path

    ents = every_template()
    seeds = [binary(ents), binary(ents, "sha256"), binary(every_template(">"), order=">"),
             ascii(ents), ascii(ents, "sha256"), binary([unknown("/u"), ima("/l")])]
    data = Path(__file__).parent / "data" / "ima"
    seeds += [p.read_bytes() for p in sorted(data.glob("*.ascii"))]
    return seeds


def exercise(data: bytes) -> None:
    """Drive parse, views, replay and verify with ``data``; anything but the documented errors
    (ImaLogError from the parser and replay, VerificationError from the verifier) is a bug."""
    import json

    from tpm2_attest.ima import ImaLogError, parse_ima_log
    from tpm2_attest.verify import Reason, VerificationError, verify_ima_log

    for kw in ({}, {"template_hash": "sha256"}, {"byteorder": "big"}):
        try:
            log = parse_ima_log(data, **kw)  # type: ignore[arg-type]
        except ImaLogError as exc:
            assert exc.offset is None or 0 <= exc.offset <= len(data), exc
            continue
        offsets = [e.offset for e in log]
        assert offsets == sorted(offsets) and all(0 <= o < len(data) for o in offsets)
        json.dumps(log.to_dict())
        for e in log:
            _ = (e.digest, e.path, e.signature, e.buffer, e.modsig, e.modsig_digest, e.hash_input)
        try:
            pcrs = log.replay_all("sha256")
        except ImaLogError:
            continue
        quoted = {10: bytes(32), **pcrs}
        try:
            res = verify_ima_log(log, quoted, bank="sha256", pcrs=tuple(quoted))
        except VerificationError as exc:
            assert exc.reason in (Reason.IMA_TEMPLATE_HASH_MISMATCH, Reason.IMA_TEMPLATE_UNSUPPORTED,
                                  Reason.IMA_BOOT_AGGREGATE_MISMATCH), exc
            continue
        assert res.count == len(log) and res.pending == ()
        json.dumps(res.to_dict())


# -- file signatures (evmctl's format), with cryptography directly --------------------------------

HASH_ALGO_NUMBERS = {"md5": 1, "sha1": 2, "sha256": 4, "sha384": 5, "sha512": 6, "sha224": 7}


def ima_keyid(public_key: object) -> int:
    """Last 4 bytes of SHA-1 over the PKCS#1 RSA key or the uncompressed EC point (evmctl)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    if isinstance(public_key, rsa.RSAPublicKey):
        raw = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    else:
        raw = public_key.public_bytes(serialization.Encoding.X962,  # type: ignore[attr-defined]
                                      serialization.PublicFormat.UncompressedPoint)
    return int.from_bytes(hashlib.sha1(raw).digest()[-4:], "big")


def sign_digest(private_key: object, digest: bytes, alg: str = "sha256", version: int = 2,
                xattr_type: int = 3, keyid: int | None = None) -> bytes:
    """``security.ima`` as ``evmctl ima_sign`` writes it: v2 signs the digest, v3 the hash of
    struct ima_file_id {type, algo, digest}."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
    from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

    h = {"sha1": hashes.SHA1, "sha256": hashes.SHA256, "sha384": hashes.SHA384, "sha512": hashes.SHA512}[alg]
    signed = digest
    if version == 3:
        signed = HASHES[alg](bytes([xattr_type, HASH_ALGO_NUMBERS[alg]]) + digest).digest()
    if isinstance(private_key, rsa.RSAPrivateKey):
        sig = private_key.sign(signed, padding.PKCS1v15(), Prehashed(h()))
    else:
        assert isinstance(private_key, ec.EllipticCurvePrivateKey)
        sig = private_key.sign(signed, ec.ECDSA(Prehashed(h())))
    kid = ima_keyid(private_key.public_key()) if keyid is None else keyid  # type: ignore[attr-defined]
    return struct.pack(">BBBIH", xattr_type, version, HASH_ALGO_NUMBERS[alg], kid, len(sig)) + sig
