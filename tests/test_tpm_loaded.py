"""Tpm.loaded(ak): an AK kept loaded across quotes, against swtpm (no resource manager, three
transient object slots)."""

from __future__ import annotations

import os
from typing import Any

import pytest

from tpm2_attest import Tpm
from tpm2_attest.tpm2.constants import TPM_CAP
from tpm2_attest.verify import check_ak, make_credential, verify_quote

PCRS = [0, 1, 2, 3, 4, 5, 6, 7, 16]
TRANSIENT = 0x80000000


def transient_handles(tpm: Tpm) -> list[int]:
    assert tpm.commands is not None
    return [int(h) for h in tpm.commands.get_capability_all(TPM_CAP.HANDLES, TRANSIENT, 64)  # type: ignore[call-overload]
            if TRANSIENT <= int(h) < TRANSIENT + 0x01000000]


@pytest.fixture
def tpm(fresh_swtpm: Any) -> Any:
    with Tpm.open(fresh_swtpm.tcti) as t:
        yield t


def quote_ok(tpm: Tpm, blob: Any) -> dict[str, int]:
    """Quote, verify it against the AK, return the commands it took."""
    before = dict(tpm.stats.by_command)
    nonce = os.urandom(32)
    q = tpm.quote(blob, pcrs=PCRS, qualifying_data=nonce)
    verify_quote(check_ak(blob), q, nonce=nonce)
    return {k: v - before.get(k, 0) for k, v in tpm.stats.by_command.items() if v - before.get(k, 0)}


def test_a_kept_ak_quotes_without_load_or_flush_and_is_flushed_at_the_end(tpm: Tpm) -> None:
    blob = tpm.provision_ak()
    assert transient_handles(tpm) == []
    assert "TPM2_Load" in quote_ok(tpm, blob)
    with tpm.loaded(blob) as kept:
        assert kept == blob
        assert len(transient_handles(tpm)) == 1
        for _ in range(3):
            used = quote_ok(tpm, blob)
            assert set(used) == {"TPM2_Quote", "TPM2_PCR_Read"}, used
        with tpm.loaded(blob):  # nested: counted, still one handle
            quote_ok(tpm, blob)
            assert len(transient_handles(tpm)) == 1
        assert len(transient_handles(tpm)) == 1
        other = tpm.provision_ak(algorithm="rsa")  # SRK + new key + the kept AK: three slots
        assert "TPM2_Load" in quote_ok(tpm, other)  # another AK: loaded and flushed as usual
    assert transient_handles(tpm) == []


def test_flushed_on_error_and_on_close(fresh_swtpm: Any) -> None:
    with Tpm.open(fresh_swtpm.tcti) as tpm:
        blob = tpm.provision_ak()
        with pytest.raises(RuntimeError), tpm.loaded(blob):
            raise RuntimeError("boom")
        assert transient_handles(tpm) == []
        cm = tpm.loaded(blob)
        cm.__enter__()
        assert len(transient_handles(tpm)) == 1
    with Tpm.open(fresh_swtpm.tcti) as tpm:
        assert transient_handles(tpm) == []  # close() flushed the kept AK


def test_a_kept_handle_flushed_behind_our_back_is_reloaded(tpm: Tpm) -> None:
    blob = tpm.provision_ak()
    with tpm.loaded(blob):
        quote_ok(tpm, blob)
        (handle,) = transient_handles(tpm)
        assert tpm.commands is not None
        tpm.commands.flush_context(handle)  # another client of a TPM without a resource manager
        assert "TPM2_Load" in quote_ok(tpm, blob)
        assert set(quote_ok(tpm, blob)) == {"TPM2_Quote", "TPM2_PCR_Read"}
    assert transient_handles(tpm) == []


def test_a_kept_handle_reused_by_another_key_is_detected(tpm: Tpm) -> None:
    """The handle number now names another key: its quote is not the AK's, so the AK is loaded
    again and the quote made with it (it verifies under the AK)."""
    blob = tpm.provision_ak()
    intruder = tpm.provision_ak()
    with tpm.loaded(blob):
        quote_ok(tpm, blob)
        (handle,) = transient_handles(tpm)
        assert tpm.commands is not None
        tpm.commands.flush_context(handle)
        with tpm.loaded(intruder):
            assert transient_handles(tpm) == [handle]  # the same number, another key
            used = quote_ok(tpm, blob)  # verify_quote inside: signed by the AK
            assert "TPM2_Load" in used


def test_activate_credential_uses_the_kept_ak(tpm: Tpm) -> None:
    nonce = os.urandom(32)
    blob = tpm.provision_ak(nonce=nonce)
    ak = check_ak(blob, nonce=nonce)
    ek = tpm.ek("rsa")
    challenge, secret = make_credential(ek.public, ak.name)
    with tpm.loaded(blob):
        before = tpm.stats.by_command.get("TPM2_Load", 0)
        assert tpm.activate_credential(blob, challenge) == secret
        assert tpm.stats.by_command.get("TPM2_Load", 0) == before
