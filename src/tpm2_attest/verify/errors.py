"""Verifier failures: every check that does not pass raises ``VerificationError(reason)``."""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    """Why a piece of evidence was refused (stable names; documented in docs/verifier.md)."""

    # Parsing / format
    MALFORMED = "MALFORMED"
    """Bytes that do not parse as the expected structure (truncated, oversized, trailing)."""
    UNSUPPORTED_FORMAT = "UNSUPPORTED_FORMAT"
    """A blob magic, version or algorithm the verifier does not know."""
    # AK key properties
    AK_ATTRIBUTES = "AK_ATTRIBUTES"
    """The AK is not a fixedTPM/fixedParent/sensitiveDataOrigin restricted signing key."""
    WEAK_KEY = "WEAK_KEY"
    """RSA shorter than 2048 bits, a non-NIST curve, or a refused hash."""
    SCHEME_MISMATCH = "SCHEME_MISMATCH"
    """Signature scheme or hash differs from the key's own scheme."""
    # Attestation structure
    BAD_MAGIC = "BAD_MAGIC"
    """TPMS_ATTEST.magic is not TPM_GENERATED_VALUE."""
    WRONG_TYPE = "WRONG_TYPE"
    """TPMS_ATTEST.type is not the one expected (ATTEST_QUOTE / ATTEST_CREATION)."""
    BAD_SIGNATURE = "BAD_SIGNATURE"
    """The signature does not verify under the key."""
    NONCE_MISMATCH = "NONCE_MISMATCH"
    """extraData differs from the verifier's nonce."""
    EMPTY_NONCE = "EMPTY_NONCE"
    """No nonce was supplied and empty nonces were not explicitly allowed."""
    NAME_MISMATCH = "NAME_MISMATCH"
    """The attested object Name differs from the Name of the presented public area."""
    CREATION_HASH_MISMATCH = "CREATION_HASH_MISMATCH"
    """creationHash differs from the hash of the presented creation data."""
    # Quotes
    PCR_SELECTION = "PCR_SELECTION"
    """Supplied PCRs and the quote's selection differ (a PCR or bank missing or extra, a bank
    selected twice, no PCR selected)."""
    PCR_DIGEST_MISMATCH = "PCR_DIGEST_MISMATCH"
    """The supplied PCR values do not hash to the quoted pcrDigest."""
    PCR_VALUE_MISMATCH = "PCR_VALUE_MISMATCH"
    """A quoted PCR differs from the expected value."""
    # EK certificates
    EK_CERT_CHAIN = "EK_CERT_CHAIN"
    """The EK certificate does not chain to a given root."""
    EK_CERT_MALFORMED = "EK_CERT_MALFORMED"
    """The EK certificate cannot be parsed even leniently."""
    EK_KEY_MISMATCH = "EK_KEY_MISMATCH"
    """The EK certificate's key differs from the EK public area presented."""
    EK_CERT_EXPIRED = "EK_CERT_EXPIRED"
    """The EK certificate (or a CA in its chain) is outside its validity period."""
    EK_CERT_USAGE = "EK_CERT_USAGE"
    """The certificate is not an EK certificate: a CA, an extendedKeyUsage without
    tcg-kp-EKCertificate, a keyUsage that does not fit an EK, or an unknown critical extension."""
    EK_ATTRIBUTES = "EK_ATTRIBUTES"
    """The EK public area is not a restricted decryption key with a usable symmetric definition."""
    # AK certificates
    AK_CERT_MALFORMED = "AK_CERT_MALFORMED"
    """The AK certificate cannot be parsed even leniently."""
    AK_CERT_CHAIN = "AK_CERT_CHAIN"
    """The AK certificate does not chain to a given root."""
    AK_CERT_EXPIRED = "AK_CERT_EXPIRED"
    """The AK certificate (or a CA in its chain) is outside its validity period."""
    AK_CERT_USAGE = "AK_CERT_USAGE"
    """The certificate is not an AK certificate (a CA, no digitalSignature keyUsage, another
    extendedKeyUsage, an unknown critical extension)."""
    AK_KEY_MISMATCH = "AK_KEY_MISMATCH"
    """The AK certificate's key differs from the AK public area presented."""
    # Credential activation
    CREDENTIAL_MISMATCH = "CREDENTIAL_MISMATCH"
    """The secret returned by the device differs from the challenge's secret."""
    # Event logs
    EVENT_LOG_MALFORMED = "EVENT_LOG_MALFORMED"
    """The event log does not parse."""
    EVENT_LOG_REPLAY_MISMATCH = "EVENT_LOG_REPLAY_MISMATCH"
    """A PCR replayed from the event log differs from the quoted value."""
    EVENT_LOG_BANK_MISSING = "EVENT_LOG_BANK_MISSING"
    """The event log has no digests for the quoted bank."""
    SECURE_BOOT = "SECURE_BOOT"
    """The Secure Boot events of PCR 7 are inconsistent (duplicate/out-of-order variables)."""
    # IMA runtime measurement lists
    IMA_LOG_MALFORMED = "IMA_LOG_MALFORMED"
    """The IMA measurement list does not parse."""
    IMA_TEMPLATE_HASH_MISMATCH = "IMA_TEMPLATE_HASH_MISMATCH"
    """An IMA entry's fields do not hash to its listed template hash."""
    IMA_TEMPLATE_UNSUPPORTED = "IMA_TEMPLATE_UNSUPPORTED"
    """An IMA entry's template hash cannot be recomputed (unknown template in an ASCII list)."""
    IMA_PCR_NOT_QUOTED = "IMA_PCR_NOT_QUOTED"
    """The quote does not cover PCR 10 (or another PCR the IMA list extends)."""
    IMA_REPLAY_MISMATCH = "IMA_REPLAY_MISMATCH"
    """No prefix of the IMA list replays to the quoted PCR value(s)."""
    IMA_BOOT_AGGREGATE_MISMATCH = "IMA_BOOT_AGGREGATE_MISMATCH"
    """The boot_aggregate entry differs from the hash of the quoted PCRs 0-7 (0-9)."""
    IMA_STATE_MISMATCH = "IMA_STATE_MISMATCH"
    """The saved incremental IMA state does not fit this quote or list (bank, reboot, count)."""


class VerificationError(Exception):
    """Evidence failed a check; ``reason`` is a :class:`Reason`, ``detail`` a human sentence."""

    def __init__(self, reason: Reason, detail: str = "") -> None:
        self.reason = Reason(reason)
        self.detail = detail
        super().__init__(f"{self.reason.value}: {detail}" if detail else self.reason.value)
