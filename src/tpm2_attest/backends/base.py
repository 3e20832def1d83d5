"""The backend contract: what ``Tpm`` delegates to (raw TPM, Windows PCP)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import field
from typing import Literal, Protocol

from .._frozen import frozen
from ..evidence import AkBlob, CertifiedAk, CredentialChallenge, EkInfo, PublicKey, Quote
from .ek_chain import EkChain

Platform = Literal["linux", "windows", "swtpm", "mssim"]
EkKind = Literal["rsa", "ecc", "ecc384"]


@frozen(slots=False)
class TpmInfo:
    """Identity of the TPM: manufacturer, vendor strings, firmware, spec revision, banks."""

    manufacturer: str
    manufacturer_id: int
    vendor_string: str
    firmware_version: str
    spec_family: str
    spec_level: int
    spec_revision: str
    spec_year: int
    spec_day_of_year: int
    pcr_banks: list[str]
    pcr_count: int
    platform: Platform
    tcti: str
    extra: dict[str, object] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return {
            "manufacturer": self.manufacturer,
            "manufacturer_id": f"0x{self.manufacturer_id:08x}",
            "vendor_string": self.vendor_string,
            "firmware_version": self.firmware_version,
            "spec_family": self.spec_family,
            "spec_level": self.spec_level,
            "spec_revision": self.spec_revision,
            "spec_year": self.spec_year,
            "spec_day_of_year": self.spec_day_of_year,
            "pcr_banks": self.pcr_banks,
            "pcr_count": self.pcr_count,
            "platform": self.platform,
            "tcti": self.tcti,
            **self.extra,
        }


class Backend(Protocol):
    """Operations a platform backend provides; ``Tpm`` adds argument checking on top."""

    platform: Platform
    tcti: str

    def info(self) -> TpmInfo: ...
    def get_random(self, n: int) -> bytes: ...
    def pcr_banks(self) -> list[str]: ...
    def pcr_read(self, indices: Iterable[int], bank: str) -> dict[int, bytes]: ...
    def pcr_extend(self, index: int, digests: dict[str, bytes]) -> None: ...
    def read_public(self, handle: int) -> PublicKey: ...
    def ek(self, kind: EkKind) -> EkInfo: ...
    def ek_chain(self) -> EkChain: ...
    def provision_ak(self, *, key_name: str | None, scope: str, overwrite: bool,
                     nonce: bytes | None, algorithm: str | None) -> AkBlob: ...
    def certified_ak(self, kind: str, nonce: bytes | None) -> CertifiedAk: ...
    def quote(self, ak: AkBlob, *, pcrs: list[int], bank: str, qualifying_data: bytes) -> Quote: ...
    def activate_credential(self, ak: AkBlob, challenge: CredentialChallenge) -> bytes: ...
    def keep(self, ak: AkBlob) -> None: ...
    def release(self, ak: AkBlob) -> None: ...
    def event_log(self) -> bytes: ...
    def close(self) -> None: ...
