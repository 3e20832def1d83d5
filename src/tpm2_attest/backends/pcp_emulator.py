"""``PcpEmulator``: the Platform Crypto Provider's NCrypt surface, emulated over a real TPM (swtpm).

It implements :class:`~tpm2_attest.backends.ncrypt_api.NCryptProvider`, so
:class:`~tpm2_attest.backends.pcp.PcpBackend` runs on Linux exactly as it runs over ncrypt.dll.
Keys are real TPM objects: TPM2_Create under the TCG ECC P-256 SRK from PCP's identity-key
template, their creation evidence from a real TPM2_CertifyCreation. What is emulated is the
provider around them: key names persisted per namespace in a state directory, the privilege
model, and TBS. Use it to test a Windows attestation flow (provision as SYSTEM, quote as a
standard user, activate as admin) anywhere swtpm runs::

    from tpm2_attest import Tpm
    with Tpm.open_pcp_emulator(swtpm.tcti, state_dir, privilege="system") as tpm:
        blob = tpm.provision_ak(key_name="my-app-device-ak", scope="machine")
    with Tpm.open_pcp_emulator(swtpm.tcti, state_dir, privilege="standard") as tpm:
        quote = tpm.quote(blob, qualifying_data=nonce)

Emulated behaviour (docs/windows.md says which parts are facts about Windows and which are
assumptions):

- ``privilege="standard"``: creating or deleting a machine key fails with NTE_PERM (at
  NCryptFinalizeKey / NCryptDeleteKey); opening a machine key fails with NTE_PERM unless its DACL
  has an ACCESS_ALLOWED ACE for Built-in Users (or Everyone) with GENERIC_READ or GENERIC_ALL;
  GET PCP_TPM12_IDACTIVATION (which runs the activation) fails with NTE_DEVICE_NOT_READY; the EK
  certificate properties fail with NTE_PERM (PCP_EKPUB stays readable); TBS answers PCR_Extend
  and PCR_Event with TPM_E_COMMAND_BLOCKED. ``"admin"`` and ``"system"`` may do all of it.
- ``process_token()`` answers what GetTokenInformation would: elevated for admin and system,
  the SYSTEM SID for system (``token=`` overrides it, to test a caller Windows misdescribes).
- Knobs that make one PCP fact differ, so every assumption can be made to fail in tests:
  ``activation_device_not_ready`` (NTE_DEVICE_NOT_READY even for elevated callers),
  ``idactivation_size_query`` (False: a NULL-buffer size query of IDACTIVATION is refused),
  ``idbinding_trailing`` / ``ekpub_trailing`` (bytes appended to IDBINDING / PCP_EKPUB),
  ``ecc_ekpub`` (the magic of the PCP_ECC_EKPUB blob: "ECK1"/"ECS1" the P-256 EK, "ECK3"/"ECS3"
  the P-384 one; None: the property is absent, NTE_NOT_SUPPORTED, as on older Windows),
  ``ek_nv_certificates`` (False: the NV certificate stores are empty, as on firmware TPMs),
  ``ek_cert_store`` (certificates in Windows' EK store: PCP_EKCERT, PCP_RSA_EKCERT,
  PCP_ECC_EKCERT), ``ek_intermediate_store`` (PCP_INTERMEDIATE_CA_EKCERT: Windows' store of EK
  intermediate CAs; empty by default), ``dacl_before_finalize`` (False: "Security Descr" is refused before
  NCryptFinalizeKey with NTE_BAD_KEY_STATE), ``honor_key_dacl`` (False: a machine key's DACL
  does not let standard users open it), ``event_log`` / ``event_log_result`` (what
  Tbsi_Get_TCG_Log returns: the log, else that TBS result; TBS_E_INTERNAL_ERROR by default).
- User keys live in the account's namespace (``account``: "user" for standard/admin, as UAC's
  split token is one account, "SYSTEM" for system); machine keys in one shared namespace.
- ``NCRYPT_OVERWRITE_KEY_FLAG`` is not honoured (the conservative reading; PCPTool passes it,
  we never do): CreatePersistedKey of an existing name fails with NTE_EXISTS, so the backend's
  delete-first path is the one tested.
- ``security_descr_support=False``: the provider property "Security Descr Support" is absent
  (NTE_NOT_SUPPORTED), as on a PCP that cannot protect machine keys with a DACL.
- ``PCP_PLATFORMHANDLE`` on a key loads it into swtpm and returns its handle (flushed by
  free_object/delete_key: swtpm has 3 transient slots); on a provider it returns the emulated
  TBS context, which :meth:`PcpEmulator.tbs_channel` turns into a channel.
- IDBINDING: SET a 20-byte nonce before finalizing; it becomes the TPM2_Create outsideInfo and
  the CertifyCreation qualifyingData. GET works only on the creating handle after finalize.
- IDACTIVATION: SET stores TPM2B_ID_OBJECT || TPM2B_ENCRYPTED_SECRET; the GET runs
  TPM2_ActivateCredential (where Windows reports NTE_DEVICE_NOT_READY: go-attestation #177,
  #251) and returns the secret.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import json
import os
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from .._files import write_atomic
from ..commands import PW, Channel, TpmCommands
from ..errors import NTE_DEVICE_NOT_READY, TPM_E_COMMAND_BLOCKED, ErrorCode, TpmError
from ..tpm2 import templates as T
from ..tpm2.constants import TPM_ALG, TPM_CC, TPM_RH, TPM_ST
from ..tpm2.keys import public_key_from_public
from ..tpm2.marshal import ParseError, Reader, tpm2b
from ..tpm2.structures import TPMS_RSA_PARMS, TPMT_PUBLIC, TPMT_SCHEME
from ..transport.tbs import TBS_E_INTERNAL_ERROR, tcg_log_error
from .ncrypt_api import (
    ACCESS_ALLOWED_ACE_TYPE,
    DACL_SECURITY_INFORMATION,
    GENERIC_ALL,
    GENERIC_READ,
    MS_PLATFORM_CRYPTO_PROVIDER,
    NCRYPT_ALGORITHM_PROPERTY,
    NCRYPT_LENGTH_PROPERTY,
    NCRYPT_MACHINE_KEY_FLAG,
    NCRYPT_MAX_KEY_NAME_LENGTH,
    NCRYPT_NAME_PROPERTY,
    NCRYPT_OVERWRITE_KEY_FLAG,
    NCRYPT_PCP_ECC_EKCERT_PROPERTY,
    NCRYPT_PCP_ECC_EKNVCERT_PROPERTY,
    NCRYPT_PCP_ECC_EKPUB_PROPERTY,
    NCRYPT_PCP_EKCERT_PROPERTY,
    NCRYPT_PCP_EKNVCERT_PROPERTY,
    NCRYPT_PCP_EKPUB_PROPERTY,
    NCRYPT_PCP_IDENTITY_KEY,
    NCRYPT_PCP_INTERMEDIATE_CA_EKCERT_PROPERTY,
    NCRYPT_PCP_KEY_USAGE_POLICY_PROPERTY,
    NCRYPT_PCP_PLATFORM_TYPE_PROPERTY,
    NCRYPT_PCP_PLATFORMHANDLE_PROPERTY,
    NCRYPT_PCP_PROVIDER_VERSION_PROPERTY,
    NCRYPT_PCP_RSA_EKCERT_PROPERTY,
    NCRYPT_PCP_RSA_EKNVCERT_PROPERTY,
    NCRYPT_PCP_TPM12_IDACTIVATION_PROPERTY,
    NCRYPT_PCP_TPM12_IDBINDING_PROPERTY,
    NCRYPT_RSA_ALGORITHM,
    NCRYPT_SECURITY_DESCR_PROPERTY,
    NCRYPT_SECURITY_DESCR_SUPPORT_PROPERTY,
    NCRYPT_SILENT_FLAG,
    NONCE_BINDING_SIZE,
    NTE_BAD_FLAGS,
    NTE_BAD_KEY_STATE,
    NTE_BAD_KEYSET,
    NTE_BAD_PROVIDER,
    NTE_BUFFER_TOO_SMALL,
    NTE_EXISTS,
    NTE_INVALID_HANDLE,
    NTE_INVALID_PARAMETER,
    NTE_NOT_FOUND,
    NTE_NOT_SUPPORTED,
    NTE_PERM,
    PCP_IDENTITY_KEY_BITS,
    SID_BUILTIN_ADMINISTRATORS,
    SID_BUILTIN_USERS,
    SID_LOCAL_SYSTEM,
    KeyHandle,
    NCryptError,
    NCryptHandle,
    ProcessToken,
    ProvHandle,
    build_ecc_public_blob,
    build_rsa_public_blob,
    build_security_descriptor,
    pack_dword,
    pack_wstr,
    parse_security_descriptor,
    unpack_dword,
)
from .raw import RawBackend

if TYPE_CHECKING:
    from .pcp import PcpBackend

Privilege = Literal["standard", "admin", "system"]
PRIVILEGES: Final[tuple[Privilege, ...]] = ("standard", "admin", "system")

PCP_AK_AUTH_POLICY: Final = bytes.fromhex(
    "9dffcbf36c383ae699fb9868dc6dcb89d7153884be2803922c124158bfad22ae"
)
"""The authPolicy of a real PCP identity key (SHA-256 policy digest), as found in the AK public
area go-attestation recorded on Windows (attest/testdata/windows_gcp_shielded_vm.json). The
policy it encodes is not documented; usage needs none of it: userWithAuth is set and the
usage auth is empty, so a password session authorizes Quote and CertifyCreation."""

PCP_AK_TEMPLATE: Final = TPMT_PUBLIC(
    type=TPM_ALG.RSA,
    name_alg=TPM_ALG.SHA256,
    object_attributes=T.AK_ATTRIBUTES,  # 0x00050472, as in the recorded PCP AK
    auth_policy=PCP_AK_AUTH_POLICY,
    parameters=TPMS_RSA_PARMS(T.SYM_NULL, TPMT_SCHEME(TPM_ALG.RSASSA, TPM_ALG.SHA1),
                              PCP_IDENTITY_KEY_BITS, 0),
    unique=b"",
)
"""PCP's identity-key template: RSA-2048, fixedTPM|fixedParent|sensitiveDataOrigin|userWithAuth|
noDA|restricted|sign, RSASSA-SHA1, nameAlg SHA-256, the recorded authPolicy."""

STANDARD_USER_BLOCKED_COMMANDS: Final = frozenset({TPM_CC.PCR_Extend, TPM_CC.PCR_Event})
"""Commands the emulated TBS refuses a standard user. PCR_Extend is refused on
real Windows (validated on a laptop); PCR_Event is assumed to follow it (it extends a PCR too)."""

TBS_TPM_VERSION_20: Final = 2
"""TPM_DEVICE_INFO.tpmVersion for a TPM 2.0 (Windows SDK tbs.h TPM_VERSION_20)."""

EMULATED_USER_SID: Final = "S-1-5-21-1004336348-1177238915-682003330-1001"
"""The user SID the emulator reports for "standard" and "admin" callers (one account, as UAC's
split token is; a made-up domain part)."""

NTE_INTERNAL_ERROR: Final = 0x8009002D
_TPM_E_BASE: Final = 0x80280000
_TBS_CONTEXT: Final = 0x7B500000
_ACCOUNT_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_KEY_FILE_VERSION: Final = 1


def tbs_blocked_response(hresult: int = TPM_E_COMMAND_BLOCKED) -> bytes:
    """A 10-byte response carrying a TBS HRESULT where a TPM puts its response code."""
    return TPM_ST.NO_SESSIONS.to_bytes(2, "big") + (10).to_bytes(4, "big") + hresult.to_bytes(4, "big")


class _SerialChannel:
    """The one swtpm connection, shared by the emulated PCP and every emulated TBS context."""

    def __init__(self, channel: Channel) -> None:
        self._channel = channel
        self._lock = threading.RLock()

    def send(self, command: bytes) -> bytes:
        with self._lock:
            return self._channel.send(command)


class EmulatedTbsChannel:
    """TBS as a caller of ``privilege`` sees it: commands pass to the TPM, except those TBS
    blocks for standard users, answered with TPM_E_COMMAND_BLOCKED in the response code."""

    def __init__(self, channel: Channel, privilege: Privilege,
                 blocked: frozenset[int] = STANDARD_USER_BLOCKED_COMMANDS) -> None:
        self._channel = channel
        self.privilege = privilege
        self.blocked = blocked

    def send(self, command: bytes) -> bytes:
        if (self.privilege == "standard" and len(command) >= 10
                and int.from_bytes(command[6:10], "big") in self.blocked):
            return tbs_blocked_response()
        return self._channel.send(command)


@dataclass(frozen=True)
class KeyRecord:
    """A persisted PCP key: its name and namespace, its TPM blobs, its security descriptor."""

    name: str
    machine: bool
    owner: str
    """The account that created it (a user key's namespace)."""
    public: bytes
    """TPM2B_PUBLIC."""
    private: bytes
    """TPM2B_PRIVATE, wrapped by the SRK."""
    security_descriptor: bytes | None = None

    def to_json(self) -> bytes:
        def b64(b: bytes) -> str:
            return base64.b64encode(b).decode("ascii")

        return json.dumps({
            "version": _KEY_FILE_VERSION, "name": self.name, "machine": self.machine,
            "owner": self.owner, "public": b64(self.public), "private": b64(self.private),
            "security_descriptor": None if self.security_descriptor is None
            else b64(self.security_descriptor),
        }, indent=1).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes) -> KeyRecord:
        obj = json.loads(data)
        if not isinstance(obj, dict) or obj.get("version") != _KEY_FILE_VERSION:
            raise ValueError("not a PCP emulator key file")
        sd = obj.get("security_descriptor")
        return cls(str(obj["name"]), bool(obj["machine"]), str(obj["owner"]),
                   base64.b64decode(obj["public"]), base64.b64decode(obj["private"]),
                   None if sd is None else base64.b64decode(sd))


@dataclass
class _Provider:
    context: int


@dataclass
class _Key:
    name: str
    machine: bool
    record: KeyRecord | None = None
    """None until finalized."""
    length: int = PCP_IDENTITY_KEY_BITS
    usage: int | None = None
    binding: bytes | None = None
    security_descriptor: bytes | None = None
    idbinding: bytes | None = None
    """Only on the creating handle, after finalize."""
    activation_blob: bytes | None = None
    """What SET PCP_TPM12_IDACTIVATION stored; the GET activates it."""
    tpm_handle: int | None = None


def _fail(function: str, hresult: int, detail: str | None = None) -> NCryptError:
    return NCryptError(function, hresult, detail)


def users_may_use(security_descriptor: bytes | None) -> bool:
    """Whether a standard user may open a machine key with this security descriptor (the
    emulator's rule): its DACL allows Built-in Users or Everyone GENERIC_READ or GENERIC_ALL,
    or it is a NULL DACL. No descriptor means the default: SYSTEM and Administrators only."""
    if security_descriptor is None:
        return False
    sd = parse_security_descriptor(security_descriptor)
    if sd.dacl is None:
        return True
    return any(ace.ace_type == ACCESS_ALLOWED_ACE_TYPE and ace.sid in (SID_BUILTIN_USERS, "S-1-1-0")
               and ace.mask & (GENERIC_READ | GENERIC_ALL) for ace in sd.dacl)


class PcpEmulator:
    """An NCryptProvider whose PCP identity keys live in swtpm (see the module docstring)."""

    def __init__(
        self,
        channel: Channel | TpmCommands,
        state_dir: str | Path,
        *,
        privilege: Privilege = "standard",
        security_descr_support: bool = True,
        account: str | None = None,
        token: ProcessToken | None = None,
        activation_device_not_ready: bool = False,
        idactivation_size_query: bool = True,
        idbinding_trailing: bytes = b"",
        ekpub_trailing: bytes = b"",
        ecc_ekpub: str | None = "ECK1",
        ek_nv_certificates: bool = True,
        ek_cert_store: Sequence[bytes] = (),
        ek_intermediate_store: Sequence[bytes] = (),
        dacl_before_finalize: bool = True,
        honor_key_dacl: bool = True,
        event_log: bytes | None = None,
        event_log_result: int = TBS_E_INTERNAL_ERROR,
    ) -> None:
        """``channel``: a swtpm transport (or TpmCommands over one); ``state_dir``: where key
        names persist (share it between emulators to share machine keys). The other keywords
        are the knobs of the module docstring (defaults: the PCP as the references describe it)."""
        if privilege not in PRIVILEGES:
            raise TpmError(f"privilege must be one of {PRIVILEGES}, not {privilege!r}",
                           code=ErrorCode.INVALID_ARGUMENT)
        account = account if account is not None else ("SYSTEM" if privilege == "system" else "user")
        if not _ACCOUNT_RE.fullmatch(account):
            raise TpmError(f"account {account!r}: letters, digits, '.', '_', '-' only",
                           code=ErrorCode.INVALID_ARGUMENT)
        raw_channel = channel.channel if isinstance(channel, TpmCommands) else channel
        self._serial = _SerialChannel(raw_channel)
        self.cmd = TpmCommands(self._serial)
        self.state_dir = Path(state_dir)
        self.privilege: Privilege = privilege
        self.security_descr_support = security_descr_support
        self.account = account
        self.token = token
        self.activation_device_not_ready = activation_device_not_ready
        self.idactivation_size_query = idactivation_size_query
        self.idbinding_trailing = bytes(idbinding_trailing)
        self.ekpub_trailing = bytes(ekpub_trailing)
        if ecc_ekpub not in (None, "ECK1", "ECS1", "ECK3", "ECS3"):
            raise TpmError(f"ecc_ekpub must be None, 'ECK1', 'ECS1', 'ECK3' or 'ECS3', not "
                           f"{ecc_ekpub!r}", code=ErrorCode.INVALID_ARGUMENT)
        self.ecc_ekpub = ecc_ekpub
        self.ek_nv_certificates = ek_nv_certificates
        self.ek_cert_store = tuple(bytes(c) for c in ek_cert_store)
        self.ek_intermediate_store = tuple(bytes(c) for c in ek_intermediate_store)
        self.dacl_before_finalize = dacl_before_finalize
        self.honor_key_dacl = honor_key_dacl
        self.event_log = event_log
        self.event_log_result = event_log_result
        self.property_reads: collections.deque[tuple[str, int | None]] = collections.deque(maxlen=256)
        """(property, ``size`` argument) of the latest GETs: None is a NULL-buffer size query."""
        self.tbs_context = _TBS_CONTEXT
        self._raw = RawBackend(self.cmd, tcti="pcp-emulator", transport_kind="swtpm")
        self._objects: dict[int, _Provider | _Key] = {}
        self._next_handle = 0x1000
        self._lock = threading.RLock()

    # -- TBS ----------------------------------------------------------------------------------

    def tbs_channel(self, context: int) -> EmulatedTbsChannel:
        """The channel behind an emulated TBS context (what PCP_PLATFORMHANDLE returns)."""
        if context != self.tbs_context:
            raise TpmError(f"unknown emulated TBS context 0x{context:x}", code=ErrorCode.INVALID_ARGUMENT)
        return EmulatedTbsChannel(self._serial, self.privilege)

    def tbs_tpm_version(self) -> int:
        """What Tbsi_GetDeviceInfo reports as tpmVersion (2: TPM 2.0)."""
        return TBS_TPM_VERSION_20

    def tbs_get_tcg_log(self) -> bytes:
        """What Tbsi_Get_TCG_Log gives: ``event_log``, else ``event_log_result`` mapped as the
        real binding maps it (transport.tbs.tcg_log_error)."""
        if self.event_log is not None:
            return self.event_log
        raise tcg_log_error(self.event_log_result)

    def process_token(self) -> ProcessToken:
        """What GetTokenInformation says of the caller: elevated for admin/system, the SYSTEM
        SID for system; ``token`` when given (a caller Windows misdescribes)."""
        if self.token is not None:
            return self.token
        sid = SID_LOCAL_SYSTEM if self.privilege == "system" else EMULATED_USER_SID
        return ProcessToken(self.privilege != "standard", sid)

    @property
    def open_handles(self) -> int:
        """Provider and key handles not yet freed (tests check nothing leaks)."""
        with self._lock:
            return len(self._objects)

    # -- handles ------------------------------------------------------------------------------

    def _new(self, obj: _Provider | _Key) -> int:
        self._next_handle += 8
        self._objects[self._next_handle] = obj
        return self._next_handle

    def _prov(self, function: str, handle: int) -> _Provider:
        obj = self._objects.get(handle)
        if not isinstance(obj, _Provider):
            raise _fail(function, NTE_INVALID_HANDLE, "not a provider handle")
        return obj

    def _key(self, function: str, handle: int) -> _Key:
        obj = self._objects.get(handle)
        if not isinstance(obj, _Key):
            raise _fail(function, NTE_INVALID_HANDLE, "not a key handle")
        return obj

    # -- persistence --------------------------------------------------------------------------

    def _dir(self, machine: bool, owner: str | None = None) -> Path:
        if machine:
            return self.state_dir / "machine"
        return self.state_dir / "users" / (owner or self.account)

    def _path(self, machine: bool, name: str, owner: str | None = None) -> Path:
        return self._dir(machine, owner) / (hashlib.sha256(name.encode("utf-8")).hexdigest() + ".json")

    def _load_record(self, machine: bool, name: str) -> KeyRecord | None:
        path = self._path(machine, name)
        try:
            record = KeyRecord.from_json(path.read_bytes())
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as exc:
            raise _fail("NCryptOpenKey", NTE_BAD_KEYSET, f"corrupt key file {path}: {exc}") from exc
        return record if record.name == name else None

    def _store(self, record: KeyRecord) -> None:
        directory = self._dir(record.machine, record.owner)
        directory.mkdir(parents=True, exist_ok=True)
        write_atomic(self._path(record.machine, record.name, record.owner), record.to_json())

    # -- TPM plumbing -------------------------------------------------------------------------

    @contextmanager
    def _tpm(self, function: str) -> Iterator[None]:
        """TPM failures surface as PCP does: HRESULT 0x80280000 | rc (else NTE_INTERNAL_ERROR)."""
        try:
            yield
        except TpmError as exc:
            hr = _TPM_E_BASE | exc.tpm_rc if exc.tpm_rc is not None else NTE_INTERNAL_ERROR
            raise _fail(function, hr, str(exc)) from exc

    @contextmanager
    def _srk(self) -> Iterator[int]:
        """The TCG ECC P-256 SRK, re-created transiently (deterministic, cheap)."""
        res = self.cmd.create_primary(TPM_RH.OWNER, T.SRK_ECC_TEMPLATE)
        try:
            yield res.handle
        finally:
            self.cmd.flush_context(res.handle)

    def _load(self, record: KeyRecord) -> int:
        with self._srk() as srk:
            handle, _name = self.cmd.load(srk, record.private, record.public)
        return handle

    def _unload(self, key: _Key) -> None:
        if key.tpm_handle is not None:
            handle, key.tpm_handle = key.tpm_handle, None
            with suppress(TpmError):
                self.cmd.flush_context(handle)

    # -- NCryptProvider -----------------------------------------------------------------------

    def open_storage_provider(self, name: str = MS_PLATFORM_CRYPTO_PROVIDER, flags: int = 0) -> ProvHandle:
        """Only the Platform Crypto Provider exists here."""
        with self._lock:
            if name != MS_PLATFORM_CRYPTO_PROVIDER:
                raise _fail("NCryptOpenStorageProvider", NTE_BAD_PROVIDER, name)
            if flags:
                raise _fail("NCryptOpenStorageProvider", NTE_BAD_FLAGS)
            return self._new(_Provider(self.tbs_context))

    def create_persisted_key(self, prov: ProvHandle, alg: str = NCRYPT_RSA_ALGORITHM,
                             name: str | None = None, legacy_spec: int = 0,
                             flags: int = 0) -> KeyHandle:
        """Start a named RSA key; NTE_EXISTS if the name is taken, OVERWRITE flag or not."""
        fn = "NCryptCreatePersistedKey"
        with self._lock:
            self._prov(fn, prov)
            if alg != NCRYPT_RSA_ALGORITHM:
                raise _fail(fn, NTE_NOT_SUPPORTED, f"the emulator makes RSA identity keys, not {alg!r}")
            if name is None:
                raise _fail(fn, NTE_NOT_SUPPORTED, "ephemeral keys are not emulated")
            if not name or len(name) > NCRYPT_MAX_KEY_NAME_LENGTH or "\0" in name or legacy_spec:
                raise _fail(fn, NTE_INVALID_PARAMETER)
            if flags & ~(NCRYPT_MACHINE_KEY_FLAG | NCRYPT_SILENT_FLAG | NCRYPT_OVERWRITE_KEY_FLAG):
                raise _fail(fn, NTE_BAD_FLAGS)
            machine = bool(flags & NCRYPT_MACHINE_KEY_FLAG)
            if self._load_record(machine, name) is not None:
                raise _fail(fn, NTE_EXISTS, f"{name!r} (the emulator does not honour NCRYPT_OVERWRITE_KEY_FLAG)")
            return self._new(_Key(name, machine))

    def open_key(self, prov: ProvHandle, name: str, legacy_spec: int = 0, flags: int = 0) -> KeyHandle:
        """Open a persisted key of the caller's namespace (or the machine's)."""
        fn = "NCryptOpenKey"
        with self._lock:
            self._prov(fn, prov)
            if flags & ~(NCRYPT_MACHINE_KEY_FLAG | NCRYPT_SILENT_FLAG):
                raise _fail(fn, NTE_BAD_FLAGS)
            machine = bool(flags & NCRYPT_MACHINE_KEY_FLAG)
            record = self._load_record(machine, name)
            if record is None:
                raise _fail(fn, NTE_BAD_KEYSET, name)
            if machine and self.privilege == "standard" and not (
                    self.honor_key_dacl and users_may_use(record.security_descriptor)):
                raise _fail(fn, NTE_PERM, f"the DACL of machine key {name!r} does not admit Users")
            return self._new(_Key(name, machine, record))

    def set_property(self, handle: NCryptHandle, name: str, value: bytes, flags: int = 0) -> None:
        """The key properties PCP identity keys use; see the module docstring."""
        fn = "NCryptSetProperty"
        with self._lock:
            key = self._key(fn, handle)
            if name == NCRYPT_SECURITY_DESCR_PROPERTY:
                self._set_security_descriptor(key, value, flags)
                return
            if name == NCRYPT_PCP_TPM12_IDACTIVATION_PROPERTY:
                self._store_activation(key, bytes(value))
                return
            if key.record is not None:
                raise _fail(fn, NTE_BAD_KEY_STATE, f"{name!r} is set before NCryptFinalizeKey")
            if name == NCRYPT_LENGTH_PROPERTY:
                key.length = self._dword(fn, value)
            elif name == NCRYPT_PCP_KEY_USAGE_POLICY_PROPERTY:
                key.usage = self._dword(fn, value)
            elif name == NCRYPT_PCP_TPM12_IDBINDING_PROPERTY:
                if len(value) != NONCE_BINDING_SIZE:
                    raise _fail(fn, NTE_INVALID_PARAMETER, "the IDBINDING nonce is 20 bytes")
                key.binding = bytes(value)
            else:
                raise _fail(fn, NTE_NOT_SUPPORTED, name)

    @staticmethod
    def _dword(fn: str, value: bytes) -> int:
        if len(value) != 4:
            raise _fail(fn, NTE_INVALID_PARAMETER, "a DWORD property takes 4 bytes")
        return unpack_dword(bytes(value))

    def _set_security_descriptor(self, key: _Key, value: bytes, flags: int) -> None:
        fn = "NCryptSetProperty"
        if not flags & DACL_SECURITY_INFORMATION:
            raise _fail(fn, NTE_BAD_FLAGS, "Security Descr needs DACL_SECURITY_INFORMATION")
        try:
            sd = parse_security_descriptor(bytes(value))
        except TpmError as exc:
            raise _fail(fn, NTE_INVALID_PARAMETER, str(exc)) from exc
        if sd.dacl is None:
            raise _fail(fn, NTE_INVALID_PARAMETER, "no DACL in the security descriptor")
        if key.record is None:
            if not self.dacl_before_finalize:
                raise _fail(fn, NTE_BAD_KEY_STATE, "this PCP takes a key's DACL only after "
                            "NCryptFinalizeKey (knob dacl_before_finalize=False)")
            key.security_descriptor = bytes(value)
            return
        if key.machine and self.privilege == "standard":
            raise _fail(fn, NTE_PERM, "only administrators change a machine key's DACL")
        key.record = KeyRecord(key.record.name, key.record.machine, key.record.owner,
                               key.record.public, key.record.private, bytes(value))
        self._store(key.record)

    def get_property(self, handle: NCryptHandle, name: str, flags: int = 0, *,
                     size: int | None = None) -> bytes:
        """Provider and key properties; with ``size``, NTE_BUFFER_TOO_SMALL when it is short."""
        fn = "NCryptGetProperty"
        with self._lock:
            self.property_reads.append((name, size))
            obj = self._objects.get(handle)
            if isinstance(obj, _Provider):
                value = self._provider_property(fn, obj, name)
            elif isinstance(obj, _Key):
                value = self._key_property(fn, obj, name, flags)
            else:
                raise _fail(fn, NTE_INVALID_HANDLE)
            if (size is None and name == NCRYPT_PCP_TPM12_IDACTIVATION_PROPERTY
                    and not self.idactivation_size_query):
                raise _fail(fn, NTE_INVALID_PARAMETER, "a NULL-buffer size query of IDACTIVATION "
                            "is refused (knob idactivation_size_query=False)")
            if size is not None and size < len(value):
                raise _fail(fn, NTE_BUFFER_TOO_SMALL, f"{name!r} needs {len(value)} bytes")
            return value

    def _provider_property(self, fn: str, prov: _Provider, name: str) -> bytes:
        if name == NCRYPT_SECURITY_DESCR_SUPPORT_PROPERTY:
            if not self.security_descr_support:
                raise _fail(fn, NTE_NOT_SUPPORTED, name)
            return pack_dword(1)
        if name == NCRYPT_PCP_PLATFORMHANDLE_PROPERTY:
            return prov.context.to_bytes(8, "little")
        if name == NCRYPT_PCP_EKPUB_PROPERTY:
            with self._tpm(fn):
                ek = self._raw.ek("rsa")
            key = public_key_from_public(ek.public)
            if not isinstance(key, rsa.RSAPublicKey):
                raise _fail(fn, NTE_INTERNAL_ERROR, "the RSA EK is not an RSA key")
            return build_rsa_public_blob(key) + self.ekpub_trailing
        if name == NCRYPT_PCP_ECC_EKPUB_PROPERTY:
            if self.ecc_ekpub is None:
                raise _fail(fn, NTE_NOT_SUPPORTED, name)
            with self._tpm(fn):  # ECK1/ECS1: the P-256 EK (template L-2); ECK3/ECS3: P-384 (H-4)
                ek = self._raw.ek("ecc" if self.ecc_ekpub.endswith("1") else "ecc384")
            key = public_key_from_public(ek.public)
            if not isinstance(key, ec.EllipticCurvePublicKey):
                raise _fail(fn, NTE_INTERNAL_ERROR, "the ECC EK is not an EC key")
            return build_ecc_public_blob(key, ecdsa=self.ecc_ekpub.startswith("ECS"))
        if name == NCRYPT_PCP_PLATFORM_TYPE_PROPERTY:
            with self._tpm(fn):
                info = self._raw.info()
            return pack_wstr(f"TPM-Version:{info.spec_family} -Level:{info.spec_level}"
                             f"-Revision:{info.spec_revision}-VendorID:'{info.manufacturer}'"
                             f"-Firmware:{info.firmware_version} (emulated)")
        if name == NCRYPT_PCP_PROVIDER_VERSION_PROPERTY:
            return pack_wstr("PCP emulator over swtpm")
        raise _fail(fn, NTE_NOT_SUPPORTED, name)

    def _key_property(self, fn: str, key: _Key, name: str, flags: int) -> bytes:
        if name == NCRYPT_NAME_PROPERTY:
            return pack_wstr(key.name)
        if name == NCRYPT_ALGORITHM_PROPERTY:
            return pack_wstr(NCRYPT_RSA_ALGORITHM)
        if name == NCRYPT_LENGTH_PROPERTY:
            return pack_dword(key.length)
        if name == NCRYPT_PCP_KEY_USAGE_POLICY_PROPERTY:
            if key.usage is None and key.record is None:
                raise _fail(fn, NTE_NOT_FOUND, name)
            return pack_dword(key.usage if key.usage is not None else NCRYPT_PCP_IDENTITY_KEY)
        if name == NCRYPT_SECURITY_DESCR_PROPERTY:
            if not flags & DACL_SECURITY_INFORMATION:
                raise _fail(fn, NTE_BAD_FLAGS)
            sd = key.record.security_descriptor if key.record else key.security_descriptor
            if sd is None:
                sd = build_security_descriptor([(SID_LOCAL_SYSTEM, GENERIC_ALL),
                                                (SID_BUILTIN_ADMINISTRATORS, GENERIC_ALL)])
            return sd
        if key.record is None:
            raise _fail(fn, NTE_BAD_KEY_STATE, f"{name!r} needs a finalized key")
        if name == NCRYPT_PCP_TPM12_IDBINDING_PROPERTY:
            if key.idbinding is None:
                raise _fail(fn, NTE_NOT_FOUND, "IDBINDING is only readable on the creating handle")
            return key.idbinding
        if name == NCRYPT_PCP_TPM12_IDACTIVATION_PROPERTY:
            if key.activation_blob is None:
                raise _fail(fn, NTE_BAD_KEY_STATE, "SET PCP_TPM12_IDACTIVATION first")
            if self.privilege == "standard":
                raise _fail(fn, NTE_DEVICE_NOT_READY, "credential activation needs an administrator")
            if self.activation_device_not_ready:
                raise _fail(fn, NTE_DEVICE_NOT_READY, "the device is not ready "
                            "(knob activation_device_not_ready=True)")
            return self._activate(key.record, key, key.activation_blob)
        if name == NCRYPT_PCP_PLATFORMHANDLE_PROPERTY:
            if key.tpm_handle is None:
                with self._tpm(fn):
                    key.tpm_handle = self._load(key.record)
            return key.tpm_handle.to_bytes(4, "little")
        raise _fail(fn, NTE_NOT_SUPPORTED, name)

    def get_certificates(self, handle: NCryptHandle, name: str, flags: int = 0) -> list[bytes]:
        """EK certificates: the NV stores from swtpm's NV indices (unless ``ek_nv_certificates``
        is False), Windows' EK store from ``ek_cert_store``; a standard user gets NTE_PERM."""
        fn = "NCryptGetProperty"
        with self._lock:
            self._prov(fn, handle)
            self.property_reads.append((name, None))
            nv_kinds = {NCRYPT_PCP_RSA_EKNVCERT_PROPERTY: ("rsa",),
                        NCRYPT_PCP_ECC_EKNVCERT_PROPERTY: ("ecc", "ecc384"),
                        NCRYPT_PCP_EKNVCERT_PROPERTY: ("rsa", "ecc", "ecc384")}.get(name)
            store_kinds = {NCRYPT_PCP_EKCERT_PROPERTY: None,
                           NCRYPT_PCP_RSA_EKCERT_PROPERTY: rsa.RSAPublicKey,
                           NCRYPT_PCP_ECC_EKCERT_PROPERTY: ec.EllipticCurvePublicKey}
            if nv_kinds is None and name not in store_kinds \
                    and name != NCRYPT_PCP_INTERMEDIATE_CA_EKCERT_PROPERTY:
                raise _fail(fn, NTE_NOT_SUPPORTED, f"{name!r} is not a certificate store property")
            if self.privilege == "standard":
                raise _fail(fn, NTE_PERM, "standard users may read PCP_EKPUB only")
            if name == NCRYPT_PCP_INTERMEDIATE_CA_EKCERT_PROPERTY:
                return list(self.ek_intermediate_store)
            if nv_kinds is None:
                want = store_kinds[name]
                return [der for der in self.ek_cert_store
                        if want is None or isinstance(_cert_public_key(der), want)]
            out: list[bytes] = []
            if not self.ek_nv_certificates:
                return out
            with self._tpm(fn):
                for kind in nv_kinds:
                    cert = self._ek_certificate(kind)
                    if cert:
                        out.append(cert)
            return out

    def _ek_certificate(self, kind: str) -> bytes | None:
        """The certificate in an EK certificate NV index (swtpm provisions RSA and ECC P-384)."""
        if kind == "rsa":
            return self._raw.ek("rsa").certificate
        if kind == "ecc":
            return self._raw.ek("ecc").certificate
        return self._raw.ek("ecc384").certificate

    def finalize_key(self, key: KeyHandle, flags: int = 0) -> None:
        """Create the key in swtpm (TPM2_Create + TPM2_CertifyCreation) and persist its name."""
        fn = "NCryptFinalizeKey"
        with self._lock:
            obj = self._key(fn, key)
            if obj.record is not None:
                raise _fail(fn, NTE_BAD_KEY_STATE, "already finalized")
            if obj.machine and self.privilege == "standard":
                raise _fail(fn, NTE_PERM, "creating a machine key needs an administrator or SYSTEM")
            if obj.usage != NCRYPT_PCP_IDENTITY_KEY or obj.length != PCP_IDENTITY_KEY_BITS:
                raise _fail(fn, NTE_NOT_SUPPORTED, "the emulator makes RSA-2048 identity keys only "
                            "(set Length 2048 and PCP_KEY_USAGE_POLICY = NCRYPT_PCP_IDENTITY_KEY)")
            if self._load_record(obj.machine, obj.name) is not None:
                raise _fail(fn, NTE_EXISTS, obj.name)
            binding = obj.binding or b""
            with self._tpm(fn):
                with self._srk() as srk:
                    created = self.cmd.create(srk, PCP_AK_TEMPLATE, outside_info=binding)
                    handle, _name = self.cmd.load(srk, created.private, created.public_bytes)
                try:
                    signed = self.cmd.certify_creation(handle, handle, binding, created.creation_hash,
                                                       TPMT_SCHEME(), created.creation_ticket)
                finally:
                    self.cmd.flush_context(handle)
            record = KeyRecord(obj.name, obj.machine, self.account, created.public_bytes,
                               created.private, obj.security_descriptor)
            self._store(record)
            obj.record = record
            obj.idbinding = (created.public_bytes + created.creation_data_bytes
                             + tpm2b(signed.attest) + signed.signature + self.idbinding_trailing)

    def _store_activation(self, key: _Key, blob: bytes) -> None:
        """SET PCP_TPM12_IDACTIVATION: keep TPM2B_ID_OBJECT || TPM2B_ENCRYPTED_SECRET."""
        fn = "NCryptSetProperty"
        if key.record is None:
            raise _fail(fn, NTE_BAD_KEY_STATE, "activation needs a finalized key")
        try:
            r = Reader(blob)
            r.tpm2b("TPM2B_ID_OBJECT")
            r.tpm2b("TPM2B_ENCRYPTED_SECRET")
            r.done("PCP_TPM12_IDACTIVATION")
        except ParseError as exc:
            raise _fail(fn, NTE_INVALID_PARAMETER, str(exc)) from exc
        key.activation_blob = blob

    def _activate(self, record: KeyRecord, key: _Key, blob: bytes) -> bytes:
        """GET PCP_TPM12_IDACTIVATION: TPM2_ActivateCredential with the RSA EK."""
        fn = "NCryptGetProperty"
        split = 2 + int.from_bytes(blob[:2], "big")
        with self._tpm(fn):
            loaded = key.tpm_handle is None
            ak = self._load(record) if loaded else key.tpm_handle
            assert ak is not None
            try:
                ek = self._raw.ek("rsa")
                ek_handle = ek.handle
                if ek_handle is None:
                    ek_handle = self.cmd.create_primary(TPM_RH.ENDORSEMENT, T.EK_RSA_TEMPLATE).handle
                try:
                    session = self.cmd.start_auth_session()
                    consumed = False
                    try:
                        self.cmd.policy_secret(TPM_RH.ENDORSEMENT, session)
                        secret = self.cmd.activate_credential(ak, ek_handle, blob[:split], blob[split:],
                                                              activate_session=PW, key_session=session)
                        consumed = True  # continueSession clear: the TPM flushed it
                    finally:
                        if not consumed:
                            with suppress(TpmError):
                                self.cmd.flush_context(session.handle)
                finally:
                    if ek.handle is None:
                        self.cmd.flush_context(ek_handle)
            finally:
                if loaded:
                    self.cmd.flush_context(ak)
        return secret

    def delete_key(self, key: KeyHandle, flags: int = 0) -> None:
        """Delete the key's name (and unload it) and free the handle; when the delete fails the
        handle stays open (NCryptDeleteKey frees it only on success)."""
        fn = "NCryptDeleteKey"
        with self._lock:
            obj = self._key(fn, key)
            if obj.record is not None and obj.machine and self.privilege == "standard":
                raise _fail(fn, NTE_PERM, "deleting a machine key needs an administrator or SYSTEM")
            del self._objects[key]
            self._unload(obj)
            if obj.record is not None:
                self._path(obj.machine, obj.name, obj.record.owner).unlink(missing_ok=True)

    def free_object(self, handle: NCryptHandle) -> None:
        """Release a handle (a key's loaded TPM object is flushed)."""
        with self._lock:
            obj = self._objects.pop(handle, None)
            if obj is None:
                raise _fail("NCryptFreeObject", NTE_INVALID_HANDLE)
            if isinstance(obj, _Key):
                self._unload(obj)


def _cert_public_key(der: bytes) -> object:
    """The public key of a DER certificate, or None when it does not parse."""
    try:
        return x509.load_der_x509_certificate(der).public_key()
    except ValueError:
        return None


def open_emulated_backend(
    swtpm_tcti: str,
    state_dir: str | os.PathLike[str],
    privilege: Privilege = "standard",
    security_descr_support: bool = True,
    *,
    account: str | None = None,
    on_command: Callable[[str], None] | None = None,
    **knobs: object,
) -> PcpBackend:
    """The real :class:`PcpBackend` over a :class:`PcpEmulator`: PCP keys live in the swtpm at
    ``swtpm_tcti`` and their names in ``state_dir``; ``privilege`` is "standard", "admin" or "system";
    ``knobs`` go to :class:`PcpEmulator` (the PCP facts it can make differ).

    The Windows code path, runnable on Linux: two backends on the same swtpm and state
    directory see the same machine keys (SYSTEM provisions, a standard user quotes). The
    emulator depends on the backend, never the other way round."""
    from ..transport import open_transport
    from .pcp import PcpBackend

    transport = open_transport(swtpm_tcti)
    try:
        TpmCommands(transport).startup()
        emulator = PcpEmulator(transport, Path(state_dir), privilege=privilege,
                               security_descr_support=security_descr_support, account=account,
                               **knobs)  # type: ignore[arg-type]
        commands = TpmCommands(emulator.tbs_channel(emulator.tbs_context), on_command=on_command)
        return PcpBackend(emulator, commands, tcti=f"pcp-emulator:{swtpm_tcti}",
                          tbs_channel=emulator.tbs_channel, tpm_version=emulator.tbs_tpm_version,
                          event_log_reader=emulator.tbs_get_tcg_log, on_close=transport.close,
                          extra_info={"pcp_emulator": True, "privilege": privilege,
                                      "account": emulator.account})
    except BaseException:
        transport.close()
        raise


__all__ = [
    "EMULATED_USER_SID",
    "PCP_AK_AUTH_POLICY",
    "PCP_AK_TEMPLATE",
    "PRIVILEGES",
    "STANDARD_USER_BLOCKED_COMMANDS",
    "TBS_TPM_VERSION_20",
    "EmulatedTbsChannel",
    "KeyRecord",
    "PcpEmulator",
    "Privilege",
    "open_emulated_backend",
    "tbs_blocked_response",
    "users_may_use",
]
