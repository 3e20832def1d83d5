"""The verifier against tpm2-tools, an independent implementation, as the referee.

* our quotes (ECC and RSA AKs) pass ``tpm2_checkquote``, and a tampered PCR value fails it;
* tpm2-tools' quotes (``tpm2_createak`` keys, ``tpm2_quote -m -s -o``) pass ``verify_quote``
  with ``AkPublic.from_public(ak.pub)``, and tampered ones fail with the right Reason;
* ``make_credential`` challenges activate with ``tpm2_activatecredential`` (RSA and ECC EKs).

tpm2-tools' PCR output file (``tpm2_quote -o``, default ``-F serialized``) is the C structures
written as they sit in memory, little-endian: a TPML_PCR_SELECTION (u32 count, then 16
TPMS_PCR_SELECTION of {u16 hash, u8 sizeofSelect, u8 pcrSelect[4], 1 byte padding}), a u32
count of TPML_DIGEST, then each TPML_DIGEST (u32 count, 8 x {u16 size, u8 buffer[64]}). The
values are in selection order: bank by bank, ascending PCR index.
"""

from __future__ import annotations

import os
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import load_der_public_key

from tpm2_attest.evidence import Quote
from tpm2_attest.tpm import Tpm
from tpm2_attest.tpm2.constants import HASH_NAMES
from tpm2_attest.tpm2.structures import TPMS_PCR_SELECTION
from tpm2_attest.verify import (
    AkPublic,
    Reason,
    VerificationError,
    check_ak,
    make_credential,
    verify_quote,
)

PCRS = [0, 1, 2, 3, 7, 16]
PCR_LIST = "sha256:" + ",".join(map(str, PCRS))

_SEL_SLOTS = 16  # TPM2_NUM_PCR_BANKS in tpm2-tss
_SEL_SIZE = 8  # sizeof(TPMS_PCR_SELECTION): 2 + 1 + 4, padded to 2-byte alignment
_DIGEST_SLOTS = 8  # TPML_DIGEST holds up to 8 digests
_DIGEST_SIZE = 66  # sizeof(TPM2B_DIGEST): 2 + sizeof(TPMU_HA)


def parse_tpm2_tools_pcrs(data: bytes) -> dict[str, dict[int, bytes]]:
    """tpm2-tools' serialized PCR file -> {bank: {index: value}} (strict: exact size)."""
    (count,) = struct.unpack_from("<I", data, 0)
    assert count <= _SEL_SLOTS
    selections = []
    for i in range(count):
        off = 4 + i * _SEL_SIZE
        alg, size = struct.unpack_from("<HB", data, off)
        selections.append(TPMS_PCR_SELECTION(alg, data[off + 3 : off + 3 + size]))
    off = 4 + _SEL_SLOTS * _SEL_SIZE
    (lists,) = struct.unpack_from("<I", data, off)
    off += 4
    digests: list[bytes] = []
    for _ in range(lists):
        (n,) = struct.unpack_from("<I", data, off)
        assert n <= _DIGEST_SLOTS
        for k in range(n):
            (size,) = struct.unpack_from("<H", data, off + 4 + k * _DIGEST_SIZE)
            start = off + 4 + k * _DIGEST_SIZE + 2
            digests.append(data[start : start + size])
        off += 4 + _DIGEST_SLOTS * _DIGEST_SIZE
    assert off == len(data), "trailing bytes in the PCR file"
    out: dict[str, dict[int, bytes]] = {}
    it = iter(digests)
    for sel in selections:
        out[HASH_NAMES[sel.hash]] = {i: next(it) for i in sel.indices()}
    assert next(it, None) is None
    return out


def tools(sw: Any, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TPM2TOOLS_TCTI": sw.tcti}
    res = subprocess.run(list(args), env=env, capture_output=True, text=True, timeout=60)
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({res.returncode}): {res.stderr}")
    return res


def flush_all(sw: Any) -> None:
    """tpm2-tools talks to swtpm without a resource manager: flush what its processes left."""
    for kind in ("-t", "-l", "-s"):
        tools(sw, "tpm2_flushcontext", kind, check=False)


@pytest.fixture(scope="module")
def tpm(swtpm: Any) -> Iterator[Tpm]:
    with Tpm.open(swtpm.tcti) as t:
        t.pcr.extend(16, b"interop")
        yield t


def flip(data: bytes, pos: int) -> bytes:
    b = bytearray(data)
    b[pos] ^= 1
    return bytes(b)


# -- our quotes, their verifier -------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ecc", "rsa"])
def test_our_quote_passes_tpm2_checkquote(tpm: Tpm, swtpm: Any, tmp_path: Path, kind: str) -> None:
    blob = tpm.provision_ak(algorithm=kind)
    ak = check_ak(blob)
    nonce = os.urandom(20)
    q = tpm.quote(blob, pcrs=PCRS, qualifying_data=nonce)
    verify_quote(ak, q, nonce=nonce)

    pem = serialization.load_der_public_key(ak.public_der).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "ak.pem").write_bytes(pem)
    (tmp_path / "ak.pub").write_bytes(ak.public)  # TPM2B_PUBLIC: tpm2-tools' "tss" format
    (tmp_path / "msg").write_bytes(q.attest)
    (tmp_path / "sig").write_bytes(q.signature)  # TPMT_SIGNATURE: tpm2-tools' "tss" format
    values = b"".join(q.pcrs["sha256"][i] for i in PCRS)
    (tmp_path / "pcrs").write_bytes(values)
    (tmp_path / "bad-pcrs").write_bytes(flip(values, 0))

    def checkquote(pub: str, pcrs: str, qual: str) -> subprocess.CompletedProcess[str]:
        return tools(swtpm, "tpm2_checkquote", "-u", str(tmp_path / pub), "-m", str(tmp_path / "msg"),
                     "-s", str(tmp_path / "sig"), "-f", str(tmp_path / pcrs), "-l", PCR_LIST,
                     "-g", "sha256", "-q", qual, check=False)

    for pub in ("ak.pem", "ak.pub"):
        res = checkquote(pub, "pcrs", nonce.hex())
        assert res.returncode == 0, res.stderr
    # The referee is not a rubber stamp.
    assert checkquote("ak.pem", "bad-pcrs", nonce.hex()).returncode != 0
    assert checkquote("ak.pem", "pcrs", os.urandom(20).hex()).returncode != 0


# -- their quotes, our verifier ----------------------------------------------------------------------


@pytest.fixture(scope="module", params=["ecc", "rsa"])
def tools_quote(request: pytest.FixtureRequest, tpm: Tpm, swtpm: Any,
                tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, bytes]:
    kind = str(request.param)
    d = tmp_path_factory.mktemp(f"tools-{kind}")
    nonce = os.urandom(32)
    flush_all(swtpm)
    try:
        tools(swtpm, "tpm2_createek", "-c", str(d / "ek.ctx"), "-G", "rsa", "-u", str(d / "ek.pub"))
        alg = ["-G", "ecc", "-g", "sha256", "-s", "ecdsa"] if kind == "ecc" else ["-G", "rsa", "-g", "sha256", "-s", "rsassa"]
        tools(swtpm, "tpm2_createak", "-C", str(d / "ek.ctx"), "-c", str(d / "ak.ctx"), *alg,
              "-u", str(d / "ak.pub"), "-n", str(d / "ak.name"))
        tools(swtpm, "tpm2_flushcontext", "-t")
        tools(swtpm, "tpm2_quote", "-c", str(d / "ak.ctx"), "-l", PCR_LIST, "-q", nonce.hex(),
              "-m", str(d / "msg"), "-s", str(d / "sig"), "-o", str(d / "pcrs"), "-g", "sha256")
    finally:
        flush_all(swtpm)
    return kind, d, nonce


def test_tpm2_tools_quote_verifies(tools_quote: tuple[str, Path, bytes], tpm: Tpm) -> None:
    kind, d, nonce = tools_quote
    ak = AkPublic.from_public((d / "ak.pub").read_bytes())
    assert ak.name == (d / "ak.name").read_bytes()
    pcrs = parse_tpm2_tools_pcrs((d / "pcrs").read_bytes())
    assert list(pcrs) == ["sha256"] and list(pcrs["sha256"]) == PCRS
    assert pcrs["sha256"] == tpm.pcr.read(PCRS)
    msg, sig = (d / "msg").read_bytes(), (d / "sig").read_bytes()
    res = verify_quote(ak, (msg, sig, pcrs), nonce=nonce)
    assert dict(res.pcrs) == pcrs["sha256"] and res.extra_data == nonce
    assert verify_quote(ak, Quote(msg, sig, pcrs), nonce=nonce) == res
    if kind == "rsa":
        assert isinstance(load_der_public_key(ak.public_der), type(ak.key))


def test_tpm2_tools_quote_tampered(tools_quote: tuple[str, Path, bytes]) -> None:
    _, d, nonce = tools_quote
    ak = AkPublic.from_public((d / "ak.pub").read_bytes())
    pcrs = parse_tpm2_tools_pcrs((d / "pcrs").read_bytes())
    msg, sig = (d / "msg").read_bytes(), (d / "sig").read_bytes()
    vals = pcrs["sha256"]

    def reason(quote: Any, n: bytes = nonce) -> Reason:
        with pytest.raises(VerificationError) as e:
            verify_quote(ak, quote, nonce=n)
        return e.value.reason

    assert reason((flip(msg, len(msg) - 1), sig, pcrs)) == Reason.BAD_SIGNATURE
    assert reason((msg, flip(sig, len(sig) - 1), pcrs)) == Reason.BAD_SIGNATURE
    assert reason((msg, sig, pcrs), os.urandom(32)) == Reason.NONCE_MISMATCH
    assert reason((msg, sig, {"sha256": vals | {16: flip(vals[16], 3)}})) == Reason.PCR_DIGEST_MISMATCH
    relabeled = {i: v for i, v in vals.items() if i != 16} | {23: vals[16]}
    assert reason((msg, sig, {"sha256": relabeled})) == Reason.PCR_SELECTION
    assert reason((msg, sig, {"sha256": vals | {0: vals[16], 16: vals[0]}})) == Reason.PCR_DIGEST_MISMATCH


# -- credentials ----------------------------------------------------------------------------------


@pytest.mark.parametrize("ek_alg", ["rsa", "ecc"])
def test_make_credential_activates_with_tpm2_tools(swtpm: Any, tmp_path: Path, ek_alg: str) -> None:
    d = tmp_path
    flush_all(swtpm)
    try:
        tools(swtpm, "tpm2_createek", "-c", str(d / "ek.ctx"), "-G", ek_alg, "-u", str(d / "ek.pub"))
        tools(swtpm, "tpm2_createak", "-C", str(d / "ek.ctx"), "-c", str(d / "ak.ctx"), "-G", "ecc",
              "-g", "sha256", "-s", "ecdsa", "-u", str(d / "ak.pub"), "-n", str(d / "ak.name"))
        tools(swtpm, "tpm2_flushcontext", "-t")
        ak = AkPublic.from_public((d / "ak.pub").read_bytes())
        challenge, secret = make_credential((d / "ek.pub").read_bytes(), ak.name)
        (d / "cred").write_bytes(challenge.to_tpm2_tools())
        tools(swtpm, "tpm2_startauthsession", "--policy-session", "-S", str(d / "session.ctx"))
        tools(swtpm, "tpm2_policysecret", "-S", str(d / "session.ctx"), "-c", "e")
        tools(swtpm, "tpm2_activatecredential", "-c", str(d / "ak.ctx"), "-C", str(d / "ek.ctx"),
              "-i", str(d / "cred"), "-o", str(d / "secret"), "-P", f"session:{d / 'session.ctx'}")
        assert (d / "secret").read_bytes() == secret
    finally:
        flush_all(swtpm)
