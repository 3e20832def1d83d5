"""Verifier inputs as other tools write them: keys, AKs and tpm2_quote's file set.

* Public keys where an EK or AK public is expected: a TPM2B_PUBLIC or TPMT_PUBLIC
  (``tpm2_createek -u``, ``tpm2_createak -u``, ``tpm2_readpublic -f tss``), a PEM or DER
  SubjectPublicKeyInfo (``-f pem``/``-f der``, OpenSSL), or an X.509 certificate (PEM/DER; its
  key is used, e.g. an EK certificate).
* AKs: our AK blobs (binary or JSON; their creation evidence is checked by ``check_ak``), a
  public area (its attributes and scheme are checked), or a bare key (see
  :meth:`AkPublic.from_key`).
* A quote as ``tpm2_quote -m MSG -s SIG -o PCRS`` writes it: the TPMS_ATTEST bytes, the
  signature (``tss``: a TPMT_SIGNATURE, or ``plain``), the PCR values in any format of
  :mod:`tpm2_attest.tpm2.tools_formats` (a ``values`` file is read with the quote's own signed
  selection).

Malformed input raises ``VerificationError(MALFORMED or UNSUPPORTED_FORMAT)`` saying what was
expected, in the verifier's words.
"""

from __future__ import annotations

from typing import Final, Literal

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ..evidence import AK_FORMATS
from ..tpm2.constants import HASH_SIZES, TPM_ALG, TPM_ST
from ..tpm2.crypto import TPM2_TOOLS_CREDENTIAL_MAGIC
from ..tpm2.keys import PublicKey
from ..tpm2.marshal import ParseError
from ..tpm2.structures import TPMS_QUOTE_INFO, TPMT_PUBLIC, TPMT_SIGNATURE
from ..tpm2.tools_formats import PcrBanks, read_pcr_file, signature_from_plain
from .ak import AkPublic, check_ak, parse_attest
from .errors import Reason, VerificationError

__all__ = ["AkKind", "load_ak", "load_public", "quote_from_files", "read_pcrs_file"]

AkKind = Literal["blob", "public", "key"]
"""What an AK input was: an AK blob (with creation evidence), a public area, a bare key."""

_PUBLIC_FORMS: Final = ("a TPM public area (TPM2B_PUBLIC or TPMT_PUBLIC, as tpm2_createak -u or "
                        "tpm2_readpublic -f tss write it) nor a PEM or DER public key or certificate")


def _fail(reason: Reason, detail: str) -> VerificationError:
    return VerificationError(reason, detail)


def _key_from_pem_or_der(data: bytes, what: str) -> PublicKey | None:
    """The key of a PEM/DER SubjectPublicKeyInfo or certificate; None when ``data`` is neither
    PEM nor DER-looking; MALFORMED when it is PEM/DER of something else."""
    stripped = data.lstrip()
    if stripped.startswith(b"-----BEGIN"):
        loaders = (serialization.load_pem_public_key,
                   lambda d: x509.load_pem_x509_certificate(d).public_key())
        form = "PEM"
    elif data[:1] == b"\x30":
        loaders = (serialization.load_der_public_key,
                   lambda d: x509.load_der_x509_certificate(d).public_key())
        form = "DER"
    else:
        return None
    for load in loaders:
        try:
            key = load(stripped if form == "PEM" else data)
        except (ValueError, TypeError):
            continue
        if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
            raise _fail(Reason.UNSUPPORTED_FORMAT, f"{what}: a {type(key).__name__}; TPM keys are RSA or EC")
        return key
    raise _fail(Reason.MALFORMED, f"{what}: {form} data that is neither a public key nor a certificate")


def load_public(data: bytes, what: str = "public key") -> bytes | PublicKey:
    """A public key input: the bytes of a TPM public area (unchanged, for ``check_ek`` or
    ``AkPublic.from_public``), or the `cryptography` key of a PEM/DER key or certificate.
    MALFORMED when it is none of these."""
    data = bytes(data)
    key = _key_from_pem_or_der(data, what)
    if key is not None:
        return key
    area = data[2:] if len(data) >= 2 and int.from_bytes(data[:2], "big") == len(data) - 2 else data
    try:
        TPMT_PUBLIC.from_bytes(area)
    except ParseError as exc:
        raise _fail(Reason.MALFORMED, f"{what}: neither {_PUBLIC_FORMS} ({exc})") from None
    return data


def _scheme_of(signature: bytes | None, hash_alg: int) -> tuple[int | None, int]:
    """The scheme a bare key signed with: a TPMT_SIGNATURE's own header, else the default."""
    if signature is not None and len(signature) >= 4:
        try:
            sig = TPMT_SIGNATURE.from_bytes(signature)
        except ParseError:
            pass
        else:
            return sig.sig_alg, sig.hash_alg
    return None, hash_alg


def load_ak(data: bytes, what: str = "AK", *, signature: bytes | None = None,
            hash_alg: int = TPM_ALG.SHA256, nonce: bytes | None = None,
            allow_sha1: bool = True) -> tuple[AkPublic, AkKind]:
    """An AK from any input form, and which form it was (see the module docstring).

    An AK blob is checked with ``check_ak`` (``nonce`` then binds its creation); a public area
    with ``AkPublic.from_public``; a bare key gets the scheme of ``signature`` (a
    TPMT_SIGNATURE it made) or RSASSA/ECDSA with ``hash_alg``. A ``nonce`` needs a blob."""
    data = bytes(data)
    if data.lstrip()[:1] == b"{" or data[:4].decode("ascii", "replace") in AK_FORMATS:
        return check_ak(data, nonce=nonce, allow_sha1=allow_sha1), "blob"
    if data[:4] == TPM2_TOOLS_CREDENTIAL_MAGIC.to_bytes(4, "big"):  # tpm2-tools' file magic
        raise _fail(Reason.MALFORMED,
                    f"{what}: a tpm2-tools context or credential file (magic 0xBADCC0DE), not a key: "
                    "give the AK's public part (tpm2_createak -u ak.pub, or -f pem) or its AK blob")
    public = load_public(data, what)
    if nonce is not None:
        raise _fail(Reason.UNSUPPORTED_FORMAT,
                    f"{what}: a public key carries no creation evidence to bind a nonce to; "
                    "only an AK blob does")
    try:
        if isinstance(public, bytes):
            return AkPublic.from_public(public, allow_sha1=allow_sha1), "public"
        scheme, h = _scheme_of(signature, hash_alg)
        return AkPublic.from_key(public, scheme=scheme, hash_alg=h, allow_sha1=allow_sha1), "key"
    except VerificationError as exc:  # name the input: "--ak ek.pub: objectAttributes ..."
        raise _fail(exc.reason, f"{what}: {exc.detail}") from None


def _coordinate_size(ak: AkPublic) -> int:
    key = ak.key
    if isinstance(key, rsa.RSAPublicKey):
        return (key.key_size + 7) // 8
    return (key.curve.key_size + 7) // 8


MESSAGE: Final = "quote message (tpm2_quote -m)"
SIGNATURE: Final = "signature (tpm2_quote -s)"
PCRS_FILE: Final = "PCR file (tpm2_quote -o, tpm2_pcrread -o)"
"""How errors name the files of a quote unless the caller names them (e.g. by its options)."""


def _quoted_selection(attest: bytes, what: str = MESSAGE) -> list[tuple[int, list[int]]]:
    """The PCR selection a quote's TPMS_ATTEST carries (not yet verified: used only to read
    a values file, whose digests ``verify_quote`` then checks against the signed digest)."""
    try:
        info = parse_attest(attest, TPM_ST.ATTEST_QUOTE).attested
    except VerificationError as exc:
        raise _fail(exc.reason, f"{what}: {exc.detail}") from None
    assert isinstance(info, TPMS_QUOTE_INFO)
    return [(s.hash, [i for i in range(len(s.pcr_select) * 8) if s.pcr_select[i // 8] >> (i % 8) & 1])
            for s in info.pcr_select.selections if s.hash in HASH_SIZES]


def read_pcrs_file(data: bytes, attest: bytes | None = None, *, what: str = PCRS_FILE,
                   message_what: str = MESSAGE) -> PcrBanks:
    """The PCR values of a tpm2-tools PCR file (``tpm2_quote -o``, ``tpm2_pcrread -o``; any
    ``-F`` format). A ``values`` file holds no selection: it is read with the one of the quote
    ``attest``. MALFORMED when the file is none of these; ``what``/``message_what`` name the
    two inputs in errors."""
    selection = _quoted_selection(bytes(attest), message_what) if attest is not None else None
    try:
        return read_pcr_file(bytes(data), selection)
    except ParseError as exc:
        raise _fail(Reason.MALFORMED, f"{what}: {exc}") from None


def quote_from_files(ak: AkPublic, message: bytes, signature: bytes, pcrs: bytes, *,
                     names: tuple[str, str, str] = (MESSAGE, SIGNATURE, PCRS_FILE),
                     ) -> tuple[bytes, bytes, PcrBanks]:
    """``(attest, TPMT_SIGNATURE, {bank: {index: value}})`` for ``verify_quote`` from the files
    of ``tpm2_quote -m MSG -s SIG -o PCRS`` (any ``-f`` and ``-F`` format). A plain signature
    is read under the AK's own scheme; a ``values`` PCR file with the selection the quote
    signed. Nothing here is trusted yet: ``verify_quote`` checks all of it. ``names`` names
    the message, signature and PCR inputs in errors (e.g. by the options they came from)."""
    message_what, signature_what, pcrs_what = names
    attest, sig = bytes(message), bytes(signature)
    try:
        TPMT_SIGNATURE.from_bytes(sig)
    except ParseError:
        try:
            sig = signature_from_plain(sig, ak.scheme.scheme, ak.scheme.hash_alg,
                                       size=_coordinate_size(ak))
        except ParseError as exc:
            raise _fail(Reason.MALFORMED, f"{signature_what}: neither a TPMT_SIGNATURE (tpm2_quote -f tss) "
                        f"nor a plain signature for this AK (-f plain): {exc}") from None
    return attest, sig, read_pcrs_file(pcrs, attest, what=pcrs_what, message_what=message_what)
