"""The EK certificate chain in NV (TCG EK Credential Profile 2.x, 2.2.1.5.2): indices 0x01C00100
on hold the EK certificate's intermediate CAs, DER, concatenated, overflowing into the next
index. Intel PTT (11th-generation Core on) keeps its chip's CAs there.

The indices are defined in swtpm here as a platform would (platform hierarchy, the EK
certificate attributes) or the owner, with real CA certificates: swtpm's own issuing CA (the
one that signed the EK certificate in 0x01C00002, so the chain in NV is what verification
needs) and a two-level chain issued from a test CA. tpm2-tools' tpm2_nvread checks that the
bytes are where they are read from.
"""

from __future__ import annotations

import hashlib
import json
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from pki import der, make_ca, make_leaf
from test_device_review import Scripted, cc_of, response
from tpm2_attest import Tpm, verify
from tpm2_attest.backends.ek_chain import MAX_INDICES, read_ek_chain, split_ek_chain
from tpm2_attest.commands import TpmCommands
from tpm2_attest.embedded import EmbeddedSwtpm
from tpm2_attest.evidence import EK_CHAIN_MAX_BYTES, EK_CHAIN_MAX_CERTS
from tpm2_attest.tpm2.constants import NV_EK_CHAIN_FIRST, TPM_CAP, TPM_CC
from tpm2_attest.transport import open_transport
from tpm2_attest.verify import Reason, VerificationError

PLATFORM_ATTRS = "ppwrite|writedefine|ppread|ownerread|authread|no_da|platformcreate"
"""As EK certificate indices are defined (the GCE and swtpm_setup ones)."""

Tools = Callable[..., subprocess.CompletedProcess[str]]


def swtpm_issuer(sw: EmbeddedSwtpm) -> bytes:
    """swtpm's issuing CA (DER): it signed the EK certificates in 0x01C00002 / 0x01C00016."""
    return der(x509.load_pem_x509_certificate(Path(sw.ca_intermediate_path).read_bytes()))


def swtpm_root(sw: EmbeddedSwtpm) -> bytes:
    return der(x509.load_pem_x509_certificate(Path(sw.ca_root_path).read_bytes()))


def nv_put(tools: Tools, sw: EmbeddedSwtpm, tmp: Path, index: int, data: bytes, *,
           size: int | None = None, hierarchy: str = "p", attrs: str = PLATFORM_ATTRS) -> None:
    """Define ``index`` (``size`` bytes, default the data's) and write ``data`` at offset 0."""
    f = tmp / f"nv-{index:08x}.bin"
    f.write_bytes(data)
    tools("tpm2_nvdefine", "-C", hierarchy, "-s", str(size or len(data)), "-a", attrs, f"0x{index:08x}", sw=sw)
    if data:
        tools("tpm2_nvwrite", "-C", hierarchy if "authwrite" not in attrs else f"0x{index:08x}",
              "-i", str(f), f"0x{index:08x}", sw=sw)


def nvread(tools: Tools, sw: EmbeddedSwtpm, index: int, tmp: Path) -> bytes:
    """The index's bytes as tpm2-tools reads them (authorized by the index, as for EK certificates)."""
    out = tmp / f"read-{index:08x}.bin"
    tools("tpm2_nvread", "-C", f"0x{index:08x}", "-o", str(out), f"0x{index:08x}", sw=sw)
    return out.read_bytes()


@pytest.fixture(scope="module")
def two_level() -> dict[str, Any]:
    """root -> "Chain CA 1" -> "Chain CA 2": the two intermediates a TPM would keep (like
    Intel's per-chip kernel and PTT CAs under the On Die CA)."""
    root = make_ca("EK Chain Test Root")
    ica1 = make_ca("EK Chain Test CA 1", root)
    ica2 = make_ca("EK Chain Test CA 2", ica1)
    return {"root": root, "ica1": ica1, "ica2": ica2,
            "root_der": der(root[0]), "ica1_der": der(ica1[0]), "ica2_der": der(ica2[0])}


def ek_leaf(issuer: Any, ek_public_der: bytes) -> bytes:
    from cryptography.hazmat.primitives.serialization import load_der_public_key

    key = load_der_public_key(ek_public_der)
    assert isinstance(key, rsa.RSAPublicKey)
    return der(make_leaf(issuer, key))


# -- swtpm: where the bytes are and what ek() makes of them ---------------------------------------


def test_intel_layout_verifies_only_with_the_chain_from_nv(fresh_swtpm: EmbeddedSwtpm, tpm2_tools: Tools,
                                                         tmp_path: Path) -> None:
    """Intel PTT's layout: EK certificate in 0x01C00002, its issuing CA in 0x01C00100, only the
    root trusted. The chain from NV is what makes the certificate verify."""
    issuer = swtpm_issuer(fresh_swtpm)
    nv_put(tpm2_tools, fresh_swtpm, tmp_path, NV_EK_CHAIN_FIRST, issuer)
    assert nvread(tpm2_tools, fresh_swtpm, NV_EK_CHAIN_FIRST, tmp_path) == issuer
    with Tpm.open(fresh_swtpm.tcti) as tpm:
        ek = tpm.ek("rsa")
        ecc = tpm.ek("ecc384")  # one chain for every EK kind: the range is not per algorithm
    assert ek.chain == (issuer,) and ek.chain_note is None
    assert ecc.chain == (issuer,)
    assert ek.certificate is not None and ecc.certificate is not None
    root = swtpm_root(fresh_swtpm)
    for info in (ek, ecc):
        verify.verify_ek_certificate(info.certificate, [root], info.chain, ek_public=info.public)
        with pytest.raises(VerificationError) as ei:
            verify.verify_ek_certificate(info.certificate, [root], ek_public=info.public)
        assert ei.value.reason is Reason.EK_CERT_CHAIN


def test_no_chain_indices_costs_one_enumeration(swtpm: EmbeddedSwtpm) -> None:
    """A TPM without the range: chain empty, no note, and one TPM2_GetCapability for it (the
    range is enumerated with TPM_CAP_HANDLES, never probed index by index)."""
    with Tpm.open(swtpm.tcti) as tpm:
        tpm.backend.ek("rsa")  # the EK alone, to count what the chain adds
        before = dict(tpm.stats.by_command)
        ek = tpm.ek("rsa")
        after = dict(tpm.stats.by_command)
    assert ek.chain == () and ek.chain_note is None
    added = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    assert added.get("TPM2_GetCapability") == 1
    assert added.get("TPM2_NV_ReadPublic", 0) == before.get("TPM2_NV_ReadPublic", 0)


def test_chain_split_across_indices_padding_and_owner_index(fresh_swtpm: EmbeddedSwtpm, tpm2_tools: Tools,
                                                           tmp_path: Path, two_level: dict[str, Any]) -> None:
    """Three certificates concatenated over three indices as the profile allows: the second
    overflows from 0x01C00100 into 0x01C00101 (an owner-defined, owner-read-only index: read
    with owner authorization), which is larger than its bytes (0xFF padding swtpm returns for
    the unwritten part); the third sits alone in 0x01C00105 (numbers need not be consecutive)."""
    issuer = swtpm_issuer(fresh_swtpm)
    a, b = two_level["ica1_der"], two_level["ica2_der"]
    cut = len(b) // 2
    first = a + b[:cut]
    nv_put(tpm2_tools, fresh_swtpm, tmp_path, NV_EK_CHAIN_FIRST, first)
    nv_put(tpm2_tools, fresh_swtpm, tmp_path, NV_EK_CHAIN_FIRST + 1, b[cut:], size=len(b) - cut + 64,
           hierarchy="o", attrs="ownerread|ownerwrite|no_da")
    nv_put(tpm2_tools, fresh_swtpm, tmp_path, NV_EK_CHAIN_FIRST + 5, issuer)
    assert nvread(tpm2_tools, fresh_swtpm, NV_EK_CHAIN_FIRST, tmp_path) == first
    out = tmp_path / "owner.bin"
    tpm2_tools("tpm2_nvread", "-C", "o", "-o", str(out), f"0x{NV_EK_CHAIN_FIRST + 1:08x}", sw=fresh_swtpm)
    assert out.read_bytes() == b[cut:] + b"\xff" * 64
    with Tpm.open(fresh_swtpm.tcti) as tpm:
        ek = tpm.ek("rsa")
    assert ek.chain == (a, b, issuer), ek.chain_note
    assert ek.chain_note is None
    # the two-level chain verifies a leaf it issued for this EK, through the NV chain only
    leaf = ek_leaf(two_level["ica2"], ek.public_der)
    got = verify.verify_ek_certificate(leaf, [two_level["root_der"]], ek.chain, ek_public=ek.public)
    assert [c.subject.rfc4514_string() for c in got.chain[1:]] == [
        "CN=EK Chain Test CA 2", "CN=EK Chain Test CA 1", "CN=EK Chain Test Root"]


def test_unreadable_and_malformed_indices_are_skipped_with_a_note(fresh_swtpm: EmbeddedSwtpm,
                                                                  tpm2_tools: Tools, tmp_path: Path,
                                                                  two_level: dict[str, Any]) -> None:
    """ek() never fails because of the chain: an index readable only with a policy, an index
    defined but never written, bytes that are not a certificate and a certificate cut short are
    each skipped and named in chain_note; what is readable is kept."""
    a, b = two_level["ica1_der"], two_level["ica2_der"]
    nv_put(tpm2_tools, fresh_swtpm, tmp_path, NV_EK_CHAIN_FIRST, a)
    nv_put(tpm2_tools, fresh_swtpm, tmp_path, NV_EK_CHAIN_FIRST + 1, b"", size=32,
           hierarchy="o", attrs="ownerread|ownerwrite|authread|no_da")  # never written
    policy = tmp_path / "policy.bin"
    policy.write_bytes(bytes(32))  # a policy nobody can satisfy: written with the index's auth only
    tpm2_tools("tpm2_nvdefine", "-C", "o", "-s", "16", "-a", "policyread|authwrite|no_da", "-L", str(policy),
               f"0x{NV_EK_CHAIN_FIRST + 2:08x}", sw=fresh_swtpm)
    tpm2_tools("tpm2_nvwrite", "-C", f"0x{NV_EK_CHAIN_FIRST + 2:08x}", "-i", "-", f"0x{NV_EK_CHAIN_FIRST + 2:08x}",
               input="0123456789abcdef", sw=fresh_swtpm)
    nv_put(tpm2_tools, fresh_swtpm, tmp_path, NV_EK_CHAIN_FIRST + 3, b"\x30\x03\x02\x01\x05not DER at all")
    nv_put(tpm2_tools, fresh_swtpm, tmp_path, NV_EK_CHAIN_FIRST + 4, b)
    nv_put(tpm2_tools, fresh_swtpm, tmp_path, NV_EK_CHAIN_FIRST + 6, a[:100])  # cut short, nothing after
    with Tpm.open(fresh_swtpm.tcti) as tpm:
        ek = tpm.ek("rsa")
    assert ek.chain == (a, b)
    note = ek.chain_note or ""
    assert "NV 0x01c00101 is not written" in note
    assert "NV 0x01c00102 not read" in note and "policy" in note
    assert "NV 0x01c00103 offset 0: not a certificate" in note
    assert "NV 0x01c00106 offset 0: truncated" in note


def test_hostile_many_indices_are_bounded(fresh_swtpm: EmbeddedSwtpm, tpm2_tools: Tools, tmp_path: Path) -> None:
    """A TPM with more indices than MAX_INDICES: the first MAX_INDICES are read, the rest
    named in the note; every NV_Read is for an index of the range, within the limits."""
    for i in range(MAX_INDICES + 3):
        nv_put(tpm2_tools, fresh_swtpm, tmp_path, NV_EK_CHAIN_FIRST + i, b"\xff" * 8)
    with open_transport(fresh_swtpm.tcti) as t:
        rec = Scripted(t.send)
        chain = read_ek_chain(TpmCommands(rec))
    assert chain.certificates == ()
    assert chain.note is not None and f"more than {MAX_INDICES} EK chain NV indices" in chain.note
    read = {int.from_bytes(c[14:18], "big") for c in rec.commands if cc_of(c) == TPM_CC.NV_Read}
    assert read == {NV_EK_CHAIN_FIRST + i for i in range(MAX_INDICES)}
    assert sum(cc_of(c) == TPM_CC.GetCapability for c in rec.commands) <= 3


def test_hostile_huge_indices_stop_at_the_byte_budget(fresh_swtpm: EmbeddedSwtpm, tpm2_tools: Tools,
                                                      tmp_path: Path) -> None:
    """Indices of the largest size swtpm allows, more than EK_CHAIN_MAX_BYTES in all: an index
    that would pass the budget is not read (its size is known before reading), nor any after it."""
    size = 2048
    count = EK_CHAIN_MAX_BYTES // size + 2
    for i in range(count):
        nv_put(tpm2_tools, fresh_swtpm, tmp_path, NV_EK_CHAIN_FIRST + i, b"\x00" * size)
    with open_transport(fresh_swtpm.tcti) as t:
        rec = Scripted(t.send)
        chain = read_ek_chain(TpmCommands(rec))
    reads = [c for c in rec.commands if cc_of(c) == TPM_CC.NV_Read]
    asked = sum(int.from_bytes(c[-4:-2], "big") for c in reads)  # u16 size, u16 offset
    assert asked <= EK_CHAIN_MAX_BYTES
    assert {int.from_bytes(c[14:18], "big") for c in reads} == {
        NV_EK_CHAIN_FIRST + i for i in range(EK_CHAIN_MAX_BYTES // size)}
    assert chain.certificates == () and chain.note is not None
    assert f"NV 0x{NV_EK_CHAIN_FIRST + EK_CHAIN_MAX_BYTES // size:08x} (2048 bytes) would pass" in chain.note


# -- the enumeration against a TPM that lies --------------------------------------------------------


def handles_response(handles: list[int], more: bool) -> bytes:
    body = bytes([1 if more else 0]) + struct.pack(">II", TPM_CAP.HANDLES, len(handles))
    body += b"".join(struct.pack(">I", h) for h in handles)
    return response(body)


@pytest.mark.parametrize(("answer", "expected"), [
    # moreData forever, always the same handle: no progress, one call
    (lambda prop: handles_response([NV_EK_CHAIN_FIRST], True), [NV_EK_CHAIN_FIRST]),
    # one new handle per call, moreData forever: at most limit + 1 handles, limit + 1 calls
    (lambda prop: handles_response([prop], True), [NV_EK_CHAIN_FIRST + i for i in range(5)]),
    # out of order, out of the range
    (lambda prop: handles_response([NV_EK_CHAIN_FIRST + 3, NV_EK_CHAIN_FIRST + 1], True), [NV_EK_CHAIN_FIRST + 3]),
    (lambda prop: handles_response([0x01C00002, NV_EK_CHAIN_FIRST], True), []),
    (lambda prop: handles_response([NV_EK_CHAIN_FIRST, 0x01C08000, NV_EK_CHAIN_FIRST + 9], True),
     [NV_EK_CHAIN_FIRST]),
])
def test_handle_enumeration_is_bounded_whatever_the_tpm_answers(answer: Callable[[int], bytes],
                                                                 expected: list[int]) -> None:
    def reply(cmd: bytes) -> bytes:
        assert cc_of(cmd) == TPM_CC.GetCapability
        return answer(int.from_bytes(cmd[14:18], "big"))

    ch = Scripted(reply, limit=20)
    got = TpmCommands(ch).handles_in_range(NV_EK_CHAIN_FIRST, NV_EK_CHAIN_FIRST + 0xFF, 4)
    assert got == expected
    assert len(ch.commands) <= 5


# -- the cutting of concatenated bytes ---------------------------------------------------------------


def test_split_follows_the_profile(two_level: dict[str, Any]) -> None:
    a, b = two_level["ica1_der"], two_level["ica2_der"]
    assert split_ek_chain([(1, a + b)]) == ([a, b], [])
    # a certificate split at every possible point between two indices
    for cut in range(1, len(b)):
        assert split_ek_chain([(1, a + b[:cut]), (2, b[cut:])]) == ([a, b], [])
    # padding to the end of an index (0x00 or 0xFF), and a TCG stored-certificate header
    assert split_ek_chain([(1, a + b"\xff" * 40), (2, b + b"\x00" * 3)]) == ([a, b], [])
    stored = b"\x10\x01\x00" + struct.pack(">H", len(b) + 2) + b"\x10\x02" + b
    assert split_ek_chain([(1, a), (2, stored + b"\xff" * 9)]) == ([a, b], [])
    # an index that was not read breaks a certificate that spans it
    certs, problems = split_ek_chain([(1, a + b[:50]), (2, None), (3, b[50:]), (4, b)])
    assert certs == [a, b]
    assert problems[0].startswith("NV 0x00000001 offset") and "truncated" in problems[0]
    assert problems[1].startswith("NV 0x00000003 offset 0:")


@pytest.mark.parametrize("junk", [
    b"\x31\x03\x02\x01\x00",                      # a SET, not a certificate
    b"\x30\x80" + b"\x00" * 10,                   # indefinite length
    b"\x30\x85\x01\x00\x00\x00\x00",              # a 5-byte length
    b"\x30\x84\x7f\xff\xff\xff" + b"\x00" * 8,    # 2 GiB claimed
    b"\x30\x06\x30\x00\x30\x00\x05\x00",          # a SEQUENCE of the wrong things
    b"\x30",                                      # one byte
])
def test_split_skips_what_is_not_a_certificate(junk: bytes, two_level: dict[str, Any]) -> None:
    a = two_level["ica1_der"]
    certs, problems = split_ek_chain([(1, junk), (2, a)])
    assert certs == [a]
    assert len(problems) == 1 and problems[0].startswith("NV 0x00000001 offset 0:")


def test_split_is_bounded(two_level: dict[str, Any]) -> None:
    a = two_level["ica1_der"]
    certs, problems = split_ek_chain([(1, a * (EK_CHAIN_MAX_CERTS + 4))])
    assert len(certs) == EK_CHAIN_MAX_CERTS
    assert problems and f"more than {EK_CHAIN_MAX_CERTS} certificates" in problems[0]
    # a megabyte of padding and of junk: linear, one problem
    assert split_ek_chain([(1, b"\xff" * (1 << 20))]) == ([], [])
    certs, problems = split_ek_chain([(i, b"\x01" * 4096) for i in range(64)])
    assert certs == [] and len(problems) == 64


# -- Windows PCP (emulated over swtpm) -----------------------------------------------------------------


def test_pcp_reads_the_nv_chain_over_tbs_and_adds_windows_store(fresh_swtpm: EmbeddedSwtpm, tpm2_tools: Tools,
                                                                tmp_path: Path, two_level: dict[str, Any]) -> None:
    """On Windows the chain indices are read over the caller's TBS context, as on Linux, then
    PCP_INTERMEDIATE_CA_EKCERT's certificates not already found are added (admin/SYSTEM; a
    standard user is refused that property and keeps the NV chain)."""
    issuer = swtpm_issuer(fresh_swtpm)
    nv_put(tpm2_tools, fresh_swtpm, tmp_path, NV_EK_CHAIN_FIRST, issuer)
    store = [issuer, two_level["ica1_der"]]
    for privilege, expected in (("system", (issuer, two_level["ica1_der"])), ("standard", (issuer,))):
        with Tpm.open_pcp_emulator(fresh_swtpm.tcti, tmp_path / "pcp", privilege=privilege,
                                   ek_intermediate_store=store) as tpm:
            ek = tpm.ek("rsa")
        assert ek.chain == expected, privilege
        assert ek.chain_note is None


# -- the CLI -----------------------------------------------------------------------------------------


def test_cli_ek_out_chain_and_json(fresh_swtpm: EmbeddedSwtpm, tpm2_tools: Tools, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    from tpm2_attest.cli import main

    issuer = swtpm_issuer(fresh_swtpm)
    nv_put(tpm2_tools, fresh_swtpm, tmp_path, NV_EK_CHAIN_FIRST, issuer + b"\x00" * 16)
    out = tmp_path / "chain.pem"
    assert main(["ek", "--tcti", fresh_swtpm.tcti, "--out-chain", str(out), "--json"]) == 0
    obj = json.loads(capsys.readouterr().out)
    assert [c["sha256"] for c in obj["chain"]] == [hashlib.sha256(issuer).hexdigest()]
    assert obj["chain"][0]["subject"] == "CN=swtpm-localca" and obj["chain_note"] is None
    assert [der(c) for c in x509.load_pem_x509_certificates(out.read_bytes())] == [issuer]
    assert main(["ek", "--tcti", fresh_swtpm.tcti]) == 0
    text = capsys.readouterr().out
    assert "chain: 1 certificate(s)" in text and "CN=swtpm-localca" in text


def test_windows_report_observes_both_sources(fresh_swtpm: EmbeddedSwtpm, tpm2_tools: Tools, tmp_path: Path,
                                              two_level: dict[str, Any]) -> None:
    """What a real machine will tell us: whether TBS lets this account list and read the chain
    indices, and what PCP_INTERMEDIATE_CA_EKCERT holds (the report's ``ek-chain`` check)."""
    from tpm2_attest.backends.pcp_emulator import open_emulated_backend
    from tpm2_attest.probe_windows import run_windows_report

    issuer = swtpm_issuer(fresh_swtpm)
    nv_put(tpm2_tools, fresh_swtpm, tmp_path, NV_EK_CHAIN_FIRST, issuer)
    for privilege in ("system", "standard"):
        be = open_emulated_backend(fresh_swtpm.tcti, tmp_path / "pcp", privilege,  # type: ignore[arg-type]
                                   ek_intermediate_store=[two_level["ica1_der"]])
        try:
            check = run_windows_report(be).check("ek-chain")
        finally:
            be.close()
        assert check.status == "OBSERVED"
        nv = check.data["nv"]
        assert [c["sha256"] for c in nv["certificates"]] == [hashlib.sha256(issuer).hexdigest()]
        store = check.data["store"]
        if privilege == "system":
            assert [c["subject"] for c in store["certificates"]] == ["CN=EK Chain Test CA 1"]
        else:
            assert store["privilege_refusal"] is True and "NTE_PERM" in check.detail
