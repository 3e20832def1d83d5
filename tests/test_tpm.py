"""The device API against swtpm, cross-checked with tpm2-tools as an independent implementation."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tpm2_attest import ErrorCode, Tpm, TpmError
from tpm2_attest.evidence import AkBlob, CredentialChallenge
from tpm2_attest.tpm2 import templates as T
from tpm2_attest.tpm2.constants import TPM_ALG, TPM_ST
from tpm2_attest.tpm2.keys import object_name, parse_public
from tpm2_attest.tpm2.structures import (
    TPM2B_PUBLIC,
    TPMS_ATTEST,
    TPMS_CREATION_INFO,
    TPMS_QUOTE_INFO,
)


def tools(sw: Any, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TPM2TOOLS_TCTI": sw.tcti}
    res = subprocess.run(list(args), env=env, capture_output=True, text=True, timeout=60)
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({res.returncode}): {res.stderr}")
    return res


@pytest.fixture
def tpm(swtpm: Any) -> Any:
    with Tpm.open(swtpm.tcti) as t:
        yield t


def parse_pcrread(text: str) -> dict[str, dict[int, bytes]]:
    out: dict[str, dict[int, bytes]] = {}
    bank = ""
    for line in text.splitlines():
        s = line.strip()
        if s.endswith(":") and not s[0].isdigit():
            bank = s[:-1]
            out[bank] = {}
        elif ":" in s and bank:
            k, v = s.split(":", 1)
            out[bank][int(k)] = bytes.fromhex(v.strip().removeprefix("0x"))
    return out


def test_is_available(swtpm: Any) -> None:
    assert Tpm.is_available(swtpm.tcti)
    assert not Tpm.is_available("swtpm:host=127.0.0.1,port=1")
    assert not Tpm.is_available("device:/nonexistent/tpmrm0")


def test_open_missing_tpm_is_typed(swtpm: Any) -> None:
    with pytest.raises(TpmError) as ei:
        Tpm.open("swtpm:host=127.0.0.1,port=1")
    assert ei.value.code == ErrorCode.TPM_NOT_FOUND
    # An explicit TCTI never falls back to the embedded swtpm.
    with pytest.raises(TpmError):
        Tpm.open("swtpm:host=127.0.0.1,port=1", embedded_fallback=True)


def test_info(tpm: Any) -> None:
    info = tpm.info()
    assert info.manufacturer == "IBM"
    assert info.spec_family == "2.0"
    assert info.platform == "swtpm"
    assert set(info.pcr_banks) >= {"sha1", "sha256"}
    assert tpm.pcr.banks() == info.pcr_banks


def test_get_random(tpm: Any) -> None:
    a, b = tpm.get_random(100), tpm.get_random(100)
    assert len(a) == 100 and a != b


def test_pcr_read_matches_tpm2_pcrread(tpm: Any, swtpm: Any) -> None:
    tpm.pcr.extend(23, b"make pcr 23 non-zero")
    ours = {bank: tpm.pcr.read(bank=bank) for bank in ("sha1", "sha256")}
    theirs = parse_pcrread(tools(swtpm, "tpm2_pcrread", "sha1:all+sha256:all").stdout)
    assert ours == theirs
    assert len(ours["sha256"]) == 24


def test_pcr_extend_matches_software(tpm: Any) -> None:
    before = tpm.pcr.read([16], bank="sha256")[16]
    before1 = tpm.pcr.read([16], bank="sha1")[16]
    tpm.pcr.extend(16, b"hello")
    assert tpm.pcr.read([16])[16] == hashlib.sha256(before + hashlib.sha256(b"hello").digest()).digest()
    assert tpm.pcr.read([16], bank="sha1")[16] == hashlib.sha1(before1 + hashlib.sha1(b"hello").digest()).digest()
    digest = hashlib.sha256(b"raw").digest()
    mid = tpm.pcr.read([16])[16]
    tpm.pcr.extend(16, digest, digest=True, bank="sha256")
    assert tpm.pcr.read([16])[16] == hashlib.sha256(mid + digest).digest()


def test_pcr_extend_seen_by_tpm2_tools(tpm: Any, swtpm: Any) -> None:
    tpm.pcr.extend(23, b"x", bank="sha256")
    theirs = parse_pcrread(tools(swtpm, "tpm2_pcrread", "sha256:23").stdout)
    assert theirs["sha256"][23] == tpm.pcr.read([23])[23]


def test_locality_restricted_pcr_gives_a_hint(tpm: Any) -> None:
    # PCRs 17-22 are DRTM PCRs: extending them from locality 0 is refused by the TPM.
    with pytest.raises(TpmError) as ei:
        tpm.pcr.extend(17, b"x")
    assert ei.value.rc_name == "TPM_RC_LOCALITY"
    assert ei.value.hint and "16 or 23" in ei.value.hint


@pytest.mark.parametrize("bad", [-1, 24, 99])
def test_bad_pcr_index(tpm: Any, bad: int) -> None:
    with pytest.raises(TpmError) as ei:
        tpm.pcr.read([bad])
    assert ei.value.code == ErrorCode.INVALID_ARGUMENT
    with pytest.raises(TpmError):
        tpm.pcr.extend(bad, b"x")


def test_bad_bank(tpm: Any) -> None:
    with pytest.raises(TpmError) as ei:
        tpm.pcr.read([0], bank="sha384")
    assert ei.value.code == ErrorCode.INVALID_ARGUMENT
    with pytest.raises(TpmError) as ei:
        tpm.pcr.read([0], bank="md5")
    assert ei.value.code == ErrorCode.INVALID_ARGUMENT


def test_tpm_response_code_for_bad_pcr_handle(tpm: Any) -> None:
    # Bypass our argument check to see the TPM's own answer for PCR 30.
    with pytest.raises(TpmError) as ei:
        tpm.commands.pcr_extend(30, [])
    err = ei.value
    assert err.code == ErrorCode.TPM_ERROR
    assert err.command == "TPM2_PCR_Extend"
    assert err.rc_name in ("TPM_RC_VALUE", "TPM_RC_HANDLE")


def test_missing_handle(tpm: Any) -> None:
    with pytest.raises(TpmError) as ei:
        tpm.read_public(0x81000FFF)
    err = ei.value
    assert err.code == ErrorCode.KEY_NOT_FOUND
    assert err.tpm_rc == 0x18B
    assert str(err) == "TPM2_ReadPublic: TPM_RC_HANDLE (0x18b) on handle 1"


def test_wrong_auth(tpm: Any, swtpm: Any) -> None:
    # Create a primary with a password and use it with the wrong one.
    from tpm2_attest.tpm2.constants import TPM_RH
    from tpm2_attest.tpm2.structures import TPMS_SENSITIVE_CREATE

    res = tpm.commands.create_primary(TPM_RH.OWNER, T.SRK_ECC_TEMPLATE,
                                      sensitive=TPMS_SENSITIVE_CREATE(b"right", b""))
    try:
        with pytest.raises(TpmError) as ei:
            tpm.commands.create(res.handle, T.AK_ECC_TEMPLATE, parent_auth=b"wrong")
        err = ei.value
        assert err.rc_name in ("TPM_RC_AUTH_FAIL", "TPM_RC_BAD_AUTH")
        assert "on session 1" in str(err)
    finally:
        tpm.commands.flush_context(res.handle)


def test_read_public_matches_tpm2_readpublic(tpm: Any, swtpm: Any, tmp_path: Path) -> None:
    out = tmp_path / "ek.pub"
    tools(swtpm, "tpm2_readpublic", "-c", "0x81010001", "-o", str(out), "-f", "tss")
    theirs = out.read_bytes()
    ours = tpm.read_public(0x81010001)
    assert ours.public == theirs
    assert ours.name == object_name(parse_public(theirs))
    res = tools(swtpm, "tpm2_readpublic", "-c", "0x81010001")
    assert ours.name.hex() in res.stdout


def test_ek_rsa_persistent_with_certificate(tpm: Any, swtpm: Any) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    ek = tpm.ek("rsa")
    assert ek.persistent and ek.handle == 0x81010001
    assert ek.certificate is not None
    cert = x509.load_der_x509_certificate(ek.certificate)
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    assert spki == ek.public_der
    assert T.matches_template(ek.public_area, T.EK_RSA_TEMPLATE)


def test_ek_ecc_created_from_template(tpm: Any, swtpm: Any, tmp_path: Path) -> None:
    ek = tpm.ek("ecc")
    assert not ek.persistent and ek.certificate is None  # swtpm_setup makes no P-256 cert
    # tpm2_createek builds the same key from the same TCG template.
    out = tmp_path / "ek.pub"
    tools(swtpm, "tpm2_createek", "-c", "-", "-G", "ecc", "-u", str(out), "-f", "tss", check=False)
    if out.exists():
        assert parse_public(out.read_bytes()).unique == ek.public_area.unique
    ek384 = tpm.ek("ecc384")
    assert ek384.persistent and ek384.certificate is not None


def test_ek_unknown_kind(tpm: Any) -> None:
    with pytest.raises(TpmError) as ei:
        tpm.ek("dsa")
    assert ei.value.code == ErrorCode.INVALID_ARGUMENT


@pytest.mark.parametrize("algorithm", ["ecc", "rsa"])
def test_provision_ak_blob(tpm: Any, algorithm: str) -> None:
    blob = tpm.provision_ak(nonce=b"enroll-nonce", algorithm=algorithm)
    assert blob.format == "TPW1" and blob.scope == "tpm"
    assert AkBlob.from_bytes(blob.to_bytes()) == blob
    pub = blob.public_area
    tmpl = T.AK_ECC_TEMPLATE if algorithm == "ecc" else T.AK_RSA_TEMPLATE
    assert T.matches_template(pub, tmpl)
    att = TPMS_ATTEST.from_bytes(blob.attest)
    assert att.type == TPM_ST.ATTEST_CREATION and att.extra_data == b"enroll-nonce"
    assert isinstance(att.attested, TPMS_CREATION_INFO)
    assert att.attested.object_name == blob.name
    assert blob.creation_data_struct.outside_info == b"enroll-nonce"


def test_quote_returns_consistent_pcrs(tpm: Any) -> None:
    blob = tpm.provision_ak()
    before = tpm.stats.total
    q = tpm.quote(blob, pcrs=[0, 1, 2, 3, 4, 5, 6, 7, 16], qualifying_data=b"n" * 32)
    used = tpm.stats.total - before
    att = TPMS_ATTEST.from_bytes(q.attest)
    assert att.type == TPM_ST.ATTEST_QUOTE and att.extra_data == b"n" * 32
    assert isinstance(att.attested, TPMS_QUOTE_INFO)
    vals = q.pcrs["sha256"]
    assert sorted(vals) == [0, 1, 2, 3, 4, 5, 6, 7, 16]
    h = hashlib.sha256(b"".join(vals[i] for i in sorted(vals))).digest()
    assert h == att.attested.pcr_digest
    # Transient SRK: CreatePrimary + Load + Quote + 2x PCR_Read + 2x Flush.
    assert used <= 7


def test_quote_with_a_persistent_srk_uses_fewer_commands(fresh_swtpm: Any) -> None:
    from tpm2_attest.tpm2.constants import TPM_RH

    with Tpm.open(fresh_swtpm.tcti) as t:
        res = t.commands.create_primary(TPM_RH.OWNER, T.SRK_ECC_TEMPLATE)
        t.commands.evict_control(res.handle, 0x81000001)
        t.commands.flush_context(res.handle)
    with Tpm.open(fresh_swtpm.tcti) as t:
        blob = t.provision_ak()
        assert blob.parent == 0x81000001
        before = t.stats.total
        primaries = t.stats.by_command.get("TPM2_CreatePrimary", 0)
        t.quote(blob, pcrs=[16], qualifying_data=b"x")
        # Load + Quote + PCR_Read + Flush: nothing is re-created.
        assert t.stats.total - before == 4
        assert t.stats.by_command.get("TPM2_CreatePrimary", 0) == primaries


def test_quote_rejects_foreign_and_garbage_blobs(tpm: Any) -> None:
    from tpm2_attest.embedded import EmbeddedSwtpm

    # A TPM with other seeds (a freshly manufactured identity) wraps keys we cannot load.
    with EmbeddedSwtpm(fresh_identity=True) as sw, Tpm.open(sw.tcti) as other:
        foreign = other.provision_ak()
    with pytest.raises(TpmError) as ei:
        tpm.quote(foreign, pcrs=[0])
    assert ei.value.code == ErrorCode.BAD_BLOB
    with pytest.raises(TpmError) as ei:
        tpm.quote(b"TPW1garbage")
    assert ei.value.code == ErrorCode.BAD_BLOB


def test_quote_argument_checks(tpm: Any) -> None:
    blob = tpm.provision_ak()
    with pytest.raises(TpmError):
        tpm.quote(blob, pcrs=[])
    with pytest.raises(TpmError):
        tpm.quote(blob, qualifying_data=bytes(65))


def test_activate_tpm2_tools_credential(tpm: Any, swtpm: Any, tmp_path: Path) -> None:
    """A credential made by tpm2_makecredential activates with our activate_credential."""
    blob = tpm.provision_ak()
    ek = tpm.ek("rsa")
    (tmp_path / "ek.pub").write_bytes(ek.public)
    (tmp_path / "secret").write_bytes(b"s" * 32)
    tools(swtpm, "tpm2_makecredential", "-T", "none", "-u", str(tmp_path / "ek.pub"),
          "-s", str(tmp_path / "secret"), "-n", blob.name.hex(), "-o", str(tmp_path / "cred"))
    data = (tmp_path / "cred").read_bytes()
    assert tpm.activate_credential(blob, data) == b"s" * 32
    assert tpm.activate_credential(blob, CredentialChallenge.from_bytes(data)) == b"s" * 32


def test_activate_wrong_name_fails(tpm: Any, swtpm: Any, tmp_path: Path) -> None:
    blob = tpm.provision_ak()
    other = tpm.provision_ak()
    ek = tpm.ek("rsa")
    (tmp_path / "ek.pub").write_bytes(ek.public)
    (tmp_path / "secret").write_bytes(b"s" * 32)
    tools(swtpm, "tpm2_makecredential", "-T", "none", "-u", str(tmp_path / "ek.pub"),
          "-s", str(tmp_path / "secret"), "-n", other.name.hex(), "-o", str(tmp_path / "cred"))
    with pytest.raises(TpmError) as ei:
        tpm.activate_credential(blob, (tmp_path / "cred").read_bytes())
    assert ei.value.code == ErrorCode.TPM_ERROR


def test_tpm2_tools_structures_parse(swtpm: Any, tmp_path: Path) -> None:
    """tpm2_createak's public area parses and its Name matches what tpm2-tools computed."""
    d = tmp_path
    tools(swtpm, "tpm2_createek", "-c", str(d / "ek.ctx"), "-G", "rsa", "-u", str(d / "ek.pub"))
    tools(swtpm, "tpm2_createak", "-C", str(d / "ek.ctx"), "-c", str(d / "ak.ctx"), "-G", "ecc",
          "-g", "sha256", "-s", "ecdsa", "-u", str(d / "ak.pub"), "-n", str(d / "ak.name"))
    tools(swtpm, "tpm2_flushcontext", "-t")
    pub = parse_public((d / "ak.pub").read_bytes())
    assert object_name(pub) == (d / "ak.name").read_bytes()
    assert TPM2B_PUBLIC(pub).to_bytes() == (d / "ak.pub").read_bytes()
    ekpub = parse_public((d / "ek.pub").read_bytes())
    assert ekpub.type == TPM_ALG.RSA


def test_threads_share_one_tpm(tpm: Any) -> None:
    import concurrent.futures

    blob = tpm.provision_ak()

    def work(i: int) -> bytes:
        q = tpm.quote(blob, pcrs=[i % 8], qualifying_data=bytes([i]) * 8)
        return TPMS_ATTEST.from_bytes(q.attest).extra_data

    with concurrent.futures.ThreadPoolExecutor(4) as ex:
        results = list(ex.map(work, range(12), timeout=120))
    assert results == [bytes([i]) * 8 for i in range(12)]


def test_atomic_write(tmp_path: Path) -> None:
    from tpm2_attest._files import write_atomic

    p = tmp_path / "blob"
    write_atomic(p, b"one")
    write_atomic(p, b"two")
    assert p.read_bytes() == b"two"
    assert [x.name for x in tmp_path.iterdir()] == ["blob"]

    with pytest.raises(TypeError):
        write_atomic(p, "not bytes")  # type: ignore[arg-type]
    assert p.read_bytes() == b"two"
    assert [x.name for x in tmp_path.iterdir()] == ["blob"]


@pytest.mark.parametrize("kind", ["rsa", "ecc", "ecc384"])
def test_activate_with_each_ek(tpm: Any, kind: str) -> None:
    """RSA and P-256 EKs (PolicyA) and swtpm's high-range P-384 EK (PolicyB = PolicyOR)."""
    from tpm2_attest import verify

    blob = tpm.provision_ak()
    ek = tpm.ek(kind)
    challenge, secret = verify.make_credential(ek.public, blob.name)
    before = dict(tpm.stats.by_command)
    assert tpm.activate_credential(blob, challenge) == secret
    used_or = tpm.stats.by_command.get("TPM2_PolicyOR", 0) - before.get("TPM2_PolicyOR", 0)
    assert used_or == (1 if kind == "ecc384" else 0)
