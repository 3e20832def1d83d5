"""Device-side review: behaviours of real TPMs (Infineon, Nuvoton, STM, Intel PTT, AMD fTPM).

Where swtpm can show the behaviour, the test runs against swtpm. Where it cannot (a busy PCR
bank, a TPM lacking an algorithm), a crafted response is replayed through ``TpmCommands``:
that exercises our parsing and control flow, not a mock of the TPM's function.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import pytest

from tpm2_attest import ErrorCode, TpmError
from tpm2_attest.commands import TpmCommands
from tpm2_attest.tpm2 import templates as T
from tpm2_attest.tpm2.constants import TPM_ALG, TPM_CC, TPM_RH, TPMA_NV
from tpm2_attest.tpm2.marshal import Reader, Writer
from tpm2_attest.tpm2.structures import TPML_PCR_SELECTION, TPMS_PCR_SELECTION
from tpm2_attest.transport import open_transport

NO_SESSIONS = 0x8001
SESSIONS = 0x8002


def response(body: bytes = b"", *, rc: int = 0, tag: int = NO_SESSIONS) -> bytes:
    return struct.pack(">HII", tag, 10 + len(body), rc) + body


def session_response(params: bytes) -> bytes:
    """A TPM_ST_SESSIONS response with one empty password-session auth."""
    return response(struct.pack(">I", len(params)) + params + b"\x00\x00" + b"\x01" + b"\x00\x00",
                    tag=SESSIONS)


class Scripted:
    """A channel answering each command through ``answer(command) -> response``; records commands."""

    def __init__(self, answer: Callable[[bytes], bytes], limit: int = 1000) -> None:
        self.answer = answer
        self.commands: list[bytes] = []
        self.limit = limit

    def send(self, cmd: bytes) -> bytes:
        if len(self.commands) >= self.limit:
            raise TpmError("scripted channel: too many commands", code=ErrorCode.TRANSPORT)
        self.commands.append(cmd)
        return self.answer(cmd)


def cc_of(cmd: bytes) -> int:
    return int.from_bytes(cmd[6:10], "big")


# ---------------------------------------------------------------------------------------------
# NV_Read authorization: EK certificate indices readable only with owner authorization.


def nv_public_body(index: int, attributes: int, size: int) -> bytes:
    inner = struct.pack(">IHI", index, TPM_ALG.SHA256, attributes) + b"\x00\x00" + struct.pack(">H", size)
    name = struct.pack(">H", TPM_ALG.SHA256) + bytes(32)
    return struct.pack(">H", len(inner)) + inner + struct.pack(">H", len(name)) + name


def test_nv_read_owner_read_only_index_uses_owner_auth_canned() -> None:
    """TPMA_NV_AUTHREAD clear, OWNERREAD set: NV_Read must be authorized by TPM_RH_OWNER
    (Part 3 NV_Read: authHandle is the index only when AUTHREAD is set; otherwise the TPM
    answers TPM_RC_NV_AUTHORIZATION)."""
    index = 0x01C00002
    attrs = TPMA_NV.PPWRITE | TPMA_NV.PPREAD | TPMA_NV.OWNERREAD | TPMA_NV.NO_DA | TPMA_NV.WRITTEN \
        | TPMA_NV.PLATFORMCREATE | TPMA_NV.WRITEDEFINE
    data = b"\x30\x02\x05\x00"

    def answer(cmd: bytes) -> bytes:
        cc = cc_of(cmd)
        if cc == TPM_CC.NV_ReadPublic:
            return response(nv_public_body(index, attrs, len(data)))
        assert cc == TPM_CC.NV_Read
        auth_handle = int.from_bytes(cmd[10:14], "big")
        if auth_handle != TPM_RH.OWNER:
            return response(rc=0x149)  # TPM_RC_NV_AUTHORIZATION
        return session_response(struct.pack(">H", len(data)) + data)

    ch = Scripted(answer)
    assert TpmCommands(ch).nv_read(index, chunk=64) == data
    reads = [c for c in ch.commands if cc_of(c) == TPM_CC.NV_Read]
    assert [int.from_bytes(c[10:14], "big") for c in reads] == [TPM_RH.OWNER]
    assert [int.from_bytes(c[14:18], "big") for c in reads] == [index]


def test_nv_read_owner_read_only_index_swtpm(swtpm: Any, tpm2_tools: Any) -> None:
    """The same against swtpm: an index defined ownerread|ownerwrite (no authread)."""
    index = "0x01500417"
    tpm2_tools("tpm2_nvundefine", "-C", "o", index, check=False)
    tpm2_tools("tpm2_nvdefine", "-C", "o", "-s", "8", "-a", "ownerread|ownerwrite|no_da", index)
    try:
        tpm2_tools("tpm2_nvwrite", "-C", "o", "-i", "-", index, input="abcdefgh")
        with open_transport(swtpm.tcti) as t:
            assert TpmCommands(t).nv_read(int(index, 16)) == b"abcdefgh"
            # A size given by the caller does not change which hierarchy authorizes the read.
            assert TpmCommands(t).nv_read(int(index, 16), 4, chunk=2) == b"abcd"
    finally:
        tpm2_tools("tpm2_nvundefine", "-C", "o", index, check=False)


def test_nv_read_authread_index_keeps_index_auth_swtpm(swtpm: Any) -> None:
    """swtpm's EK certificate index has AUTHREAD: read with the index itself (like
    tpm2_getekcertificate; ChromeOS' vTPM knows no owner auth)."""
    with open_transport(swtpm.tcti) as t:
        rec = Scripted(t.send)
        cmd = TpmCommands(rec)
        pub, _ = cmd.nv_read_public(0x01C00002)
        assert pub.attributes & TPMA_NV.AUTHREAD
        assert cmd.nv_read(0x01C00002)[:1] == b"\x30"
        reads = [c for c in rec.commands if cc_of(c) == TPM_CC.NV_Read]
        assert reads and all(int.from_bytes(c[10:14], "big") == 0x01C00002 for c in reads)


def test_nv_read_policy_read_only_index_is_unsupported() -> None:
    attrs = TPMA_NV.POLICYREAD | TPMA_NV.POLICYWRITE | TPMA_NV.WRITTEN

    def answer(cmd: bytes) -> bytes:
        assert cc_of(cmd) == TPM_CC.NV_ReadPublic, "must not try an NV_Read it cannot authorize"
        return response(nv_public_body(0x01500001, attrs, 4))

    with pytest.raises(TpmError) as ei:
        TpmCommands(Scripted(answer)).nv_read(0x01500001, chunk=64)
    assert ei.value.code == ErrorCode.UNSUPPORTED


# ---------------------------------------------------------------------------------------------
# PCR_Read on a busy TPM: IMA extends PCR 10 continuously on Linux, bumping pcrUpdateCounter.


def _pcr_read_answer(counter: Callable[[], int]) -> Callable[[bytes], bytes]:
    """A TPM returning at most 8 PCRs per PCR_Read, with the given update counter."""

    def answer(cmd: bytes) -> bytes:
        assert cc_of(cmd) == TPM_CC.PCR_Read
        sel = TPML_PCR_SELECTION.unmarshal(Reader(cmd, 10))
        (s,) = sel.selections
        got = s.indices()[:8]
        out = TPML_PCR_SELECTION((TPMS_PCR_SELECTION.from_indices(s.hash, got, 4),))
        w = Writer().u32(counter())
        out.marshal(w)
        w.u32(len(got))
        for i in got:
            w.tpm2b(bytes([i]) * 32)
        return response(w.getvalue())

    return answer


def test_pcr_read_counter_moving_forever_is_bounded() -> None:
    """Reading 24 PCRs takes 3 PCR_Reads; if a PCR is extended between every pair (IMA), the
    restart-for-consistency loop must give up with RETRY_EXHAUSTED, not spin forever."""
    n = iter(range(10**6))
    ch = Scripted(_pcr_read_answer(lambda: next(n)), limit=500)
    with pytest.raises(TpmError) as ei:
        TpmCommands(ch).pcr_read(TPM_ALG.SHA256, range(24))
    assert ei.value.code == ErrorCode.RETRY_EXHAUSTED
    assert len(ch.commands) < 100


def test_pcr_read_counter_moving_once_recovers_and_reads_4_byte_bitmaps() -> None:
    counters = iter([5, 6, 6, 6, 6])
    ch = Scripted(_pcr_read_answer(lambda: next(counters)))
    counter, values = TpmCommands(ch).pcr_read(TPM_ALG.SHA256, range(24))
    assert counter == 6
    assert values == {i: bytes([i]) * 32 for i in range(24)}


@pytest.mark.parametrize("case", ["unrequested PCR", "PCR already read"])
def test_pcr_read_refuses_pcrs_it_did_not_ask_for(case: str) -> None:
    """A well-formed one-bank answer (the one-unpack reader takes it) that carries a PCR the
    read did not ask for: BAD_RESPONSE, never a value kept. Asking 0..23 in reads of 8, the
    TPM answers PCR 30 (never asked) or, on the second read, PCR 7 again (asked and read)."""

    def answer(cmd: bytes) -> bytes:
        (s,) = TPML_PCR_SELECTION.unmarshal(Reader(cmd, 10)).selections
        got = s.indices()[:8]
        if case == "unrequested PCR":
            got[-1] = 30
        elif got[0] == 8:
            got = [7, *got[:7]]
        out = TPML_PCR_SELECTION((TPMS_PCR_SELECTION.from_indices(s.hash, got, 4),))
        w = Writer().u32(1)
        out.marshal(w)
        w.u32(len(got))
        for i in got:
            w.tpm2b(bytes([i]) * 32)
        return response(w.getvalue())

    with pytest.raises(TpmError) as ei:
        TpmCommands(Scripted(answer)).pcr_read(TPM_ALG.SHA256, range(24))
    assert ei.value.code == ErrorCode.BAD_RESPONSE
    assert "unrequested" in str(ei.value)


# ---------------------------------------------------------------------------------------------
# TPMs lacking an algorithm of our templates: a clear UNSUPPORTED, not a bare TPM_ERROR.


@pytest.mark.parametrize("rc", [0x2E6,   # TPM_RC_CURVE, parameter 2 (inPublic)
                                0x2C1,   # TPM_RC_ASYMMETRIC, parameter 2
                                0x2D2,   # TPM_RC_SCHEME, parameter 2
                                0x2C7])  # TPM_RC_KEY_SIZE, parameter 2
def test_key_template_not_supported_is_unsupported(rc: int) -> None:
    for op in (lambda c: c.create_primary(TPM_RH.OWNER, T.SRK_ECC_TEMPLATE),
               lambda c: c.create(0x80000000, T.AK_ECC_TEMPLATE)):
        with pytest.raises(TpmError) as ei:
            op(TpmCommands(Scripted(lambda _c: response(rc=rc))))
        assert ei.value.code == ErrorCode.UNSUPPORTED
        assert ei.value.tpm_rc == rc


# ---------------------------------------------------------------------------------------------
# /dev/tpmrm0: a timeout drops the file descriptor, and with it every transient handle.


class TpmrmAfterTimeout:
    """Wraps a real channel like DeviceTransport on /dev/tpmrm0: the first Quote times out
    (the transport drops its fd), after which the kernel has flushed this fd's objects, so
    FlushContext of them answers TPM_RC_HANDLE. (The objects are flushed for real in swtpm.)"""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.timed_out = False

    def send(self, cmd: bytes) -> bytes:
        cc = cc_of(cmd)
        if cc == TPM_CC.Quote and not self.timed_out:
            self.timed_out = True
            raise TpmError("device:/dev/tpmrm0: no complete response within 120 s",
                           code=ErrorCode.TRANSPORT)
        rsp: bytes = self.inner.send(cmd)
        if self.timed_out and cc == TPM_CC.FlushContext:
            return response(rc=0x1CB)  # TPM_RC_HANDLE on parameter 1
        return rsp


def test_transport_timeout_is_not_masked_by_cleanup_flush(tcti: str) -> None:
    """The caller must see the TRANSPORT timeout, not a KEY_NOT_FOUND raised by the cleanup
    FlushContext of a handle the resource manager already dropped."""
    from tpm2_attest import Tpm

    with Tpm.open(tcti) as tpm:
        blob = tpm.provision_ak()
        assert tpm.commands is not None
        tpm.commands.channel = TpmrmAfterTimeout(tpm.commands.channel)
        with pytest.raises(TpmError) as ei:
            tpm.quote(blob, qualifying_data=b"n")
        assert ei.value.code == ErrorCode.TRANSPORT


# ---------------------------------------------------------------------------------------------
# PCR banks beyond SHA-1/SHA-256: an SM3_256 bank (TPMs for the Chinese market) is extended with
# SM3, never crashes with hashlib's ValueError.


def test_extend_all_banks_with_an_sm3_bank() -> None:
    import hashlib

    from tpm2_attest import Tpm
    from tpm2_attest.backends.raw import RawBackend

    extends: list[bytes] = []

    def answer(cmd: bytes) -> bytes:
        cc = cc_of(cmd)
        if cc == TPM_CC.GetCapability:
            banks = struct.pack(">I", 2) + struct.pack(">HB", TPM_ALG.SHA256, 3) + b"\xff\xff\xff" \
                + struct.pack(">HB", TPM_ALG.SM3_256, 3) + b"\xff\xff\xff"
            return response(b"\x00" + struct.pack(">I", 5) + banks)
        assert cc == TPM_CC.PCR_Extend
        extends.append(cmd)
        return session_response(b"")

    tpm = Tpm(RawBackend(TpmCommands(Scripted(answer)), tcti="device:/dev/tpmrm0",
                         transport_kind="device"))
    assert tpm.pcr.banks() == ["sha256", "sm3_256"]
    if "sm3" not in hashlib.algorithms_available:
        with pytest.raises(TpmError) as ei:
            tpm.pcr.extend(16, b"abc")
        assert ei.value.code == ErrorCode.UNSUPPORTED
        return
    tpm.pcr.extend(16, b"abc")
    (cmd,) = extends
    assert hashlib.new("sm3", b"abc").digest() in cmd
    assert hashlib.sha256(b"abc").digest() in cmd


# ---------------------------------------------------------------------------------------------
# EK certificates stored with the TCG PC Client stored-certificate header.


def test_strip_nv_cert_stored_and_full_cert_headers() -> None:
    """TCG_PCCLIENT_STORED_CERT (tag 0x1001, certType, u16 certSize) wraps a TCG_FULL_CERT
    (tag 0x1002, then the DER) in the PC Client Implementation Specification, section 7.3;
    go-tpm's ReadEKCert checks both tags. Some TPMs store only the outer header."""
    from tpm2_attest.backends.raw import strip_nv_cert

    der = b"\x30\x03\x02\x01\x05"
    full = b"\x10\x02" + der
    assert strip_nv_cert(b"\x10\x01\x00" + struct.pack(">H", len(full)) + full + b"\xff" * 7) == der
    assert strip_nv_cert(b"\x10\x01\x00" + struct.pack(">H", len(der)) + der + b"\xff" * 7) == der
    assert strip_nv_cert(der + b"\x00" * 9) == der


def test_initialize_after_boot_names_startup() -> None:
    """TPM_RC_INITIALIZE (0x100): nothing sent TPM2_Startup (firmware/kernel). The error says so
    instead of leaving a bare code (Part 3, 9.3: every command but Startup answers INITIALIZE)."""
    with pytest.raises(TpmError) as ei:
        TpmCommands(Scripted(lambda _c: response(rc=0x100))).get_random(8)
    assert ei.value.rc_name == "TPM_RC_INITIALIZE"
    assert ei.value.hint is not None and "TPM2_Startup" in ei.value.hint
