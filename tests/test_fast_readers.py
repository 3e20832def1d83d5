"""The fast readers (AK public areas, creation attestations, creation data, signatures) accept
exactly what the generic parsers accept, with the same values: checked on real blobs from swtpm
and on every truncation and thousands of byte mutations of them."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest

from tpm2_attest import Tpm, commands
from tpm2_attest.evidence import AkBlob
from tpm2_attest.tpm2.constants import TPM_ALG
from tpm2_attest.tpm2.keys import area_fields, public_fields, storage_area_fields, storage_fields
from tpm2_attest.tpm2.marshal import ParseError, Reader, Writer
from tpm2_attest.tpm2.structures import (
    TPML_DIGEST,
    TPML_PCR_SELECTION,
    TPMS_ATTEST,
    TPMS_CREATION_DATA,
    TPMS_CREATION_INFO,
    TPMS_PCR_SELECTION,
    TPMS_QUOTE_INFO,
    TPMT_PUBLIC,
    TPMT_SIGNATURE,
    creation_attest_fields,
    creation_data_outside_info,
    quote_attest_digest,
    signature_is_exact,
)


@pytest.fixture(scope="module")
def blobs(swtpm: Any) -> list[AkBlob]:
    with Tpm.open(swtpm.tcti) as tpm:
        return [tpm.provision_ak(algorithm=alg, nonce=b"n" * 32) for alg in ("ecc", "rsa")]


@pytest.fixture(scope="module")
def quote_attests(swtpm: Any, blobs: list[AkBlob]) -> list[bytes]:
    with Tpm.open(swtpm.tcti) as tpm:
        return [tpm.quote(b, pcrs=[0, 1, 2, 3, 4, 5, 6, 7, 16], qualifying_data=b"q" * 32).attest for b in blobs]


def _pcr_read_output() -> bytes:
    """PCR_Read outputs as a TPM marshals them: counter, TPML_PCR_SELECTION, TPML_DIGEST."""
    w = Writer().u32(41)
    TPML_PCR_SELECTION((TPMS_PCR_SELECTION.from_indices(TPM_ALG.SHA256, [0, 1, 2, 3, 16]),)).marshal(w)
    TPML_DIGEST(tuple(bytes([i]) * 32 for i in range(5))).marshal(w)
    return w.getvalue()


def _pcr_read_generic(data: bytes) -> Any:
    r = Reader(data)
    out = (r.u32(), TPML_PCR_SELECTION.unmarshal(r), TPML_DIGEST.unmarshal(r).digests)
    r.done()
    return out


def _pcr_read_fast(data: bytes) -> Any:
    res = commands._pcr_read_fast(data, 0)
    return None if res is None else (res.update_counter, res.selection, res.digests)


def _pcr_read_bank(data: bytes) -> Any:
    res = commands._pcr_read_bank(data, 0, TPM_ALG.SHA256, 32)
    return None if res is None else (res[0], tuple(res[1]), tuple(res[2]))


def _pcr_read_bank_generic(data: bytes) -> Any:
    counter, sel, digests = _pcr_read_generic(data)
    return counter, tuple(i for s in sel.selections for i in s.indices()), tuple(digests)


def _quote_generic(data: bytes) -> Any:
    att = TPMS_ATTEST.from_bytes(data)
    return att.attested.pcr_digest if isinstance(att.attested, TPMS_QUOTE_INFO) else "another type"


def test_fast_device_readers_agree_with_the_generic_parser(quote_attests: list[bytes]) -> None:
    """The device side's quote and PCR_Read readers: same acceptance, same values."""
    rng = random.Random("device")
    for fast, generic, samples in ((quote_attest_digest, _quote_generic, quote_attests),
                                   (_pcr_read_fast, _pcr_read_generic, [_pcr_read_output()]),
                                   (_pcr_read_bank, _pcr_read_bank_generic, [_pcr_read_output()])):
        accepted = 0
        for data in samples:
            assert fast(data) is not None
            for v in [data, *_variants(data, rng)]:
                got = fast(v)
                if got is None:
                    continue
                accepted += 1
                assert got == _generic(generic, v), v.hex()
        assert accepted > 50


def _generic(parse: Callable[[bytes], Any], data: bytes) -> Any:
    try:
        return parse(data)
    except ParseError:
        return None


def _attest(data: bytes) -> Any:
    att = TPMS_ATTEST.from_bytes(data)
    if not isinstance(att.attested, TPMS_CREATION_INFO):
        return "another type"
    return att.magic, att.qualified_signer, att.extra_data, att.attested.object_name, att.attested.creation_hash


CASES: list[tuple[str, Callable[[bytes], Any], Callable[[bytes], Any]]] = [
    ("public", public_fields, lambda d: area_fields(TPMT_PUBLIC.from_bytes(d))),
    ("attest", creation_attest_fields, _attest),
    ("creation", creation_data_outside_info, lambda d: TPMS_CREATION_DATA.from_bytes(d).outside_info),
    ("signature", lambda d: signature_is_exact(d) or None, lambda d: TPMT_SIGNATURE.from_bytes(d) and True),
]


def _variants(data: bytes, rng: random.Random) -> list[bytes]:
    out = [data[:i] for i in range(len(data))] + [data + b"\0", data + b"\x01\x02"]
    for _ in range(1500):
        b = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            pos = rng.randrange(len(b))
            b[pos] = rng.choice((0, 1, 0x7F, 0x80, 0xFF, b[pos] ^ (1 << rng.randrange(8)), rng.randrange(256)))
        out.append(bytes(b))
    return out


@pytest.mark.parametrize(("part", "fast", "generic"), CASES, ids=[c[0] for c in CASES])
def test_fast_reader_agrees_with_the_generic_parser(blobs: list[AkBlob], part: str,
                                                   fast: Callable[[bytes], Any],
                                                   generic: Callable[[bytes], Any]) -> None:
    rng = random.Random(part)
    accepted = 0
    for blob in blobs:
        data = {"public": blob.public[2:], "attest": blob.attest, "creation": blob.creation_data,
                "signature": blob.signature}[part]
        assert fast(data) is not None, "the fast reader must take what TPMs send"
        for v in [data, *_variants(data, rng)]:
            got = fast(v)
            if got is None:
                continue  # the generic parser decides (and names the error)
            accepted += 1
            want = _generic(generic, v)
            assert want is not None and want != "another type", f"fast reader accepted what the parser refuses: {v.hex()}"
            if part != "signature":
                assert got == want
    assert accepted > 100


@pytest.fixture(scope="module")
def ek_publics(swtpm: Any) -> list[bytes]:
    with Tpm.open(swtpm.tcti) as tpm:
        return [tpm.ek(kind).public for kind in ("rsa", "ecc")]


def test_storage_fields_agree_with_the_generic_parser(ek_publics: list[bytes]) -> None:
    """The EK reader make_credential uses: what it accepts, the generic parser reads the same."""
    rng = random.Random("ek")
    accepted = 0
    for pub in ek_publics:
        tpmt = pub[2:]
        assert storage_fields(tpmt) is not None, "the fast reader must take the EKs TPMs have"
        for v in [tpmt, *_variants(tpmt, rng)]:
            got = storage_fields(v)
            if got is None:
                continue
            accepted += 1
            assert got == _generic(lambda d: storage_area_fields(TPMT_PUBLIC.from_bytes(d)), v), v.hex()
    assert accepted > 100


def _ek_outcome(data: bytes, need_area: bool) -> Any:
    from tpm2_attest.verify import VerificationError
    from tpm2_attest.verify.credential import _ek_parameters

    try:
        key, *params, _area = _ek_parameters(data, need_area=need_area)
    except VerificationError as exc:
        return exc.reason
    return key.public_numbers(), params


def test_ek_checks_give_the_same_verdict_on_both_paths(ek_publics: list[bytes]) -> None:
    """make_credential's one-unpack EK path and check_ek's full parse: the same key and
    parameters, or the same refusal, on the real EKs and on mutations of them."""
    rng = random.Random("ek-verdict")
    reasons = set()
    for pub in ek_publics:
        for v in [pub, *_variants(pub, rng)[::5]]:
            full = _ek_outcome(v, True)
            assert _ek_outcome(v, False) == full, v.hex()
            reasons.add(full if not isinstance(full, tuple) else "ok")
    assert {"ok", "MALFORMED", "EK_ATTRIBUTES"} <= {getattr(r, "name", r) for r in reasons}


def test_blob_read_with_fast_readers_keeps_its_views(blobs: list[AkBlob]) -> None:
    """An AkBlob read from bytes builds its public views on demand, equal to a full parse."""
    for blob in blobs:
        again = AkBlob.from_bytes(blob.to_bytes())
        assert again == blob
        assert again.public_area == TPMT_PUBLIC.from_bytes(blob.public[2:])
        assert again.attest_struct == TPMS_ATTEST.from_bytes(blob.attest)
        assert again.creation_data_struct == TPMS_CREATION_DATA.from_bytes(blob.creation_data)
        assert again.signature_struct == TPMT_SIGNATURE.from_bytes(blob.signature)


def _reason(fn: Callable[[], Any]) -> str:
    from tpm2_attest.verify import VerificationError

    try:
        fn()
    except VerificationError as exc:
        return exc.reason.value
    return "ok"


def test_check_ak_gives_the_same_verdict_on_bytes_and_on_an_akblob(blobs: list[AkBlob]) -> None:
    """check_ak reads a blob from bytes through the fast readers and an AkBlob built by hand
    through verify_creation: for every tampering both must reach the same verdict."""
    from dataclasses import replace

    from tpm2_attest.verify import check_ak

    def flip(b: bytes, i: int) -> bytes:
        return b[:i] + bytes([b[i] ^ 1]) + b[i + 1 :]

    rng = random.Random(7)
    for blob in blobs:
        variants = [blob]
        for field in ("public", "attest", "creation_data", "signature"):
            value = getattr(blob, field)
            for i in [*sorted(rng.sample(range(len(value)), 12)), 0, len(value) - 1]:
                variants.append(replace(blob, **{field: flip(value, i)}))
        for v in variants:
            for nonce in (None, b"n" * 32, b"other"):
                by_object = _reason(lambda v=v, nonce=nonce: check_ak(v, nonce=nonce))
                try:
                    data = v.to_bytes()
                    AkBlob.from_bytes(data)
                except Exception:
                    continue  # not a well-formed blob: nothing to compare
                by_bytes = _reason(lambda data=data, nonce=nonce: check_ak(data, nonce=nonce))
                assert by_bytes == by_object, (v, nonce)


def test_blob_read_by_offsets_equals_the_field_by_field_read(blobs: list[AkBlob],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """AkBlob.from_bytes' offset reader accepts only blobs the field-by-field reader accepts,
    with the same fields (on mutations and truncations of real blobs)."""
    from tpm2_attest import evidence

    rng = random.Random("blob")
    fast_taken = 0
    for blob in blobs:
        data = blob.to_bytes()
        for v in [data, *_variants(data, rng)]:
            fast = evidence._blob_parts(v)
            if fast is None:
                continue
            fast_taken += 1
            with monkeypatch.context() as m:
                m.setattr(evidence, "_blob_parts", lambda _d: None)
                slow = AkBlob.from_bytes(v)  # must not raise: the offset reader accepted it
            assert slow == fast
    assert fast_taken > 100


@pytest.mark.parametrize("bits", [1024, 2048, 3072])
@pytest.mark.parametrize("exponent", [0, 3, 17, 65537, 0xC0000001])
def test_rsa_keys_from_a_der_template_equal_rsapublicnumbers(bits: int, exponent: int) -> None:
    """rsa_public_key loads full-width odd moduli through a SubjectPublicKeyInfo template: the
    key is the one RSAPublicNumbers gives; anything else takes RSAPublicNumbers and its errors."""
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    from tpm2_attest.tpm2.keys import rsa_public_key

    n = rsa.generate_private_key(65537, bits).public_key().public_numbers().n
    e = exponent or 65537
    for modulus in (n.to_bytes(bits // 8, "big"), n.to_bytes(bits // 8 + 1, "big")):  # + leading zero
        got = rsa_public_key(modulus, exponent)
        want = rsa.RSAPublicNumbers(e, n).public_key()
        assert got.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo) == \
            want.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    even = n + 1  # RSAPublicNumbers' own rules decide: the template path is only for odd moduli
    try:
        want_even: Any = rsa.RSAPublicNumbers(e, even).public_key().public_numbers()
    except ValueError:
        want_even = ParseError
    try:
        got_even: Any = rsa_public_key(even.to_bytes(bits // 8, "big"), exponent).public_numbers()
    except ParseError:
        got_even = ParseError
    assert got_even == want_even


@pytest.mark.parametrize("top", [0x01, 0x7F, 0x80, 0xFF])
@pytest.mark.parametrize("size", [63, 64, 65])
def test_rsa_key_size_floor_is_512_bits_on_both_paths(top: int, size: int) -> None:
    """The template path decides "at least 512 bits" from the top byte: a 64-byte modulus whose
    top byte is 0x01 has 505 bits and is refused, as the integer path refuses it."""
    from tpm2_attest.tpm2.keys import rsa_public_key

    modulus = bytes([top]) + b"\x5a" * (size - 2) + b"\x01"
    bits = int.from_bytes(modulus, "big").bit_length()
    if bits < 512:
        with pytest.raises(ParseError):
            rsa_public_key(modulus, 0)
    else:
        assert rsa_public_key(modulus, 0).public_numbers().n == int.from_bytes(modulus, "big")


def test_evidence_knows_the_tpm2_tools_credential_magic() -> None:
    """evidence.py reads tpm2-tools credential files without importing tpm2.crypto (ciphers)
    until it sees one: its copy of the magic is the one tpm2.crypto writes."""
    from tpm2_attest import evidence
    from tpm2_attest.tpm2.crypto import TPM2_TOOLS_CREDENTIAL_MAGIC

    assert TPM2_TOOLS_CREDENTIAL_MAGIC.to_bytes(4, "big") == evidence._TOOLS_MAGIC
