"""The Windows PCP backend against PcpEmulator (keys in swtpm): the brief's privilege table,
cross-user quoting, overwrite semantics, and the verifier on PCP evidence — plus evidence
recorded on real Windows (go-attestation's test data) checked against our template and verifier.

Each emulator is opened in its own ``with`` block, as the separate processes of the real flow
(SYSTEM provisions, then a standard user quotes) would be.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tpm2_attest.backends import ncrypt_api as api
from tpm2_attest.backends import pcp as P
from tpm2_attest.backends.ncrypt_api import (
    DACL_SECURITY_INFORMATION,
    GENERIC_READ,
    NCRYPT_MACHINE_KEY_FLAG,
    NCRYPT_OVERWRITE_KEY_FLAG,
    NCRYPT_PCP_IDENTITY_KEY,
    NCRYPT_PCP_KEY_USAGE_POLICY_PROPERTY,
    NCRYPT_PCP_TPM12_IDBINDING_PROPERTY,
    NCRYPT_SECURITY_DESCR_PROPERTY,
    SID_BUILTIN_USERS,
    NCryptError,
    pack_dword,
    parse_security_descriptor,
)
from tpm2_attest.backends.pcp_emulator import (
    PCP_AK_AUTH_POLICY,
    PCP_AK_TEMPLATE,
    KeyRecord,
    PcpEmulator,
    Privilege,
    users_may_use,
)
from tpm2_attest.errors import (
    E_ACCESSDENIED,
    NTE_DEVICE_NOT_READY,
    TPM_E_COMMAND_BLOCKED,
    ErrorCode,
    TpmError,
)
from tpm2_attest.evidence import AkBlob, Quote
from tpm2_attest.tpm import Tpm
from tpm2_attest.tpm2.constants import EK_RSA_HANDLE, TPM_ALG, TPMA_OBJECT
from tpm2_attest.tpm2.keys import object_name
from tpm2_attest.tpm2.marshal import tpm2b
from tpm2_attest.tpm2.structures import TPMS_ATTEST, TPMS_CREATION_DATA, TPMT_PUBLIC
from tpm2_attest.verify import Reason, VerificationError, check_ak, verify_quote
from tpm2_attest.verify.credential import make_credential

PRIVILEGES = ("standard", "admin", "system")
NONCE = b"server-nonce-0123456789abcdef"
KEY = "acme-device-ak"
WINERROR_H = Path("/usr/share/mingw-w64/include/winerror.h")


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "pcp-state"


@pytest.fixture
def pcp(swtpm: Any, state: Path) -> Any:
    """``with pcp("system") as tpm:`` opens a Tpm over a PcpEmulator on the shared state."""

    @contextmanager
    def open_(privilege: Privilege = "standard", **kw: Any) -> Iterator[Tpm]:
        with Tpm.open_pcp_emulator(swtpm.tcti, state, privilege=privilege, **kw) as tpm:
            yield tpm
            # Every provider and key handle was freed, whatever happened.
            assert emulator(tpm).open_handles == 0

    return open_


def emulator(tpm: Tpm) -> PcpEmulator:
    emu = tpm.backend.ncrypt  # type: ignore[attr-defined]
    assert isinstance(emu, PcpEmulator)
    return emu


def raises(code: ErrorCode, hresult: int | None = None) -> Any:
    """pytest.raises for a TpmError with ``code`` (and exactly ``hresult`` when given)."""

    class _Check:
        def __enter__(self) -> None:
            self._cm = pytest.raises(TpmError)
            self._info = self._cm.__enter__()

        def __exit__(self, *exc: Any) -> bool:
            handled = self._cm.__exit__(*exc)
            err = self._info.value
            assert err.code == code, f"{err.code} != {code}: {err}"
            if hresult is not None:
                assert err.hresult == hresult, f"hresult {err.hresult!r} != 0x{hresult:08x}: {err}"
            return bool(handled)

    return _Check()


# -----------------------------------------------------------------------------------------------
# The privilege table of the brief: each operation x standard user / elevated admin / SYSTEM.
# -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("privilege", PRIVILEGES)
def test_is_available_pcr_read_read_public(pcp: Any, privilege: str) -> None:
    with pcp(privilege) as tpm:
        assert tpm.backend.is_available()
        values = tpm.pcr.read([0, 7, 16], bank="sha256")
        assert sorted(values) == [0, 7, 16] and all(len(v) == 32 for v in values.values())
        ek = tpm.read_public(EK_RSA_HANDLE)
        assert ek.name == object_name(ek.public_area)
        info = tpm.info()
        assert info.platform == "windows" and info.spec_family == "2.0"
        assert info.extra["pcp_emulator"] is True and info.extra["privilege"] == privilege
        assert "pcp_platform_type" in info.extra


@pytest.mark.parametrize("privilege", PRIVILEGES)
def test_pcr_extend(pcp: Any, privilege: str) -> None:
    with pcp(privilege) as tpm:
        before = tpm.pcr.read([16])[16]
        if privilege == "standard":
            with raises(ErrorCode.REQUIRES_ELEVATION, TPM_E_COMMAND_BLOCKED):
                tpm.pcr.extend(16, b"measurement")
            assert tpm.pcr.read([16])[16] == before
        else:
            tpm.pcr.extend(16, b"measurement", bank="sha256")
            assert tpm.pcr.read([16])[16] == hashlib.sha256(
                before + hashlib.sha256(b"measurement").digest()).digest()


@pytest.mark.parametrize("privilege", PRIVILEGES)
def test_provision_user_scope_pcp1(pcp: Any, privilege: str) -> None:
    with pcp(privilege) as tpm:
        blob = tpm.provision_ak(nonce=NONCE)
    assert blob.format == "PCP1" and blob.scope == "user"
    assert re.fullmatch(r"ak-[0-9a-f]{16}", blob.key_name)
    assert blob.private == b"" and blob.parent == 0
    check_ak(blob, nonce=NONCE)


@pytest.mark.parametrize("privilege", PRIVILEGES)
def test_quote(pcp: Any, privilege: str) -> None:
    with pcp("system") as tpm:
        machine_blob = tpm.provision_ak(key_name=KEY, scope="machine")
    with pcp(privilege) as tpm:
        user_blob = tpm.provision_ak()
        for blob in (user_blob, machine_blob):
            quote = tpm.quote(blob, pcrs=[0, 7, 16], qualifying_data=NONCE)
            result = verify_quote(blob, quote, nonce=NONCE)
            assert sorted(result.pcrs) == [0, 7, 16]
            assert result.pcrs == quote.pcrs["sha256"] == tpm.pcr.read([0, 7, 16])


@pytest.mark.parametrize("privilege", PRIVILEGES)
def test_provision_machine_scope_pcp2(pcp: Any, state: Path, privilege: str) -> None:
    with pcp(privilege) as tpm:
        if privilege == "standard":
            with raises(ErrorCode.REQUIRES_ELEVATION, api.NTE_PERM):
                tpm.provision_ak(key_name=KEY, scope="machine", nonce=NONCE)
            assert not (state / "machine").exists() or not any((state / "machine").iterdir())
            return
        blob = tpm.provision_ak(key_name=KEY, scope="machine", nonce=NONCE)
    assert blob.format == "PCP2" and blob.scope == "machine" and blob.key_name == KEY
    check_ak(blob, nonce=NONCE)
    # The key's DACL, as persisted, grants Built-in Users read/use.
    (path,) = (state / "machine").iterdir()
    record = KeyRecord.from_json(path.read_bytes())
    assert record.name == KEY and record.machine and users_may_use(record.security_descriptor)
    assert record.security_descriptor is not None
    aces = parse_security_descriptor(record.security_descriptor).dacl or ()
    assert any(a.sid == SID_BUILTIN_USERS and a.mask & GENERIC_READ for a in aces)


@pytest.mark.parametrize("privilege", PRIVILEGES)
def test_activate_credential(pcp: Any, privilege: str) -> None:
    with pcp(privilege) as tpm:
        blob = tpm.provision_ak()
        ek = tpm.ek("rsa")
        challenge, secret = make_credential(ek.public, blob.name)
        if privilege == "standard":
            with raises(ErrorCode.REQUIRES_ELEVATION, NTE_DEVICE_NOT_READY):
                tpm.activate_credential(blob, challenge)
        else:
            assert tpm.activate_credential(blob, challenge) == secret
            assert tpm.activate_credential(blob, challenge.to_bytes()) == secret


# -----------------------------------------------------------------------------------------------
# SYSTEM provisions, a standard user quotes; overwrite; argument and capability errors.
# -----------------------------------------------------------------------------------------------


def test_cross_user_quoting(pcp: Any, tmp_path: Path) -> None:
    saved = tmp_path / "ak.blob"
    with pcp("system") as tpm:
        saved.write_bytes(tpm.provision_ak(key_name=KEY, scope="machine", overwrite=True,
                                           nonce=NONCE).to_bytes())
    blob = AkBlob.from_bytes(saved.read_bytes())
    ak = check_ak(blob, nonce=NONCE)
    with pcp("standard") as tpm:
        quote = tpm.quote(blob, qualifying_data=b"runtime-challenge")
        # The standard user may use the key, not replace or delete it.
        with raises(ErrorCode.REQUIRES_ELEVATION, api.NTE_PERM):
            tpm.provision_ak(key_name=KEY, scope="machine", overwrite=True)
        assert tpm.quote(blob, pcrs=[1]).pcrs["sha256"].keys() == {1}
    result = verify_quote(ak, Quote.from_json(quote.to_json()), nonce=b"runtime-challenge")
    assert sorted(result.pcrs) == list(range(8))
    # A user-scope key of SYSTEM is in SYSTEM's namespace: not visible to the user.
    with pcp("system") as tpm:
        system_user_key = tpm.provision_ak()
    with pcp("standard") as tpm, raises(ErrorCode.KEY_NOT_FOUND, api.NTE_BAD_KEYSET):
        tpm.quote(system_user_key)


def test_machine_key_without_users_ace_is_closed_to_standard_users(pcp: Any, swtpm: Any,
                                                                   state: Path) -> None:
    """The DACL is what opens a machine key to standard users: without it, NTE_PERM."""
    with pcp("admin") as tpm:
        emu = emulator(tpm)
        prov = emu.open_storage_provider()
        key = emu.create_persisted_key(prov, "RSA", "no-dacl-ak", 0, NCRYPT_MACHINE_KEY_FLAG)
        emu.set_property(key, NCRYPT_PCP_KEY_USAGE_POLICY_PROPERTY, pack_dword(NCRYPT_PCP_IDENTITY_KEY))
        emu.finalize_key(key)
        public, creation, attest, signature, _ = P.parse_idbinding(
            emu.get_property(key, NCRYPT_PCP_TPM12_IDBINDING_PROPERTY))
        emu.free_object(key)
        emu.free_object(prov)
    blob = AkBlob("PCP2", public, b"", creation, attest, signature, "no-dacl-ak")
    with pcp("standard") as tpm, raises(ErrorCode.REQUIRES_ELEVATION, api.NTE_PERM):
        tpm.quote(blob)
    with pcp("system") as tpm:
        tpm.quote(blob, qualifying_data=NONCE)


@pytest.mark.parametrize(("scope", "privilege"), [("user", "standard"), ("machine", "admin")])
def test_overwrite_semantics(pcp: Any, scope: str, privilege: str) -> None:
    with pcp(privilege) as tpm:
        first = tpm.provision_ak(key_name=KEY, scope=scope)
        with raises(ErrorCode.KEY_EXISTS, api.NTE_EXISTS):
            tpm.provision_ak(key_name=KEY, scope=scope)
        tpm.quote(first, qualifying_data=NONCE)  # untouched
        second = tpm.provision_ak(key_name=KEY, scope=scope, overwrite=True)
        assert second.key_name == first.key_name and second.public != first.public
        verify_quote(second, tpm.quote(second, qualifying_data=NONCE), nonce=NONCE)
        # The old blob now names a different key: refused on the device, not silently misused.
        with raises(ErrorCode.BAD_BLOB):
            tpm.quote(first)
        # overwrite=True with no existing key simply creates it.
        tpm.provision_ak(key_name=KEY + "-2", scope=scope, overwrite=True)


def test_pcp_ignores_the_overwrite_flag(pcp: Any) -> None:
    with pcp("admin") as tpm:
        tpm.provision_ak(key_name=KEY)
        emu = emulator(tpm)
        prov = emu.open_storage_provider()
        try:
            with pytest.raises(NCryptError) as ei:
                emu.create_persisted_key(prov, "RSA", KEY, 0, NCRYPT_OVERWRITE_KEY_FLAG)
            assert ei.value.hresult == api.NTE_EXISTS
        finally:
            emu.free_object(prov)


@pytest.mark.parametrize("key_name", [None, ""])
def test_machine_scope_needs_key_name(pcp: Any, key_name: str | None) -> None:
    with pcp("system") as tpm, raises(ErrorCode.INVALID_ARGUMENT):
        tpm.provision_ak(key_name=key_name, scope="machine")


def test_argument_errors(pcp: Any) -> None:
    with pcp("admin") as tpm:
        with raises(ErrorCode.INVALID_ARGUMENT):
            tpm.provision_ak(scope="global")
        with raises(ErrorCode.UNSUPPORTED):
            tpm.provision_ak(algorithm="ecc")
        with raises(ErrorCode.INVALID_ARGUMENT):
            tpm.provision_ak(key_name="x" * 257)
        with raises(ErrorCode.INVALID_ARGUMENT):
            tpm.provision_ak(key_name="bad\nname")
        blob = tpm.provision_ak()
        with raises(ErrorCode.KEY_NOT_FOUND, api.NTE_BAD_KEYSET):
            tpm.quote(replace(blob, key_name="no-such-key"))
        with raises(ErrorCode.KEY_NOT_FOUND, api.NTE_BAD_KEYSET):  # a PCP1 name is not a PCP2 name
            tpm.quote(replace(blob, format="PCP2"))


def test_no_security_descr_support(pcp: Any) -> None:
    with pcp("system", security_descr_support=False) as tpm:
        with raises(ErrorCode.UNSUPPORTED):
            tpm.provision_ak(key_name=KEY, scope="machine")
        assert tpm.provision_ak().format == "PCP1"  # user scope needs no DACL


def test_raw_blob_is_refused(pcp: Any, swtpm: Any) -> None:
    with Tpm.open(swtpm.tcti) as raw:
        tpw1 = raw.provision_ak()
    with pcp("admin") as tpm:
        with raises(ErrorCode.BAD_BLOB):
            tpm.quote(tpw1)
        with raises(ErrorCode.BAD_BLOB):
            tpm.activate_credential(tpw1, make_credential(tpm.ek("rsa").public, tpw1.name)[0])


# -----------------------------------------------------------------------------------------------
# EK through PCP.
# -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("privilege", PRIVILEGES)
def test_ek_through_pcp(pcp: Any, swtpm: Any, privilege: str) -> None:
    with Tpm.open(swtpm.tcti) as raw:
        expected = {kind: raw.ek(kind) for kind in ("rsa", "ecc", "ecc384")}
    with pcp(privilege) as tpm:
        ek = tpm.ek("rsa")
        # The Name rebuilt from PCP_EKPUB and the TCG template is the real EK's Name.
        assert ek.name == expected["rsa"].name == tpm.read_public(EK_RSA_HANDLE).name
        if privilege == "standard":
            assert ek.certificate is None  # standard users may only read PCP_EKPUB
        else:
            assert ek.certificate == expected["rsa"].certificate is not None
        # The P-256 EK from PCP_ECC_EKPUB (an 'ECK1' blob here), readable like PCP_EKPUB: its
        # Name is the real EK's; swtpm certifies only the P-384 EK, so no certificate.
        ecc = tpm.ek("ecc")
        assert ecc.name == expected["ecc"].name and ecc.certificate is None
        # PCP_ECC_EKPUB holds the P-256 key: the P-384 EK only through its certificate (H-4).
        if privilege == "standard" or expected["ecc384"].certificate is None:
            with raises(ErrorCode.UNSUPPORTED):
                tpm.ek("ecc384")
        else:
            ecc = tpm.ek("ecc384")
            assert ecc.name == expected["ecc384"].name
            assert ecc.certificate == expected["ecc384"].certificate
        with raises(ErrorCode.INVALID_ARGUMENT):
            tpm.ek("dsa")


# -----------------------------------------------------------------------------------------------
# The evidence: what the verifier accepts and rejects; the blob format.
# -----------------------------------------------------------------------------------------------


@pytest.fixture
def evidence(pcp: Any) -> tuple[AkBlob, Quote]:
    with pcp("system") as tpm:
        blob = tpm.provision_ak(key_name=KEY, scope="machine", nonce=NONCE)
    with pcp("standard") as tpm:
        return blob, tpm.quote(blob, pcrs=[0, 16], bank="sha1", qualifying_data=b"q-nonce")


def test_pcp_evidence_shape(evidence: tuple[AkBlob, Quote]) -> None:
    blob, quote = evidence
    area = blob.public_area
    # PCP's identity key: RSA-2048, 0x00050472, RSASSA-SHA1, non-empty authPolicy, userWithAuth.
    assert replace(area, unique=b"") == PCP_AK_TEMPLATE
    assert area.object_attributes == 0x00050472 and area.auth_policy == PCP_AK_AUTH_POLICY
    assert area.object_attributes & TPMA_OBJECT.userWithAuth
    # The nonce is bound as SHA-1(nonce) in outsideInfo and extraData.
    assert blob.creation_data_struct.outside_info == hashlib.sha1(NONCE).digest()
    assert blob.attest_struct.extra_data == hashlib.sha1(NONCE).digest()
    # Quotes with scheme NULL come back RSASSA-SHA1; the SHA-1 pcrDigest covers the values.
    sig = quote.signature[:4]
    assert sig == TPM_ALG.RSASSA.to_bytes(2, "big") + TPM_ALG.SHA1.to_bytes(2, "big")
    info = TPMS_ATTEST.from_bytes(quote.attest)
    assert info.attested.pcr_digest == hashlib.sha1(  # type: ignore[union-attr]
        b"".join(v for _, v in sorted(quote.pcrs["sha1"].items()))).digest()


def test_verifier_accepts_pcp_evidence(evidence: tuple[AkBlob, Quote]) -> None:
    blob, quote = evidence
    ak = check_ak(blob.to_bytes(), nonce=NONCE)
    assert ak.name == blob.name
    result = verify_quote(ak, quote, nonce=b"q-nonce", expected_pcrs=quote.pcrs)
    assert result.bank == "sha1" and sorted(result.pcrs) == [0, 16]
    with pytest.raises(VerificationError) as ei:
        check_ak(blob, nonce=NONCE, allow_sha1=False)  # the documented SHA-1 refusal
    assert ei.value.reason == Reason.WEAK_KEY


def _flip(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 1]) + data[offset + 1:]


def test_verifier_rejects_tampered_pcp_evidence(evidence: tuple[AkBlob, Quote]) -> None:
    blob, quote = evidence

    def rejected(fn: Any, *args: Any, **kw: Any) -> Reason:
        with pytest.raises((VerificationError, TpmError)) as ei:
            fn(*args, **kw)
        return getattr(ei.value, "reason", Reason.MALFORMED)

    # The creation evidence.
    assert rejected(check_ak, blob, nonce=b"another nonce") == Reason.NONCE_MISMATCH
    assert rejected(check_ak, blob, nonce=hashlib.sha1(NONCE).digest()) == Reason.NONCE_MISMATCH
    rejected(check_ak, replace(blob, attest=_flip(blob.attest, len(blob.attest) - 1)))
    rejected(check_ak, replace(blob, signature=_flip(blob.signature, len(blob.signature) - 1)))
    cd = TPMS_CREATION_DATA.from_bytes(blob.creation_data)
    rejected(check_ak, replace(blob, creation_data=replace(cd, outside_info=bytes(20)).to_bytes()),
             nonce=NONCE)
    other = replace(blob.public_area, unique=_flip(blob.public_area.unique, 7))  # type: ignore[arg-type]
    rejected(check_ak, replace(blob, public=tpm2b(other.to_bytes())))
    # The quote.
    assert rejected(verify_quote, blob, quote, nonce=b"x-nonce") == Reason.NONCE_MISMATCH
    assert rejected(verify_quote, blob, replace(quote, signature=_flip(quote.signature, 20)),
                    nonce=b"q-nonce") == Reason.BAD_SIGNATURE
    assert rejected(verify_quote, blob, replace(quote, attest=_flip(quote.attest, 40)),
                    nonce=b"q-nonce") == Reason.BAD_SIGNATURE
    bad_pcrs = {"sha1": {**quote.pcrs["sha1"], 16: _flip(quote.pcrs["sha1"][16], 0)}}
    rejected(verify_quote, blob, replace(quote, pcrs=bad_pcrs), nonce=b"q-nonce")
    # A quote is tied to its AK: another PCP key's blob does not verify it.
    assert rejected(verify_quote, REAL_AK_PUBLIC, quote, nonce=b"q-nonce") == Reason.BAD_SIGNATURE


def test_pcp1_blob_round_trip(pcp: Any) -> None:
    with pcp("standard") as tpm:
        blob = tpm.provision_ak(key_name="acme-user-ak", nonce=NONCE)
    data = blob.to_bytes()
    assert data[:4] == b"PCP1" and b"acme-user-ak" in data
    for again in (AkBlob.from_bytes(data), AkBlob.from_json(blob.to_json()), AkBlob.load(data),
                  AkBlob.load(blob.to_json())):
        assert again == blob and again.to_bytes() == data
        assert again.format == "PCP1" and again.scope == "user" and again.key_name == "acme-user-ak"
        assert again.private == b"" and again.parent == 0
        assert again.ak_public_der == blob.ak_public_der and again.name == blob.name
    with pytest.raises(TpmError) as ei:
        AkBlob.from_bytes(data[:-1])
    assert ei.value.code == ErrorCode.BAD_BLOB
    with pytest.raises(TpmError):
        AkBlob.from_bytes(b"PCP3" + data[4:])


def test_idbinding_only_on_the_creating_handle(pcp: Any) -> None:
    with pcp("admin") as tpm:
        blob = tpm.provision_ak(key_name=KEY)
        emu = emulator(tpm)
        prov = emu.open_storage_provider()
        key = emu.open_key(prov, KEY)
        try:
            with pytest.raises(NCryptError) as ei:
                emu.get_property(key, NCRYPT_PCP_TPM12_IDBINDING_PROPERTY)
            assert ei.value.hresult == api.NTE_NOT_FOUND
            with pytest.raises(NCryptError) as ei:
                emu.set_property(key, NCRYPT_SECURITY_DESCR_PROPERTY, b"junk", DACL_SECURITY_INFORMATION)
            assert ei.value.hresult == api.NTE_INVALID_PARAMETER
        finally:
            emu.free_object(key)
            emu.free_object(prov)
        assert blob.key_name == KEY


def test_parse_idbinding_is_strict_up_to_the_signature() -> None:
    good = REAL_IDBINDING
    parts = P.parse_idbinding(good)
    assert parts.public == REAL_AK_PUBLIC and parts.trailing == b""
    assert parts.signature == REAL_CREATE_SIGNATURE
    # Bytes after the TPMT_SIGNATURE are accepted and kept apart, never part of the signature.
    extra = P.parse_idbinding(good + b"\0\x01trailer")
    assert extra[:4] == parts[:4] and extra.trailing == b"\0\x01trailer"
    for bad in (good[:-1], good[:100], b""):
        with pytest.raises(TpmError) as ei:
            P.parse_idbinding(bad)
        assert ei.value.code == ErrorCode.BAD_RESPONSE
    # A creation attestation of another object is refused.
    other = tpm2b(replace(TPMT_PUBLIC.from_bytes(REAL_AK_PUBLIC[2:]), object_attributes=0x00050072
                          ).to_bytes())
    with pytest.raises(TpmError):
        P.parse_idbinding(other + good[len(REAL_AK_PUBLIC):])


@pytest.mark.parametrize(("hresult", "lookup", "code"), [
    (E_ACCESSDENIED, False, ErrorCode.REQUIRES_ELEVATION),
    (api.NTE_PERM, False, ErrorCode.REQUIRES_ELEVATION),
    (NTE_DEVICE_NOT_READY, False, ErrorCode.REQUIRES_ELEVATION),
    (TPM_E_COMMAND_BLOCKED, False, ErrorCode.REQUIRES_ELEVATION),
    (api.NTE_BAD_KEYSET, True, ErrorCode.KEY_NOT_FOUND),
    (api.NTE_NOT_FOUND, True, ErrorCode.KEY_NOT_FOUND),
    (api.NTE_BAD_KEYSET, False, ErrorCode.TPM_ERROR),
    (api.NTE_EXISTS, False, ErrorCode.KEY_EXISTS),
    (0x8028018B, False, ErrorCode.KEY_NOT_FOUND),  # TPM_RC_HANDLE (handle 1) through TBS
    (0x8009002D, False, ErrorCode.TPM_ERROR),
])
def test_ncrypt_error_mapping(hresult: int, lookup: bool, code: ErrorCode) -> None:
    err = P.ncrypt_error(NCryptError("NCryptX", hresult), "doing it", lookup=lookup)
    assert err.code == code and err.hresult == hresult and err.command == "NCryptX"
    if hresult == 0x8028018B:
        assert err.tpm_rc == 0x18B


@pytest.mark.skipif(not WINERROR_H.exists(), reason="mingw-w64-common is not installed")
def test_hresults_match_winerror_h() -> None:
    text = WINERROR_H.read_text(errors="replace")
    defined = {m.group(1): int(m.group(2), 16) for m in re.finditer(
        r"#define\s+(\w+)\s+_HRESULT_TYPEDEF_\(\s*(0x[0-9A-Fa-f]+)L?\s*\)", text)}
    ours = {name: value for name, value in [*vars(P).items(), *vars(api).items()]
            if re.fullmatch(r"(NTE|E|TPM_E)_[A-Z_]+", name) and isinstance(value, int)}
    ours.update(E_ACCESSDENIED=E_ACCESSDENIED, NTE_DEVICE_NOT_READY=NTE_DEVICE_NOT_READY,
                NTE_INTERNAL_ERROR=0x8009002D)
    assert len(ours) >= 10
    for name, value in ours.items():
        assert defined.get(name) == value, f"{name} = 0x{value:08x}, winerror.h: {defined.get(name)}"


# -----------------------------------------------------------------------------------------------
# Evidence recorded on real Windows (a GCP Shielded VM) by go-attestation, Apache-2.0:
# github.com/google/go-attestation attest/testdata/windows_gcp_shielded_vm.json — the AK's
# IDBINDING parts and a quote (scheme NULL, nonce empty) over the 24 SHA-1 PCRs.
# -----------------------------------------------------------------------------------------------

REAL_AK_PUBLIC = tpm2b(base64.b64decode(
    "AAEACwAFBHIAIJ3/y/NsODrmmfuYaNxty4nXFTiEvigDkiwSQVi/rSKuABAAFAAECAAAAAAAAQDGp8kViXRjbtQS"
    "hAo1UlsWVsnLJXYCnnsgbdCRN6KDBJPLtv5+vCqAS9Yk2I9t92UsPY1CJoVOAX85/WrNv6PnE1feQ0F9/VEyxYHF"
    "A2RAuKkWjNBgGGOYskKKI/2L+R+A1s5mNBmkpjyx6WDm2xGyBbQQP28oVdpBcLbohihowYvUwGnLh7g0sRN51S1K"
    "Drh1rP4sfKHFEn9r0aGlhrsOEbEAwQtB6XfLm1IBLQLVciRS5/HjM3EiH3doqZy2FpcE6G7nGKxAwk2H8MnEL7dO"
    "sdhXBBH1obLSUB7DYKnMhFaJuf2uAB0gPCjFt+Elou+g7MlMoJ38RPIG7HE1uQ2b"))
REAL_CREATE_DATA = base64.b64decode(
    "AAAAAAAg47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFUBAAsAIgALE74YF3O3QIzm9WkS7PEgSTqNLPwh"
    "zCsCz8IGGhBTvSsAIgALhnEUd3MQr47yE795W7oTqJErIscsuOaZC4CaoEMp+JAAAA==")
REAL_CREATE_ATTEST = base64.b64decode(
    "/1RDR4AaACIAC61Cfn/Igh90x8aWRkH5+gU3chItS5SmzDo/z8zdVbWtAAAAAAAAAJyC5z5NueQxBjbaAUHkNW35"
    "ZuA1ACIAC0zpsVH3UInXTBXavp1SDP+vvK/V1DvgqtLi2I1UcX4uACADNgYgV1PHcDwJirgW+Zzx2Hi4RVCXRuwq"
    "YXG8Ncj5dA==")
REAL_CREATE_SIGNATURE = base64.b64decode(
    "ABQABAEAXvzxtf81ORJufzKz6Xa7OD8+o9BmTR4pPwgv/K6rzW4JQlEG23bxyOn2OPKdwOcqouAEe2tAZlKaqAhp"
    "winOjIlAJy+XDF6t4KW/9WySswfYEIXlA1ftX8oIjij3hE25R0ARCK+peXUI5Fm/fzJKj/ldjGHOV4RwDJ03HsV7"
    "bF+tGPumTPN9vzf/Ccb6nUfvLqOOHVx0A9LvLON9d3imsHLxNgk634PEfw22RjXSC8O4zuqPXiMoTGY6qhEL3x0g"
    "CkrdzGKz4q72jyVYSXkbkPRlbyyVjiT94r7MSWC7G8RbNqE2KmWdCh6fZ/lo0ZADjypOthEwZUP9NmZ7omcDKA==")
REAL_IDBINDING = (REAL_AK_PUBLIC + tpm2b(REAL_CREATE_DATA) + tpm2b(REAL_CREATE_ATTEST)
                  + REAL_CREATE_SIGNATURE)
REAL_QUOTE = base64.b64decode(
    "/1RDR4AYACIAC61Cfn/Igh90x8aWRkH5+gU3chItS5SmzDo/z8zdVbWtAAAAAAAAAJyDEz5NueQxBjbaAUHkNW35"
    "ZuA1AAAAAQAEA////wAUphDye8aHzpBiQyh9gycGA2559uE=")
REAL_QUOTE_SIGNATURE = base64.b64decode(
    "ABQABAEAkcDC54zyAEZkCOfLiKrZouPp7fvLHIBxIPY4yNR2tgG76Swp4M2PxU9JzWA/hcGyebceehMQYwOr2ID3"
    "Fk8FSKg0PQDLXwltQuBcWwcl7T9YXDwwgZpZJl8zoV0/fs4WMZH3dmCQb0+fPwlI6n9W4+niX4TEhwWN+TYVHM7C"
    "hnrTwxl2cHw727sjl+iVIXSXSt6s6CxqaO3FPYuhTJrNQQe9215lIX/lEcogP5miki5Yx+Lk6c+s96p4J3lU24yq"
    "97F/GUJbVVeVHjasaNw2ABkj0qzIM+1wVupRdvQTJHIzpdW59QpgW4YWJpNjvTHZIYRVyahb6ZhtL5WgoTSroQ==")
_FF, _00 = "//////////////////////////8=", "AAAAAAAAAAAAAAAAAAAAAAAAAAA="
REAL_SHA1_PCRS = {i: base64.b64decode(v) for i, v in enumerate([
    "UcMj3gwMaU9GAc3QK+tY/xNin3Q=", _00, _00, _00, "DKS0pHhL9O7Zw1Vquh2sVYWllRo=",
    "KwIil9Tx4BAcjJhr4inI3QNQUU0=", _00, "hZpYdyZrXJCWE0aAkaczgKU4Z4Y=", _00, _00, _00,
    "67mN92YTKA8g3DgiEUOp5yc5lIY=", "dfPha27wtFUoLtj7vfzD2pq9JB0=",
    "OD3nn73eYpYgXir+RIAODAU/yC8=", "J1pon51fgkSkuZn6vmAMWBa+VRE=", _00, _00,
    _FF, _FF, _FF, _FF, _FF, _FF, _00])}


def test_emulator_template_matches_a_real_pcp_identity_key() -> None:
    real = TPMT_PUBLIC.from_bytes(REAL_AK_PUBLIC[2:])
    assert replace(real, unique=b"") == PCP_AK_TEMPLATE


def test_verifier_accepts_real_windows_pcp_evidence() -> None:
    public, creation, attest, signature, _ = P.parse_idbinding(REAL_IDBINDING)
    blob = AkBlob("PCP1", public, b"", creation, attest, signature, "ak-0123456789")
    ak = check_ak(AkBlob.from_bytes(blob.to_bytes()))
    result = verify_quote(ak, (REAL_QUOTE, REAL_QUOTE_SIGNATURE, {"sha1": REAL_SHA1_PCRS}),
                          nonce=b"", allow_empty_nonce=True)
    assert result.bank == "sha1" and sorted(result.pcrs) == list(range(24))
    with pytest.raises(VerificationError):
        verify_quote(ak, (REAL_QUOTE, REAL_QUOTE_SIGNATURE,
                          {"sha1": {**REAL_SHA1_PCRS, 7: _flip(REAL_SHA1_PCRS[7], 0)}}), nonce=b"",
                     allow_empty_nonce=True)


def test_threads_share_one_pcp_tpm(pcp: Any) -> None:
    """Quotes from several threads through one PCP Tpm do not interleave their key loads."""
    import concurrent.futures

    from tpm2_attest.tpm2.structures import TPMS_ATTEST

    with pcp("standard") as tpm:
        blob = tpm.provision_ak(key_name="acme-threads-ak")

        def work(i: int) -> bytes:
            q = tpm.quote(blob, pcrs=[i % 8], qualifying_data=bytes([i]) * 8)
            return TPMS_ATTEST.from_bytes(q.attest).extra_data

        with concurrent.futures.ThreadPoolExecutor(4) as ex:
            results = list(ex.map(work, range(8), timeout=120))
    assert results == [bytes([i]) * 8 for i in range(8)]


# -----------------------------------------------------------------------------------------------
# Where PCP and the references differ from what we first assumed (issue: align with
# go-attestation and PCPTool). Each behaviour is taught to the emulator, then tested here.
# -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("elevated", "code"), [
    (None, ErrorCode.REQUIRES_ELEVATION),  # unknown caller: as before, blame the privilege
    (False, ErrorCode.REQUIRES_ELEVATION),
    (True, ErrorCode.TPM_ERROR),  # an elevated caller: a device error with its own hint
])
def test_device_not_ready_is_decided_by_the_caller(elevated: bool | None, code: ErrorCode) -> None:
    err = P.ncrypt_error(NCryptError("NCryptGetProperty", NTE_DEVICE_NOT_READY), "activating",
                         elevated=elevated)
    assert err.code == code and err.hresult == NTE_DEVICE_NOT_READY
    assert (err.hint == P.DEVICE_NOT_READY_HINT) is bool(elevated)
    # The other privilege HRESULTs stay REQUIRES_ELEVATION whoever asks.
    assert P.ncrypt_error(NCryptError("X", api.NTE_PERM), "x", elevated=True).code \
        == ErrorCode.REQUIRES_ELEVATION


@pytest.mark.parametrize("privilege", ["admin", "system"])
def test_elevated_caller_with_a_device_not_ready(pcp: Any, privilege: Privilege) -> None:
    """go-attestation #251: NTE_DEVICE_NOT_READY from an elevated shell (Infineon)."""
    with pcp(privilege, activation_device_not_ready=True) as tpm:
        assert emulator(tpm).process_token().elevated
        blob = tpm.provision_ak()
        challenge, _ = make_credential(tpm.ek("rsa").public, blob.name)
        with pytest.raises(TpmError) as ei:
            tpm.activate_credential(blob, challenge)
        err = ei.value
        assert (err.code, err.hresult) == (ErrorCode.TPM_ERROR, NTE_DEVICE_NOT_READY)
        assert err.hint == P.DEVICE_NOT_READY_HINT and "elevated" in str(err)


def test_elevation_comes_from_the_token_not_the_hresult(pcp: Any) -> None:
    """The same NTE_DEVICE_NOT_READY is REQUIRES_ELEVATION when the token says not elevated."""
    limited = api.ProcessToken(False, "S-1-5-21-1-2-3-1001")
    with pcp("admin", activation_device_not_ready=True, token=limited) as tpm:
        blob = tpm.provision_ak()
        challenge, _ = make_credential(tpm.ek("rsa").public, blob.name)
        with raises(ErrorCode.REQUIRES_ELEVATION, NTE_DEVICE_NOT_READY):
            tpm.activate_credential(blob, challenge)
    system = api.ProcessToken(False, api.SID_LOCAL_SYSTEM)  # SYSTEM counts as elevated
    assert system.elevated and system.is_system


def test_standard_users_are_refused_at_the_idactivation_get(pcp: Any) -> None:
    """go-attestation #177: the SET is accepted, the GET (which activates) is refused."""
    with pcp("standard") as tpm:
        blob = tpm.provision_ak(key_name="acme-act-ak")
        challenge, _ = make_credential(tpm.ek("rsa").public, blob.name)
        emu = emulator(tpm)
        prov = emu.open_storage_provider()
        key = emu.open_key(prov, "acme-act-ak")
        try:
            emu.set_property(key, api.NCRYPT_PCP_TPM12_IDACTIVATION_PROPERTY,
                             challenge.credential_blob + challenge.encrypted_secret)
            with pytest.raises(NCryptError) as ei:
                emu.get_property(key, api.NCRYPT_PCP_TPM12_IDACTIVATION_PROPERTY)
            assert (ei.value.function, ei.value.hresult) == ("NCryptGetProperty", NTE_DEVICE_NOT_READY)
        finally:
            emu.free_object(key)
            emu.free_object(prov)


def test_idactivation_size_is_queried_first(pcp: Any) -> None:
    with pcp("admin") as tpm:
        blob = tpm.provision_ak()
        challenge, secret = make_credential(tpm.ek("rsa").public, blob.name)
        assert tpm.activate_credential(blob, challenge) == secret
        reads = [size for name, size in emulator(tpm).property_reads
                 if name == api.NCRYPT_PCP_TPM12_IDACTIVATION_PROPERTY]
        assert reads == [None]  # a NULL-buffer size query, not a fixed 256-byte buffer
    # A PCP that refused the size query would fail the activation: the report checks it.
    with pcp("admin", idactivation_size_query=False) as tpm:
        blob = tpm.provision_ak()
        challenge, _ = make_credential(tpm.ek("rsa").public, blob.name)
        with raises(ErrorCode.TPM_ERROR, api.NTE_INVALID_PARAMETER):
            tpm.activate_credential(blob, challenge)


def test_idbinding_trailing_bytes_are_accepted_and_recorded(pcp: Any) -> None:
    with pcp("standard", idbinding_trailing=b"\x00\x00pad") as tpm:
        blob = tpm.provision_ak(nonce=NONCE)
        backend = tpm.backend
        assert isinstance(backend, P.PcpBackend)
        assert backend.last_idbinding is not None
        assert backend.last_idbinding.trailing == b"\x00\x00pad"
        assert backend.observed["idbinding_trailing_bytes"] == 5
        assert tpm.info().extra["pcp_observed"] == {"idbinding_trailing_bytes": 5}
        quote = tpm.quote(blob, qualifying_data=b"q")
    # The blob carries only the exact signature; the verifier checks every signed byte.
    assert blob.signature == backend.last_idbinding.signature
    assert not blob.signature.endswith(b"pad")
    ak = check_ak(AkBlob.from_bytes(blob.to_bytes()), nonce=NONCE)
    verify_quote(ak, quote, nonce=b"q")
    with pytest.raises(VerificationError):
        check_ak(replace(blob, attest=_flip(blob.attest, len(blob.attest) - 1)), nonce=NONCE)


@pytest.mark.parametrize("magic", ["ECK3", "ECS3"])
def test_ecc_ek_from_pcp_ecc_ekpub_with_its_certificate(pcp: Any, swtpm: Any, magic: str) -> None:
    """PCP_ECC_EKPUB of the P-384 EK (ECDH or ECDSA magic): the EK for any account, and for an
    administrator the certificate whose key it is (swtpm certifies the P-384 EK)."""
    with Tpm.open(swtpm.tcti) as raw:
        expected = raw.ek("ecc384")
    assert expected.certificate is not None
    with pcp("standard", ecc_ekpub=magic) as tpm:
        ek = tpm.ek("ecc384")
        assert ek.name == expected.name and ek.certificate is None
        assert tpm.backend.observed["ecc_ekpub"] == f"{magic} secp384r1"  # type: ignore[attr-defined]
        with raises(ErrorCode.UNSUPPORTED):  # the P-256 EK is neither in PCP_ECC_EKPUB nor certified
            tpm.ek("ecc")
    with pcp("admin", ecc_ekpub=magic) as tpm:
        ek = tpm.ek("ecc384")
        assert ek.name == expected.name and ek.certificate == expected.certificate


def test_ecc_ek_without_pcp_ecc_ekpub_falls_back_to_the_certificate(pcp: Any, swtpm: Any) -> None:
    """Older Windows without PCP_ECC_EKPUB (NTE_NOT_SUPPORTED): the certificate path, as before."""
    with Tpm.open(swtpm.tcti) as raw:
        expected = raw.ek("ecc384")
    with pcp("standard", ecc_ekpub=None) as tpm:
        with raises(ErrorCode.UNSUPPORTED):
            tpm.ek("ecc")
        assert tpm.backend.observed["ecc_ekpub"].startswith("NTE_NOT_SUPPORTED")  # type: ignore[attr-defined]
    with pcp("admin", ecc_ekpub=None) as tpm:
        assert tpm.ek("ecc384").certificate == expected.certificate


def test_ecc_public_blob_codec() -> None:
    """BCRYPT_ECCPUBLIC_BLOB: header (magic, cbKey), X, Y; hostile blobs are BAD_RESPONSE."""
    from cryptography.hazmat.primitives.asymmetric import ec

    from tpm2_attest.backends import ncrypt_api as N

    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    blob = N.build_ecc_public_blob(key)
    assert blob[:8] == b"ECK1" + (32).to_bytes(4, "little") and len(blob) == 8 + 64
    assert N.split_ecc_public_blob(blob + b"xy") == (key, b"xy")
    assert N.build_ecc_public_blob(key, ecdsa=True)[:4] == b"ECS1"
    for bad in (blob[:7], blob[:-1], b"ECK2" + blob[4:], b"ECK1" + (48).to_bytes(4, "little") + blob[8:],
                b"RSA1" + blob[4:], blob[:8] + b"\x00" * 64, b"ECD1" + blob[4:]):
        with raises(ErrorCode.BAD_RESPONSE):
            N.split_ecc_public_blob(bad)


def test_ekpub_longer_than_its_header_is_read_the_same_way(pcp: Any, swtpm: Any) -> None:
    with Tpm.open(swtpm.tcti) as raw:
        expected = raw.ek("rsa").name
    with pcp("standard", ekpub_trailing=b"\x01\x02\x03") as tpm:
        assert tpm.ek("rsa").name == expected
        assert tpm.backend.observed == {"ekpub_trailing_bytes": 3}  # type: ignore[attr-defined]


def test_ek_certificate_from_windows_ek_store(pcp: Any, swtpm: Any) -> None:
    """A firmware TPM: nothing in NV, the certificate Windows downloaded in its EK store."""
    with Tpm.open(swtpm.tcti) as raw:
        rsa_cert = raw.ek("rsa").certificate
        ecc_ek = raw.ek("ecc384")
    assert rsa_cert is not None and ecc_ek.certificate is not None
    with pcp("admin", ek_nv_certificates=False) as tpm:
        assert tpm.ek("rsa").certificate is None  # nothing anywhere: the manufacturer URL is next
    with pcp("admin", ek_nv_certificates=False, ek_cert_store=[ecc_ek.certificate, rsa_cert]) as tpm:
        assert tpm.ek("rsa").certificate == rsa_cert
        assert tpm.ek("ecc384").certificate == ecc_ek.certificate
        # (each ek() also reads the chain store, PCP_INTERMEDIATE_CA_EKCERT: test_ek_chain.py)
        reads = [n for n, _ in emulator(tpm).property_reads if n != "PCP_INTERMEDIATE_CA_EKCERT"]
        # NV first, then Windows' EK store (RSA-specific property before the generic one);
        # the first property with the EK's certificate ends the search.
        assert reads[:5] == ["PCP_EKPUB", "PCP_RSA_EKNVCERT", "PCP_EKNVCERT", "PCP_RSA_EKCERT",
                             "PCP_ECC_EKPUB"]
        assert P.RSA_EK_CERTIFICATE_PROPERTIES == ("PCP_RSA_EKNVCERT", "PCP_EKNVCERT",
                                                   "PCP_RSA_EKCERT", "PCP_EKCERT")
    with pcp("standard", ek_cert_store=[rsa_cert]) as tpm:
        assert tpm.ek("rsa").certificate is None  # standard users: NTE_PERM on every store


def test_event_log_through_the_emulated_tbs(pcp: Any) -> None:
    from tpm2_attest.transport import tbs

    with pcp("standard") as tpm, raises(ErrorCode.TPM_NOT_FOUND, tbs.TBS_E_INTERNAL_ERROR):
        tpm.event_log()
    with pcp("standard", event_log=b"log bytes") as tpm:
        assert tpm.event_log() == b"log bytes"
    with pcp("admin", event_log_result=tbs.TBS_E_IOERROR) as tpm, \
            raises(ErrorCode.TRANSPORT, tbs.TBS_E_IOERROR):
        tpm.event_log()
