"""``Tpm``: the device-side API. Picks a transport and a backend, checks arguments, delegates."""

from __future__ import annotations

import hashlib
import os
import struct
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from types import TracebackType
from typing import TYPE_CHECKING, Final, Self

from .backends.base import Backend, EkKind, TpmInfo
from .backends.raw import RawBackend
from .commands import CommandStats, TpmCommands
from .errors import ErrorCode, TpmError
from .evidence import (
    AkBlob,
    CertifiedAk,
    CredentialChallenge,
    EkInfo,
    PublicKey,
    Quote,
    bank_alg,
    bank_name,
)
from .tpm2.constants import HASH_SIZES, TPM_CAP, TPM_CC, TPM_PT, TPM_ST
from .transport import open_transport, resolve_tcti
from .transport.tcti import FIRST_RESPONSE_TIMEOUT, NOT_A_TPM_HINT

if TYPE_CHECKING:
    from .backends.pcp_emulator import Privilege
    from .embedded import EmbeddedSwtpm
    from .transport.base import Transport

DEFAULT_QUOTE_PCRS: Final = (0, 1, 2, 3, 4, 5, 6, 7)
MAX_PCR_INDEX: Final = 23
_NETWORK_TRANSPORTS: Final = frozenset({"swtpm", "mssim"})
"""Transports whose peer may be something else than a TPM: opening them checks it answers."""
_FIRST_COMMAND: Final = struct.pack(">HIIIII", TPM_ST.NO_SESSIONS, 22, TPM_CC.GetCapability,
                                    TPM_CAP.TPM_PROPERTIES, TPM_PT.MANUFACTURER, 1)


def _check_answers(transport: Transport, limit: float) -> None:
    """Send one TPM2_GetCapability and wait at most ``limit`` seconds for a well-formed response
    (any response code will do: it answered). A silent peer fails in seconds, not after the
    per-command timeout; a peer that answers something else than a TPM response fails at once."""
    saved = transport.timeout
    transport.timeout = min(saved, limit)
    try:
        transport.send(_FIRST_COMMAND)
    except TpmError as exc:
        if exc.code != ErrorCode.TRANSPORT:
            raise
        detail = exc.message.removeprefix(f"{transport.tcti}: ")
        raise TpmError(f"{transport.tcti} does not answer like a TPM: {detail}",
                       code=ErrorCode.TRANSPORT, hint=exc.hint or NOT_A_TPM_HINT) from None
    finally:
        transport.timeout = saved


@dataclass(frozen=True)
class Availability:
    """What :meth:`Tpm.is_available` found: truthy only when a TPM answered.

    ``code`` says why not: ``TPM_NOT_FOUND`` (no TPM there), ``REQUIRES_ELEVATION`` (a TPM is
    there but this account may not open it, e.g. /dev/tpmrm0 without the ``tss`` group),
    ``TRANSPORT`` (something is there that does not answer like a TPM, or it is busy),
    ``INVALID_ARGUMENT`` (the TCTI does not parse) or another ``ErrorCode``. ``reason`` is the
    error message and ``hint`` what to do about it.
    """

    available: bool
    tcti: str | None
    code: ErrorCode | None = None
    reason: str = ""
    hint: str | None = None

    def __bool__(self) -> bool:
        return self.available

    @property
    def present(self) -> bool:
        """True when a TPM is there, usable or not (only denied to this account)."""
        return self.available or self.code == ErrorCode.REQUIRES_ELEVATION


def _check_indices(indices: Iterable[int], limit: int = MAX_PCR_INDEX) -> list[int]:
    out = sorted(set(indices))
    for i in out:
        if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i <= limit:
            raise TpmError(f"PCR index {i!r} out of range 0..{limit}", code=ErrorCode.INVALID_ARGUMENT)
    return out


def _bank_digest(bank: str, data: bytes) -> bytes:
    """``data`` hashed with a bank's algorithm (OpenSSL calls SM3_256 "sm3")."""
    try:
        return hashlib.new("sm3" if bank == "sm3_256" else bank, data).digest()
    except ValueError:
        raise TpmError(f"this Python/OpenSSL cannot hash for PCR bank {bank!r}: extend the other "
                       "banks alone, or give a precomputed digest",
                       code=ErrorCode.UNSUPPORTED) from None


class PcrApi:
    """``tpm.pcr``: banks, read, extend."""

    def __init__(self, tpm: Tpm) -> None:
        self._tpm = tpm

    def banks(self) -> list[str]:
        """Allocated PCR banks, e.g. ['sha1', 'sha256']."""
        return self._tpm.backend.pcr_banks()

    def read(self, indices: Iterable[int] | None = None, bank: str = "sha256") -> dict[int, bytes]:
        """PCR values of one bank ({index: digest}); all 24 when ``indices`` is None."""
        idx = _check_indices(range(MAX_PCR_INDEX + 1) if indices is None else indices)
        if not idx:
            return {}
        return self._tpm.backend.pcr_read(idx, bank_name(bank_alg(bank)))

    def extend(self, index: int, data: bytes, *, bank: str | None = None, digest: bool = False) -> None:
        """Extend PCR ``index``: ``data`` is hashed per bank (all allocated banks, or ``bank``),
        unless ``digest=True``, when it must already be one bank's digest.

        Prefer PCRs 16-23: 0-7 hold firmware and Secure Boot measurements. On Windows a
        standard user gets ``TpmError(REQUIRES_ELEVATION, hresult=0x80280400)``."""
        _check_indices([index])
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TpmError("data must be bytes", code=ErrorCode.INVALID_ARGUMENT)
        banks = self.banks()
        if digest:
            if bank is None:
                matches = [b for b in banks if HASH_SIZES[bank_alg(b)] == len(data)]
                if len(matches) != 1:
                    raise TpmError(f"a {len(data)}-byte digest matches banks {matches}; name the bank",
                                   code=ErrorCode.INVALID_ARGUMENT)
                bank = matches[0]
            alg = bank_alg(bank)
            if HASH_SIZES[alg] != len(data):
                raise TpmError(f"digest of {len(data)} bytes does not fit bank {bank}",
                               code=ErrorCode.INVALID_ARGUMENT)
            digests = {bank_name(alg): bytes(data)}
        else:
            chosen = [bank_name(bank_alg(bank))] if bank is not None else banks
            digests = {b: _bank_digest(b, bytes(data)) for b in chosen}
        for b in digests:
            if b not in banks:
                raise TpmError(f"PCR bank {b!r} is not allocated on this TPM", code=ErrorCode.INVALID_ARGUMENT)
        try:
            self._tpm.backend.pcr_extend(index, digests)
        except TpmError as exc:
            if exc.rc_name == "TPM_RC_LOCALITY" and exc.hint is None:
                exc.hint = (f"PCR {index} can only be extended from a higher locality "
                            "(17-22 are DRTM PCRs); use PCR 16 or 23")
            raise


class Tpm:
    """A TPM 2.0 for attestation. Open with :meth:`open` (a context manager); thread-safe."""

    def __init__(self, backend: Backend, *, commands: TpmCommands | None = None,
                 transport: Transport | None = None, embedded: EmbeddedSwtpm | None = None,
                 tcti_source: str = "argument") -> None:
        self.backend = backend
        self.commands = commands
        self.transport = transport
        self.embedded = embedded
        self.tcti_source = tcti_source
        self.pcr = PcrApi(self)
        self._manufacturer_id: int | None = None

    # -- opening --------------------------------------------------------------------------------

    @staticmethod
    def is_available(tcti: str | None = None, *, timeout: float | None = None) -> Availability:
        """Whether a TPM 2.0 answers at ``tcti`` (or the default), and if not, why: the result
        is truthy only when it answered, and its ``code`` tells "no TPM" (TPM_NOT_FOUND) from
        "a TPM this account may not use" (REQUIRES_ELEVATION). Never raises for either."""
        where = resolve_tcti(tcti)[0]
        try:
            with Tpm.open(tcti, timeout=timeout) as tpm:
                tpm.backend.pcr_banks()
                return Availability(True, tpm.tcti)
        except TpmError as exc:
            return Availability(False, where, exc.code, str(exc), exc.hint)
        except OSError as exc:
            return Availability(False, where, ErrorCode.TRANSPORT, str(exc))

    @classmethod
    def open(cls, tcti: str | None = None, *, timeout: float | None = None,
             embedded_fallback: bool = False, srk_handle: int | None = None,
             on_command: Callable[[str], None] | None = None) -> Tpm:
        """Open the TPM at ``tcti``, else $TPM2_ATTEST_TCTI, $TPM2TOOLS_TCTI, else the platform
        default. ``embedded_fallback=True`` starts the embedded swtpm when no TCTI was given
        and no TPM device exists (an explicit or environment TCTI never falls back).

        ``timeout``: seconds each command may take (default: the transport's, 60 s over TCP,
        120 s for a device). Opening a TPM over TCP (swtpm, mssim) sends one command that must
        answer within :data:`FIRST_RESPONSE_TIMEOUT` (or ``timeout`` when given), so a peer that
        is not a TPM fails fast with ``TRANSPORT``."""
        resolved, source = resolve_tcti(tcti)
        try:
            if resolved is None:
                raise TpmError("no TPM found: no /dev/tpmrm0 or /dev/tpm0, and no TCTI given or set in "
                               "$TPM2_ATTEST_TCTI or $TPM2TOOLS_TCTI", code=ErrorCode.TPM_NOT_FOUND)
            transport = open_transport(tcti, timeout=timeout)  # names $VAR on a bad one
        except TpmError as exc:
            if embedded_fallback and source == "default" and exc.code == ErrorCode.TPM_NOT_FOUND:
                return cls.open_embedded(on_command=on_command)
            raise
        try:
            # Only a network peer can be the wrong thing (swtpm's control port, any other server);
            # a kernel device is a TPM, and one busy with another process's RSA key generation
            # (tens of seconds on some chips) must not be mistaken for "not a TPM". TBS and the
            # kernel enforce their own timeouts.
            if transport.kind in _NETWORK_TRANSPORTS:
                _check_answers(transport, FIRST_RESPONSE_TIMEOUT if timeout is None else timeout)
            return cls._from_transport(transport, source, srk_handle=srk_handle,
                                       on_command=on_command)
        except BaseException:
            transport.close()
            raise

    @classmethod
    def open_embedded(cls, *, on_command: Callable[[str], None] | None = None,
                      state_dir: str | os.PathLike[str] | None = None) -> Tpm:
        """Start an embedded swtpm (with EK certificates) and open it; stopped on close.

        Fresh each time, or with ``state_dir`` the one TPM kept in that directory (made there
        on first use; keys made in one process load in the next; one process at a time)."""
        from .embedded import EmbeddedSwtpm

        sw = EmbeddedSwtpm(state_dir=state_dir)
        sw.start()
        try:
            transport = open_transport(sw.tcti)
            tpm = cls._from_transport(transport, "embedded", on_command=on_command)
        except BaseException:
            sw.stop()
            raise
        tpm.embedded = sw
        return tpm

    @classmethod
    def open_pcp_emulator(cls, swtpm_tcti: str, state_dir: str | os.PathLike[str], *,
                          privilege: Privilege = "standard", security_descr_support: bool = True,
                          account: str | None = None,
                          on_command: Callable[[str], None] | None = None,
                          **knobs: object) -> Tpm:
        """The Windows PCP backend over ``PcpEmulator``: PCP keys in the swtpm at ``swtpm_tcti``,
        their names in ``state_dir``, as a "standard" user, elevated "admin" or "system".
        Tests the Windows flow (provision as SYSTEM, quote as a standard user) on any OS;
        ``knobs`` make one PCP fact differ (see ``PcpEmulator``)."""
        from .backends.pcp_emulator import open_emulated_backend

        backend = open_emulated_backend(swtpm_tcti, state_dir, privilege, security_descr_support,
                                        account=account, on_command=on_command, **knobs)
        return cls(backend, commands=backend.cmd, tcti_source="argument")

    @classmethod
    def _from_transport(cls, transport: Transport, source: str, *, srk_handle: int | None = None,
                        on_command: Callable[[str], None] | None = None) -> Tpm:
        commands = TpmCommands(transport, on_command=on_command)
        if transport.kind == "mssim":
            commands.startup()
        device_path = getattr(transport, "path", None)
        backend: Backend
        if transport.kind == "tbs" and sys.platform == "win32":  # pragma: no cover - Windows only
            from .backends.pcp import PcpBackend

            backend = PcpBackend.for_windows(commands, tcti=transport.tcti)
        else:
            backend = RawBackend(commands, tcti=transport.tcti, transport_kind=transport.kind,
                                 device_path=device_path, srk_handle=srk_handle)
        return cls(backend, commands=commands, transport=transport, tcti_source=source)

    def close(self) -> None:
        """Release the transport (and stop the embedded swtpm if this Tpm started it)."""
        try:
            self.backend.close()
            if self.transport is not None:
                self.transport.close()
        finally:
            if self.embedded is not None:
                self.embedded.stop()
                self.embedded = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- information ----------------------------------------------------------------------------

    @property
    def tcti(self) -> str:
        return self.backend.tcti

    @property
    def stats(self) -> CommandStats:
        """TPM commands sent through this Tpm so far (by name)."""
        return self.commands.stats if self.commands is not None else CommandStats()

    def info(self) -> TpmInfo:
        return self.backend.info()

    def get_random(self, n: int) -> bytes:
        if not 0 <= n <= 1 << 16:
            raise TpmError("n must be between 0 and 65536", code=ErrorCode.INVALID_ARGUMENT)
        return self.backend.get_random(n)

    def read_public(self, handle: int) -> PublicKey:
        """Public area, Name and SubjectPublicKeyInfo of a loaded or persistent object."""
        return self.backend.read_public(handle)

    def ek(self, kind: EkKind = "rsa", *, fetch: bool = False, url: str | None = None,
           timeout: float = 10.0, cache_dir: str | os.PathLike[str] | None = None,
           offline: bool = False) -> EkInfo:
        """The endorsement key ('rsa', 'ecc' P-256, or 'ecc384' as swtpm provisions) and its
        certificate from NV (None when the TPM has none).

        ``chain``: the intermediate CAs the TPM keeps in its EK certificate chain NV indices
        (0x01C00100 on: Intel PTT since 11th-generation Core), DER, in stored order, for the
        verifier's ``intermediates``; ``chain_note`` says what of it was skipped. Reading the
        chain never makes this call fail (see ``backends.ek_chain``).

        When NV holds no certificate, ``certificate_url`` says where the TPM's vendor publishes
        it (Intel PTT, AMD fTPM; None for other vendors, as in go-attestation), or is ``url``
        when given (a mirror). With ``fetch=True`` the certificate is fetched from there (see
        ``trust.fetch_ek_certificate``: ``timeout``, ``cache_dir``, ``offline``); a fetch that
        fails raises ``trust.FetchError``. The certificate is not verified here."""
        info = self.backend.ek(kind)
        chain = self.backend.ek_chain()
        info = replace(info, chain=chain.certificates, chain_note=chain.note)
        if info.certificate is not None and url is None:
            return info  # NV first: no vendor URL needed (and no extra TPM or provider call)
        from . import trust  # lazy: nothing of the trust layer loads for plain EK reads

        certificate_url = url
        if certificate_url is None:
            try:
                certificate_url = trust.ek_certificate_url(info.public, self._manufacturer())
            except ValueError:  # not an RSA/ECC public area: no vendor service names it
                certificate_url = None
        if certificate_url is not None:
            info = replace(info, certificate_url=certificate_url)
        if fetch and info.certificate is None and certificate_url is not None:
            der = trust.fetch_ek_certificate(certificate_url, timeout=timeout, cache_dir=cache_dir,
                                             offline=offline)
            info = replace(info, certificate=der)
        return info

    def _manufacturer(self) -> int:
        """TPM_PT_MANUFACTURER, read once per Tpm (it names the EK certificate service)."""
        if self._manufacturer_id is None:
            self._manufacturer_id = self.backend.info().manufacturer_id
        return self._manufacturer_id

    def event_log(self) -> bytes:
        """The raw TCG firmware event log (Linux securityfs, Windows TBS)."""
        return self.backend.event_log()

    def ima_log(self, bank: str | None = None, *, ascii: bool = False, offset: int = 0,
                securityfs: str | os.PathLike[str] | None = None) -> bytes:
        """The raw Linux IMA measurement list (binary unless ``ascii``) from byte ``offset``
        on: the classic SHA-1 list, or with ``bank`` the kernel's list of that bank's
        template hashes (kernels since 6.10). Read it after quoting: the kernel lists an
        entry before extending PCR 10. IMA measures into the kernel's own TPM, so a
        simulator needs ``securityfs`` (a directory holding ``ima/...``) to be named."""
        from .backends.ima_source import read_ima_log  # OS files: device side only

        if securityfs is None and self.backend.platform not in ("linux",):
            raise TpmError(f"a {self.backend.platform} TPM has no IMA measurement list",
                           code=ErrorCode.UNSUPPORTED,
                           hint="IMA extends the kernel's own TPM: a list kept elsewhere is read "
                                "from the securityfs directory that holds it")
        return read_ima_log(bank, ascii=ascii, offset=offset, securityfs=securityfs)

    # -- attestation ----------------------------------------------------------------------------

    def provision_ak(self, *, key_name: str | None = None, scope: str = "user", overwrite: bool = False,
                     nonce: bytes | None = None, algorithm: str | None = None) -> AkBlob:
        """Create an attestation key and return its blob (TPW1 on a raw TPM; PCP1/PCP2 on
        Windows). ``nonce`` is bound into the creation attestation for enrollment freshness.
        For the AK a cloud vTPM comes with, certified by its CA, see :meth:`certified_ak`."""
        return self.backend.provision_ak(key_name=key_name, scope=scope, overwrite=overwrite,
                                         nonce=nonce, algorithm=algorithm)

    def certified_ak(self, kind: str = "rsa", *, nonce: bytes | None = None) -> CertifiedAk:
        """The AK a platform CA certified for this TPM (Google Compute Engine vTPMs): its
        certificate from NV 0x01c10000 (RSA) / 0x01c10002 (ECC), the key derived in the
        endorsement hierarchy from the template at 0x01c10001 / 0x01c10003. Returns a
        ``TPP1`` blob that ``quote`` takes (the TPM derives the key again each time) with a
        creation attestation over ``nonce``, and the certificate (DER) for
        ``verify.verify_ak_certificate``. KEY_NOT_FOUND when the TPM has no such AK."""
        return self.backend.certified_ak(kind, nonce)

    def quote(self, ak: AkBlob | bytes | str, *, pcrs: Iterable[int] | None = None, bank: str = "sha256",
              qualifying_data: bytes = b"") -> Quote:
        """Quote PCRs (default 0-7) of ``bank`` over ``qualifying_data`` (the verifier's nonce).
        The returned PCR values are exactly the ones the quote's digest covers."""
        blob = AkBlob.load(ak)
        idx = _check_indices(DEFAULT_QUOTE_PCRS if pcrs is None else pcrs)
        if not idx:
            raise TpmError("quote needs at least one PCR", code=ErrorCode.INVALID_ARGUMENT)
        if len(qualifying_data) > 64:
            raise TpmError("qualifying_data longer than 64 bytes", code=ErrorCode.INVALID_ARGUMENT)
        return self.backend.quote(blob, pcrs=idx, bank=bank_name(bank_alg(bank)),
                                  qualifying_data=bytes(qualifying_data))

    @contextmanager
    def loaded(self, ak: AkBlob | bytes | str) -> Iterator[AkBlob]:
        """Keep ``ak`` loaded in the TPM for the ``with`` block: quotes and activations with it
        then skip TPM2_Load and TPM2_FlushContext (and the transient SRK). Yields the AkBlob.

        The AK holds one transient object slot meanwhile: swtpm and many TPMs have three, and
        loading another key needs two (its parent and itself), so keep one AK at a time on a TPM
        reached without a resource manager; /dev/tpmrm0 swaps kept objects out between commands
        and flushes them when the device is closed. The AK is flushed when the block ends, also
        on error, and by :meth:`close`. If the handle stops naming the AK (the TPM restarted, or
        another client flushed it), the next quote loads it again. Windows PCP keys are opened
        by name for each operation: there, this only yields the blob."""
        blob = AkBlob.load(ak)
        self.backend.keep(blob)
        try:
            yield blob
        finally:
            self.backend.release(blob)

    def activate_credential(self, ak: AkBlob | bytes | str,
                            challenge: CredentialChallenge | bytes) -> bytes:
        """Recover the secret of a credential challenge made for this TPM's EK and ``ak``'s Name
        (accepts our challenge form or a tpm2-tools credential file)."""
        blob = AkBlob.load(ak)
        ch = challenge if isinstance(challenge, CredentialChallenge) else CredentialChallenge.from_bytes(challenge)
        return self.backend.activate_credential(blob, ch)
