"""Review findings on the Windows PCP backend and the enrollment service, one test each.

Each test failed before the fix committed with it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

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
        assert ei.value.hresult == P.NTE_PERM
        emu.free_object(key)  # still a valid handle: the caller must free it
        emu.free_object(prov)
        assert emu.open_handles == 0


def test_failed_overwrite_frees_the_key_handle(pcp: Any) -> None:
    with pcp("system") as tpm:
        tpm.provision_ak(key_name=KEY, scope="machine")
    with pcp("standard") as tpm:
        with pytest.raises(TpmError) as ei:
            tpm.provision_ak(key_name=KEY, scope="machine", overwrite=True)
        assert ei.value.code == ErrorCode.REQUIRES_ELEVATION and ei.value.hresult == P.NTE_PERM
        assert emulator(tpm).open_handles == 0
