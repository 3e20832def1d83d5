"""Our device side and verifier against tpm2-pytss (tpm2-tss's ESAPI), an independent stack.

* pytss makes AKs (ECDSA P-256 and RSASSA-2048) and quotes: ``verify_quote`` accepts them,
  tampered ones fail with the right Reason;
* pytss reads what we write: a TPW1 AK blob unmarshals with its unmarshallers, agrees with ours
  field by field, and loads under the SRK that pytss re-creates; its quote passes ``check_ak``
  + ``verify_quote``;
* our quotes unmarshal in pytss with no trailing byte, and its signature check agrees with ours;
* credentials cross both ways: ``make_credential`` activates through ESAPI with a
  PolicySecret(ENDORSEMENT) session, and pytss's MakeCredential (the TPM command and its
  software one) activates with ``Tpm.activate_credential``.

Every test runs against swtpm. The ``esys`` fixture closes its ESAPI context after each test
and flushes every object and session it tracked (swtpm has 3 transient object slots); a test
that loads an object it does not track, and leaves it loaded, fails at teardown. TPM2_PCR_Read returns at most 8 digests a call,
so ``pcr_values`` reads until the whole selection is covered.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Iterator
from contextlib import suppress
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature

from tpm2_attest.embedded import EmbeddedSwtpm
from tpm2_attest.errors import TpmError
from tpm2_attest.evidence import SRK_RECREATE, AkBlob, CredentialChallenge
from tpm2_attest.tpm import Tpm
from tpm2_attest.tpm2.constants import TPM_ALG
from tpm2_attest.tpm2.templates import EK_RSA_TEMPLATE, SRK_ECC_TEMPLATE, matches_template
from tpm2_attest.verify import (
    AkPublic,
    Reason,
    VerificationError,
    check_ak,
    make_credential,
    verify_quote,
)

if sys.platform != "linux":
    pytest.skip("tpm2-pytss is a Linux-only dev dependency", allow_module_level=True)

from tpm2_pytss import (
    ESAPI,
    ESYS_TR,
    TPM2_ALG,
    TPM2_CAP,
    TPM2_GENERATED,
    TPM2_HC,
    TPM2_RC,
    TPM2_SE,
    TPM2_ST,
    TPM2B_DIGEST,
    TPM2B_ENCRYPTED_SECRET,
    TPM2B_ID_OBJECT,
    TPM2B_NAME,
    TPM2B_PRIVATE,
    TPM2B_PUBLIC,
    TPML_PCR_SELECTION,
    TPMS_ATTEST,
    TPMS_CREATION_DATA,
    TPMT_PUBLIC,
    TPMT_SIGNATURE,
    TPMT_SYM_DEF,
    TCTILdr,
    TSS2_Exception,
)
from tpm2_pytss.utils import NVReadEK, create_ek_template, credential_to_tools
from tpm2_pytss.utils import make_credential as pytss_make_credential

PCRS = [0, 1, 2, 3, 4, 5, 6, 7, 16]
AK_ATTRS = "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|sign|noda"
SRK_ATTRS = "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda|restricted|decrypt"
AK_SPECS = {"ecc": "ecc256:ecdsa-sha256:null", "rsa": "rsa2048:rsassa-sha256:null"}
SIG_ALGS = {"ecc": TPM2_ALG.ECDSA, "rsa": TPM2_ALG.RSASSA}


class Esys:
    """An ESAPI context on a swtpm that flushes every transient object and session it made."""

    def __init__(self, tcti: str) -> None:
        self.tcti = TCTILdr.parse(tcti)  # "swtpm:host=127.0.0.1,port=N", as tpm2-tools takes it
        self.ctx = ESAPI(self.tcti)
        self._live: list[ESYS_TR] = []

    def track(self, handle: ESYS_TR) -> ESYS_TR:
        self._live.append(handle)
        return handle

    def flush(self, handle: ESYS_TR) -> None:
        self._live.remove(handle)
        self.ctx.flush_context(handle)

    def transient_handles(self) -> list[int]:
        _more, data = self.ctx.get_capability(TPM2_CAP.HANDLES, TPM2_HC.TRANSIENT_FIRST, 16)
        return [int(h) for h in data.data.handles]

    def flush_all(self) -> None:
        for handle in reversed(self._live):
            with suppress(TSS2_Exception):
                self.ctx.flush_context(handle)
        self._live.clear()

    def close(self) -> None:
        try:
            self.flush_all()
        finally:
            self.ctx.close()
            self.tcti.close()


@pytest.fixture
def esys(swtpm: EmbeddedSwtpm) -> Iterator[Esys]:
    """An ``Esys`` for one test; fails it if a transient object is still loaded once every tracked
    one is flushed (an untracked load, left behind)."""
    e = Esys(swtpm.tcti)
    try:
        before = set(e.transient_handles())
        yield e
        e.flush_all()
        leaked = set(e.transient_handles()) - before
    finally:
        e.close()
    assert not leaked, f"transient objects left loaded: {sorted(hex(h) for h in leaked)}"


@pytest.fixture(scope="module")
def tpm(swtpm: EmbeddedSwtpm) -> Iterator[Tpm]:
    with Tpm.open(swtpm.tcti) as t:
        yield t


def flip(data: bytes, pos: int) -> bytes:
    b = bytearray(data)
    b[pos] ^= 1
    return bytes(b)


def selection_indices(sel: TPML_PCR_SELECTION) -> dict[int, list[int]]:
    """{hash alg: ascending PCR indices} of a pytss TPML_PCR_SELECTION."""
    out: dict[int, list[int]] = {}
    for k in range(sel.count):
        s = sel.pcrSelections[k]
        bitmap = bytes(s.pcrSelect)[: s.sizeofSelect]
        out[int(s.hash)] = [8 * j + i for j, byte in enumerate(bitmap) for i in range(8) if byte >> i & 1]
    return out


def pcr_values(ctx: ESAPI, pcrs: list[int]) -> dict[int, bytes]:
    """sha256 PCR values read by pytss; PCR_Read answers at most 8 digests a call."""
    out: dict[int, bytes] = {}
    while missing := [i for i in pcrs if i not in out]:
        _counter, got, digests = ctx.pcr_read(TPML_PCR_SELECTION.parse("sha256:" + ",".join(map(str, missing))))
        idx = selection_indices(got).get(int(TPM2_ALG.SHA256), [])
        assert idx and len(idx) == len(digests), "PCR_Read made no progress"
        out.update({i: bytes(digests[k]) for k, i in enumerate(idx)})
    return dict(sorted(out.items()))


def srk_template() -> TPMT_PUBLIC:
    """The TCG ECC P-256 SRK template, written with pytss's own template parser."""
    srk = TPMT_PUBLIC.parse("ecc256:aes128cfb", objectAttributes=SRK_ATTRS)
    srk.unique.ecc.x = bytes(32)
    srk.unique.ecc.y = bytes(32)
    return srk


def pytss_quote(ctx: ESAPI, key: ESYS_TR, nonce: bytes) -> tuple[bytes, bytes, dict[int, bytes]]:
    """ESAPI TPM2_Quote of PCRS (sha256) under the key's own scheme, then the PCR values."""
    spec = "sha256:" + ",".join(map(str, PCRS))
    attest, signature = ctx.quote(key, TPML_PCR_SELECTION.parse(spec), nonce)
    return bytes(attest), signature.marshal(), pcr_values(ctx, PCRS)


# -- 1. pytss's AKs and quotes, our verifier ---------------------------------------------------------


@pytest.fixture(scope="module", params=["ecc", "rsa"])
def pytss_evidence(request: pytest.FixtureRequest, swtpm: EmbeddedSwtpm) -> dict[str, Any]:
    """A pytss-made AK (under a pytss-made primary) and its quote over a fresh nonce."""
    kind = str(request.param)
    nonce = os.urandom(32)
    e = Esys(swtpm.tcti)
    try:
        e.ctx.pcr_event(ESYS_TR.PCR16, b"pytss interop")  # every bank, hashed by the TPM
        primary = e.track(e.ctx.create_primary(None, TPM2B_PUBLIC(publicArea=srk_template()))[0])
        template = TPM2B_PUBLIC(publicArea=TPMT_PUBLIC.parse(AK_SPECS[kind], objectAttributes=AK_ATTRS))
        private, public, *_ = e.ctx.create(primary, None, template)
        ak = e.track(e.ctx.load(primary, private, public))
        e.flush(primary)
        attest, signature, values = pytss_quote(e.ctx, ak, nonce)
        e.flush(ak)
    finally:
        e.close()
    return {"kind": kind, "public": public.marshal(), "name": bytes(public.get_name()), "nonce": nonce,
            "attest": attest, "signature": signature, "pcrs": values}


def test_pytss_quote_verifies(pytss_evidence: dict[str, Any], tpm: Tpm) -> None:
    ev = pytss_evidence
    ak = AkPublic.from_public(ev["public"])
    assert ak.name == ev["name"]  # our Name of pytss's TPM2B_PUBLIC is pytss's Name
    assert ak.scheme.scheme == {"ecc": TPM_ALG.ECDSA, "rsa": TPM_ALG.RSASSA}[ev["kind"]]
    assert list(ev["pcrs"]) == PCRS
    assert ev["pcrs"] == tpm.pcr.read(PCRS)  # pytss and we read the same PCRs
    res = verify_quote(ak, (ev["attest"], ev["signature"], {"sha256": ev["pcrs"]}), nonce=ev["nonce"])
    assert dict(res.pcrs) == ev["pcrs"] and res.extra_data == ev["nonce"] and res.bank == "sha256"
    assert res.pcr_digest == hashlib.sha256(b"".join(ev["pcrs"].values())).digest()


def test_pytss_quote_tampered(pytss_evidence: dict[str, Any]) -> None:
    ev = pytss_evidence
    ak = AkPublic.from_public(ev["public"])
    attest, sig, vals = ev["attest"], ev["signature"], ev["pcrs"]

    def reason(quote: tuple[bytes, bytes, dict[str, dict[int, bytes]]], nonce: bytes = ev["nonce"]) -> Reason:
        with pytest.raises(VerificationError) as exc:
            verify_quote(ak, quote, nonce=nonce)
        return exc.value.reason

    assert reason((flip(attest, len(attest) - 1), sig, {"sha256": vals})) == Reason.BAD_SIGNATURE
    assert reason((flip(attest, 8), sig, {"sha256": vals})) == Reason.BAD_SIGNATURE
    assert reason((attest, sig, {"sha256": vals | {16: flip(vals[16], 0)}})) == Reason.PCR_DIGEST_MISMATCH
    assert reason((attest, sig, {"sha256": vals}), os.urandom(32)) == Reason.NONCE_MISMATCH


# -- 2. our TPW1 blobs in pytss --------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["ecc", "rsa"])
def our_ak(request: pytest.FixtureRequest, tpm: Tpm) -> tuple[AkBlob, bytes]:
    """A TPW1 blob from ``provision_ak`` (as the verifier receives it) and its enrollment nonce."""
    enroll = os.urandom(32)
    blob = tpm.provision_ak(nonce=enroll, algorithm=str(request.param))
    return AkBlob.from_bytes(blob.to_bytes()), enroll


def test_pytss_unmarshals_our_ak_blob(our_ak: tuple[AkBlob, bytes]) -> None:
    blob, enroll = our_ak
    pub, n = TPM2B_PUBLIC.unmarshal(blob.public)
    assert n == len(blob.public) and pub.marshal() == blob.public
    assert bytes(pub.get_name()) == blob.name
    area = pub.publicArea
    assert int(area.type) == blob.public_area.type and int(area.nameAlg) == blob.public_area.name_alg
    assert int(area.objectAttributes) == blob.public_area.object_attributes
    assert int(area.parameters.asymDetail.scheme.scheme) == blob.public_area.parameters.scheme.scheme  # type: ignore[union-attr]

    sized = len(blob.private).to_bytes(2, "big") + blob.private
    priv, n = TPM2B_PRIVATE.unmarshal(sized)
    assert n == len(sized) and bytes(priv) == blob.private

    cd, n = TPMS_CREATION_DATA.unmarshal(blob.creation_data)
    assert n == len(blob.creation_data) and cd.marshal() == blob.creation_data
    assert bytes(cd.outsideInfo) == enroll == blob.creation_data_struct.outside_info
    assert bytes(cd.parentName) == blob.creation_data_struct.parent_name

    att, n = TPMS_ATTEST.unmarshal(blob.attest)
    assert n == len(blob.attest)
    assert att.magic == TPM2_GENERATED.VALUE == blob.attest_struct.magic
    assert att.type == TPM2_ST.ATTEST_CREATION == blob.attest_struct.type
    assert bytes(att.extraData) == enroll == blob.attest_struct.extra_data
    assert bytes(att.qualifiedSigner) == blob.attest_struct.qualified_signer
    assert bytes(att.attested.creation.objectName) == blob.name
    assert bytes(att.attested.creation.creationHash) == hashlib.sha256(blob.creation_data).digest()

    sig, n = TPMT_SIGNATURE.unmarshal(blob.signature)
    assert n == len(blob.signature) and sig.marshal() == blob.signature
    assert int(sig.sigAlg) == blob.signature_struct.sig_alg
    assert int(sig.signature.any.hashAlg) == blob.signature_struct.hash_alg == TPM_ALG.SHA256
    sig.verify_signature(pub, blob.attest)  # pytss's check of the creation certification
    with pytest.raises(InvalidSignature):
        sig.verify_signature(pub, flip(blob.attest, len(blob.attest) - 1))


def test_pytss_loads_and_quotes_with_our_ak_blob(our_ak: tuple[AkBlob, bytes], esys: Esys) -> None:
    blob, enroll = our_ak
    assert blob.parent == SRK_RECREATE, "the session swtpm has no persistent SRK: the blob says re-create it"
    srk = srk_template()
    assert srk.marshal() == SRK_ECC_TEMPLATE.to_bytes()  # pytss's SRK template is ours, byte for byte
    ctx = esys.ctx
    srk_handle, srk_public, *_ = ctx.create_primary(None, TPM2B_PUBLIC(publicArea=srk), ESYS_TR.OWNER)
    esys.track(srk_handle)
    cd, _ = TPMS_CREATION_DATA.unmarshal(blob.creation_data)
    assert bytes(cd.parentName) == bytes(srk_public.get_name())  # the blob names the SRK pytss made

    public, _ = TPM2B_PUBLIC.unmarshal(blob.public)
    private, _ = TPM2B_PRIVATE.unmarshal(len(blob.private).to_bytes(2, "big") + blob.private)
    ak_handle = esys.track(ctx.load(srk_handle, private, public))
    esys.flush(srk_handle)
    nonce = os.urandom(32)
    attest, signature, values = pytss_quote(ctx, ak_handle, nonce)
    esys.flush(ak_handle)

    ak = check_ak(blob.to_bytes(), nonce=enroll)
    res = verify_quote(ak, (attest, signature, {"sha256": values}), nonce=nonce)
    assert dict(res.pcrs) == values and res.extra_data == nonce
    with pytest.raises(VerificationError) as exc:  # the blob's creation proof is bound to its nonce
        check_ak(blob.to_bytes(), nonce=os.urandom(32))
    assert exc.value.reason == Reason.NONCE_MISMATCH


# -- 3. our quotes in pytss ----------------------------------------------------------------------------------


def test_our_quote_parses_and_verifies_in_pytss(our_ak: tuple[AkBlob, bytes], tpm: Tpm) -> None:
    blob, _ = our_ak
    nonce = os.urandom(32)
    q = tpm.quote(blob, pcrs=PCRS, qualifying_data=nonce)
    att, n = TPMS_ATTEST.unmarshal(q.attest)
    assert n == len(q.attest) and att.marshal() == q.attest
    sig, n = TPMT_SIGNATURE.unmarshal(q.signature)
    assert n == len(q.signature) and sig.marshal() == q.signature

    assert att.magic == TPM2_GENERATED.VALUE and att.type == TPM2_ST.ATTEST_QUOTE
    assert bytes(att.extraData) == nonce
    assert bytes(att.qualifiedSigner) == q.attest_struct.qualified_signer
    assert selection_indices(att.attested.quote.pcrSelect) == {int(TPM2_ALG.SHA256): PCRS}
    values = q.pcrs["sha256"]
    assert bytes(att.attested.quote.pcrDigest) == hashlib.sha256(b"".join(values[i] for i in PCRS)).digest()

    kind = "ecc" if blob.public_area.type == TPM_ALG.ECC else "rsa"
    assert sig.sigAlg == SIG_ALGS[kind] and sig.signature.any.hashAlg == TPM2_ALG.SHA256
    public, _ = TPM2B_PUBLIC.unmarshal(blob.public)
    sig.verify_signature(public, q.attest)  # pytss's check (its `cryptography` helpers)
    verify_quote(check_ak(blob), q, nonce=nonce)  # ... agrees with ours
    bad = flip(q.attest, len(q.attest) - 1)
    with pytest.raises(InvalidSignature):
        sig.verify_signature(public, bad)
    with pytest.raises(VerificationError) as exc:
        verify_quote(check_ak(blob), (bad, q.signature, q.pcrs), nonce=nonce)
    assert exc.value.reason == Reason.BAD_SIGNATURE


# -- 4. credentials both ways ----------------------------------------------------------------------------


def _policy_session(esys: Esys) -> ESYS_TR:
    """A policy session satisfying the EK's PolicySecret(TPM_RH_ENDORSEMENT) policy."""
    session = esys.track(esys.ctx.start_auth_session(
        ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.POLICY, TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL), TPM2_ALG.SHA256))
    esys.ctx.policy_secret(ESYS_TR.ENDORSEMENT, session)
    return session


def test_our_credential_activates_in_pytss(tpm: Tpm, esys: Esys) -> None:
    ek = tpm.ek("rsa")
    assert matches_template(ek.public_area, EK_RSA_TEMPLATE)
    ctx = esys.ctx
    # pytss's AK, under a pytss primary flushed once the AK is loaded (3 transient slots).
    primary = esys.track(ctx.create_primary(None, TPM2B_PUBLIC(publicArea=srk_template()))[0])
    template = TPM2B_PUBLIC(publicArea=TPMT_PUBLIC.parse(AK_SPECS["ecc"], objectAttributes=AK_ATTRS))
    private, public, *_ = ctx.create(primary, None, template)
    ak_handle = esys.track(ctx.load(primary, private, public))
    esys.flush(primary)
    # pytss's EK, from its own EK template logic (TCG EK profile, NV template/nonce indices).
    _cert, ek_template = create_ek_template("EK-RSA2048", NVReadEK(ctx))
    ek_handle, ek_public, *_ = ctx.create_primary(None, ek_template, ESYS_TR.ENDORSEMENT)
    esys.track(ek_handle)
    assert bytes(ek_public.get_name()) == ek.name and ek_public.marshal() == ek.public

    ak_name = AkPublic.from_public(public.marshal()).name
    assert ak_name == bytes(public.get_name())

    def activate(challenge: CredentialChallenge) -> bytes:
        blob, n = TPM2B_ID_OBJECT.unmarshal(challenge.credential_blob)
        assert n == len(challenge.credential_blob)
        secret, n = TPM2B_ENCRYPTED_SECRET.unmarshal(challenge.encrypted_secret)
        assert n == len(challenge.encrypted_secret)
        session = _policy_session(esys)
        try:
            return bytes(ctx.activate_credential(ak_handle, ek_handle, blob, secret,
                                                 session1=ESYS_TR.PASSWORD, session2=session))
        finally:
            esys.flush(session)

    challenge, secret = make_credential(ek.public, ak_name)
    assert activate(challenge) == secret
    # Made for another Name, the same challenge shape does not activate for this AK.
    other, _ = make_credential(ek.public, ak_name[:2] + hashlib.sha256(ak_name).digest())
    with pytest.raises(TSS2_Exception) as exc:
        activate(other)
    assert exc.value.error == TPM2_RC.INTEGRITY
    esys.flush(ek_handle)
    esys.flush(ak_handle)


def test_pytss_credential_activates_with_us(our_ak: tuple[AkBlob, bytes], tpm: Tpm, esys: Esys) -> None:
    blob, _ = our_ak
    ek = tpm.ek("rsa")
    ek_public, _ = TPM2B_PUBLIC.unmarshal(ek.public)
    name = TPM2B_NAME(blob.name)
    ctx = esys.ctx

    # The TPM's TPM2_MakeCredential through ESAPI, with only the EK public loaded (LoadExternal).
    secret1 = os.urandom(32)
    ek_ext = esys.track(ctx.load_external(ek_public, hierarchy=ESYS_TR.NULL))
    blob1, enc1 = ctx.make_credential(ek_ext, TPM2B_DIGEST(secret1), name)
    esys.flush(ek_ext)  # our activation needs the transient slots
    challenge = CredentialChallenge(blob1.marshal(), enc1.marshal())
    assert tpm.activate_credential(blob, challenge) == secret1

    # pytss's software MakeCredential, handed over as a tpm2-tools credential file.
    secret2 = os.urandom(32)
    blob2, enc2 = pytss_make_credential(ek_public, secret2, name)
    assert tpm.activate_credential(blob, credential_to_tools(blob2, enc2)) == secret2
    # ... bound to the Name: made for another one, it does not activate with this AK.
    wrong = TPM2B_NAME(blob.name[:2] + hashlib.sha256(blob.name).digest())
    blob3, enc3 = pytss_make_credential(ek_public, secret2, wrong)
    with pytest.raises(TpmError) as exc:
        tpm.activate_credential(blob, CredentialChallenge(blob3.marshal(), enc3.marshal()))
    assert exc.value.rc_name == "TPM_RC_INTEGRITY"
