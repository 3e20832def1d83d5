"""The /v1 wire format as pydantic models: JSON objects, binary fields as standard base64.

Requests forbid unknown fields (a typo is an error, not a silently ignored option). The quote
travels in the evidence layer's JSON form (``Quote.to_dict()``) and is parsed by
``Quote.from_dict`` only after its challenge is spent, so a malformed quote still uses up the
nonce and is recorded like any other refused attestation.
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    EncodedBytes,
    EncoderProtocol,
    Field,
    PlainSerializer,
    StrictInt,
    WithJsonSchema,
    field_validator,
)
from pydantic_core import PydanticCustomError

from ..evidence import EK_CHAIN_MAX_BYTES, EK_CHAIN_MAX_CERTS


class StrictBase64(EncoderProtocol):
    """Standard base64 that refuses characters outside the alphabet (pydantic's own
    ``Base64Bytes`` skips them, so two different strings could carry the same evidence)."""

    @classmethod
    def decode(cls, data: bytes) -> bytes:
        try:
            return base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise PydanticCustomError("base64_decode", "invalid base64: {error}", {"error": str(exc)}) from None

    @classmethod
    def encode(cls, value: bytes) -> bytes:
        return base64.b64encode(value)

    @classmethod
    def get_json_format(cls) -> Literal["base64"]:
        return "base64"


B64 = Annotated[bytes, EncodedBytes(encoder=StrictBase64)]
"""A request field: base64 text in, bytes after validation."""
B64Out = Annotated[
    bytes,
    PlainSerializer(lambda v: base64.b64encode(v).decode("ascii"), return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "format": "base64"}),
]
"""A response field: built from bytes, sent as base64 text."""
Id = Annotated[str, Field(min_length=1, max_length=64)]


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Response(BaseModel):
    pass


class EnrollBeginRequest(Request):
    ek_public: B64 = Field(description="The EK's TPM2B_PUBLIC")
    ek_certificate: B64 | None = Field(default=None, description="The EK certificate (DER, as read from NV)")
    ek_chain: list[B64] = Field(
        default_factory=list, max_length=EK_CHAIN_MAX_CERTS,
        description="Intermediate CA certificates the TPM keeps for its EK certificate (DER each, "
                    "EkInfo.chain): untrusted, used only to build a path to the service's roots")

    @field_validator("ek_chain")
    @classmethod
    def _chain_size(cls, chain: list[bytes]) -> list[bytes]:
        size = sum(map(len, chain))
        if size > EK_CHAIN_MAX_BYTES:
            raise ValueError(f"{size} bytes of certificates; at most {EK_CHAIN_MAX_BYTES}")
        return chain


class EnrollBeginResponse(Response):
    enrollment_id: str
    nonce: B64Out = Field(description="Pass to provision_ak(nonce=...): it is bound into the AK's creation attestation")
    expires_at: datetime


class EnrollAkRequest(Request):
    enrollment_id: Id
    ak_blob: B64 = Field(description="AkBlob.to_bytes(): TPW1, PCP1 or PCP2")


class EnrollAkCertificateRequest(Request):
    enrollment_id: Id
    ak_blob: B64 = Field(description="Tpm.certified_ak(nonce=...).blob.to_bytes() (TPP1)")
    ak_certificate: B64 = Field(description="The AK certificate (DER), from Tpm.certified_ak")


class CredentialChallengeModel(Response):
    """``CredentialChallenge.to_json()``: TPM2B_ID_OBJECT and TPM2B_ENCRYPTED_SECRET."""

    version: Literal[1] = 1
    credential_blob: B64Out
    encrypted_secret: B64Out


class EnrollAkResponse(Response):
    challenge: CredentialChallengeModel


class EnrollFinishRequest(Request):
    enrollment_id: Id
    secret: B64 = Field(description="What activate_credential returned")


class EnrollFinishResponse(Response):
    device_id: str
    ak_name: str = Field(description="hex")
    ak_format: str
    ek_name: str = Field(description="hex")
    ek_certificate_verified: bool
    replaced_devices: list[str] = Field(description="Devices of the same EK revoked by this enrollment")
    enrolled_by: str = Field(default="credential_activation",
                             description="credential_activation, or ak_certificate")


class ChallengeRequest(Request):
    device_id: Id


class ChallengeResponse(Response):
    challenge_id: str
    nonce: B64Out = Field(description="Quote with qualifying_data=nonce")
    expires_at: datetime
    ima_offset: int = Field(default=0, description="Send the IMA list from this byte offset: the "
                            "entries before it are verified already (0: the whole list)")
    ima_pcrs: list[int] = Field(default_factory=list, description="Quote these PCRs too: those the "
                                "verified entries extended (10, and any of IMA policy pcr= rules)")


class QuoteModel(Request):
    """``Quote.to_dict()``: base64 TPMS_ATTEST and TPMT_SIGNATURE, PCR values by bank and index."""

    version: StrictInt = Field(description="1 (a JSON integer, as Quote.from_json requires)")
    attest: str
    signature: str
    pcrs: dict[str, dict[str, str]]


class AttestRequest(Request):
    challenge_id: Id
    quote: QuoteModel
    event_log: B64 | None = Field(default=None, description="Raw TCG event log, replayed against the quote")
    ima_log: B64 | None = Field(default=None, description="The binary IMA measurement list from "
                                "ima_offset on, read after quoting (the quote must cover PCR 10)")
    ima_offset: int = Field(default=0, ge=0, description="The challenge's ima_offset the list starts at")


class AttestResponse(Response):
    ok: Literal[True] = True
    attestation_id: int
    device_id: str
    bank: str
    pcrs: dict[str, str] = Field(description="{index: hex} of the quoted bank")
    clock: int
    reset_count: int
    restart_count: int
    safe: bool
    firmware_version: int
    event_log: dict[str, Any] | None = Field(default=None, description="EventLogResult summary")
    ima: dict[str, Any] | None = Field(default=None, description="ImaResult summary, with the "
                                       "incremental state the next attestation continues")
    policies: list[dict[str, Any]] = Field(default_factory=list,
                                           description="[{name, version}] of the policies that judged it")
    status: str = Field(description="The device's status now: trusted")
    fresh_until: datetime = Field(description="The device stays trusted until then without another pass")


class ErrorDetail(Response):
    model_config = ConfigDict(extra="allow")

    code: str = Field(description="A ServiceCode, or the verifier's Reason")
    reason: str | None = Field(description="The verifier's Reason for refused evidence, else null")
    detail: str
    rules: list[str] | None = Field(default=None, description="POLICY_VIOLATION: the rule ids that failed")


class ErrorResponse(Response):
    error: ErrorDetail


class HealthResponse(Response):
    ok: Literal[True] = True
    version: str
