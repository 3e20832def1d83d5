"""Review findings on the Windows PCP backend and the enrollment service, one test each.

Each test failed before the fix committed with it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tpm2_attest.backends import ncrypt_api as api
from tpm2_attest.backends import pcp as P
from tpm2_attest.backends.ncrypt_api import NCRYPT_MACHINE_KEY_FLAG, NCryptError
from tpm2_attest.backends.pcp_emulator import PcpEmulator, Privilege
from tpm2_attest.errors import ErrorCode, TpmError
from tpm2_attest.tpm import Tpm

KEY = "acme-review-ak"


@pytest.fixture
def pcp(swtpm: Any, tmp_path: Path) -> Any:
    state = tmp_path / "pcp-state"

    @contextmanager
    def open_(privilege: Privilege = "standard") -> Iterator[Tpm]:
        with Tpm.open_pcp_emulator(swtpm.tcti, state, privilege=privilege) as tpm:
            yield tpm

    return open_


def emulator(tpm: Tpm) -> PcpEmulator:
    emu = tpm.backend.ncrypt  # type: ignore[attr-defined]
    assert isinstance(emu, PcpEmulator)
    return emu


# -- NCryptDeleteKey frees the handle only when it succeeds ---------------------------------------
# learn.microsoft.com, NCryptDeleteKey: "The NCryptDeleteKey function deletes the key and frees the
# handle. Applications may use NCryptFreeObject function to free the handle if NCryptDeleteKey
# fails."


def test_emulator_keeps_the_handle_when_delete_key_fails(pcp: Any) -> None:
    with pcp("system") as tpm:
        tpm.provision_ak(key_name=KEY, scope="machine")
    with pcp("standard") as tpm:
        emu = emulator(tpm)
        prov = emu.open_storage_provider()
        key = emu.open_key(prov, KEY, 0, NCRYPT_MACHINE_KEY_FLAG)
        with pytest.raises(NCryptError) as ei:
            emu.delete_key(key)
        assert ei.value.hresult == api.NTE_PERM
        emu.free_object(key)  # still a valid handle: the caller must free it
        emu.free_object(prov)
        assert emu.open_handles == 0


def test_failed_overwrite_frees_the_key_handle(pcp: Any) -> None:
    with pcp("system") as tpm:
        tpm.provision_ak(key_name=KEY, scope="machine")
    with pcp("standard") as tpm:
        with pytest.raises(TpmError) as ei:
            tpm.provision_ak(key_name=KEY, scope="machine", overwrite=True)
        assert ei.value.code == ErrorCode.REQUIRES_ELEVATION and ei.value.hresult == api.NTE_PERM
        assert emulator(tpm).open_handles == 0


# -- The service's "one device per EK" must not depend on the public area the device chose -------
# MakeCredential does not use the EK's Name, and the EK certificate check compares keys only: the
# same EK key under another public area (another authPolicy, say) has another Name, passes the
# certificate check and activates on the same TPM. Keyed by Name, allow_reenroll=False could be
# sidestepped by enrolling the same TPM again as a "new" EK.


def _service(swtpm: Any, tmp_path: Path) -> Any:
    pytest.importorskip("fastapi")
    import warnings

    from tpm2_attest.service import Settings, create_app

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'review.db'}",
                        ek_roots=(Path(swtpm.ca_root_path),),
                        ek_intermediates=(Path(swtpm.ca_intermediate_path),))
    return TestClient(create_app(settings))


def test_same_ek_key_under_another_public_area_is_already_enrolled(swtpm: Any, tmp_path: Path) -> None:
    import base64
    import dataclasses

    from tpm2_attest.evidence import CredentialChallenge
    from tpm2_attest.tpm2.structures import TPM2B_PUBLIC, TPMT_PUBLIC

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    def enroll_with(http: Any, tpm: Tpm, ek_public: bytes, certificate: bytes) -> Any:
        r = http.post("/v1/enroll/begin", json={"ek_public": b64(ek_public), "ek_certificate": b64(certificate)})
        if r.status_code != 200:
            return r
        eid, nonce = r.json()["enrollment_id"], base64.b64decode(r.json()["nonce"])
        blob = tpm.provision_ak(nonce=nonce)
        r = http.post("/v1/enroll/ak", json={"enrollment_id": eid, "ak_blob": b64(blob.to_bytes())})
        assert r.status_code == 200, r.text
        ch = r.json()["challenge"]
        secret = tpm.activate_credential(blob, CredentialChallenge(
            base64.b64decode(ch["credential_blob"]), base64.b64decode(ch["encrypted_secret"])))
        return http.post("/v1/enroll/finish", json={"enrollment_id": eid, "secret": b64(secret)})

    with _service(swtpm, tmp_path) as http, Tpm.open(swtpm.tcti) as tpm:
        ek = tpm.ek("rsa")
        assert ek.certificate is not None
        first = enroll_with(http, tpm, ek.public, ek.certificate)
        assert first.status_code == 200, first.text
        area = TPMT_PUBLIC.from_bytes(ek.public[2:])
        variant = TPM2B_PUBLIC(dataclasses.replace(area, auth_policy=b"\x11" * 32)).to_bytes()
        second = enroll_with(http, tpm, variant, ek.certificate)
        assert second.status_code == 409, second.text
        assert second.json()["error"]["code"] == "ALREADY_ENROLLED"


# -- A TPM 2.0 response code wrapped by NCrypt keeps its tpm_rc beyond 0x3FF --------------------
# Windows reports TPM 2.0 codes as 0x80280000 | rc (winerror.h TPM_20_E_LOCKOUT = 0x80280921); only
# 0x400-0x47F (TBS/PCP vendor codes such as TPM_E_COMMAND_BLOCKED) and 0x800-0x8FF (TPM 1.2
# non-fatal codes) are not TPM 2.0 response codes.


@pytest.mark.parametrize(("hresult", "rc", "code"), [
    (0x80280921, 0x921, ErrorCode.LOCKOUT),      # TPM_RC_LOCKOUT (a warning)
    (0x802804C4, 0x4C4, ErrorCode.TPM_ERROR),    # TPM_RC_VALUE, parameter 4 (format one)
    (0x8028018B, 0x18B, ErrorCode.KEY_NOT_FOUND),  # TPM_RC_HANDLE, handle 1 (as before)
])
def test_wrapped_tpm2_response_codes_keep_tpm_rc(hresult: int, rc: int, code: ErrorCode) -> None:
    err = P.ncrypt_error(NCryptError("NCryptFinalizeKey", hresult), "creating")
    assert err.tpm_rc == rc and err.code == code and err.hresult == hresult


def test_non_tpm2_codes_in_the_tpm_facility_have_no_tpm_rc() -> None:
    for hresult in (0x80280401, 0x80280800):  # TPM_E_INVALID_HANDLE, TPM_E_RETRY (TPM 1.2)
        err = P.ncrypt_error(NCryptError("NCryptX", hresult), "doing it")
        assert err.tpm_rc is None and err.code == ErrorCode.TPM_ERROR
