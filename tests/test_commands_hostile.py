"""Malformed TPM responses: every command parser raises TpmError, never crashes or hangs.

Real responses are recorded from swtpm, then mutated (bit flips, truncation, lying sizes,
extra bytes) and replayed through the same typed command functions.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tpm2_attest import ErrorCode, Tpm, TpmError
from tpm2_attest.commands import TpmCommands
from tpm2_attest.tpm2 import templates as T
from tpm2_attest.tpm2.constants import TPM_ALG, TPM_RH, TPM_SE, TPM_ST
from tpm2_attest.tpm2.structures import TPMT_SCHEME, pcr_selection
from tpm2_attest.transport import open_transport


class Recorder:
    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.responses: list[bytes] = []

    def send(self, cmd: bytes) -> bytes:
        rsp: bytes = self.inner.send(cmd)
        self.responses.append(rsp)
        return rsp


class Replay:
    """Answers each command with the next canned response (a hostile 'TPM')."""

    def __init__(self, responses: list[bytes]) -> None:
        self.responses = list(responses)

    def send(self, cmd: bytes) -> bytes:
        if not self.responses:
            raise TpmError("no more canned responses", code=ErrorCode.TRANSPORT)
        return self.responses.pop(0)


Op = Callable[[TpmCommands], object]
ECDSA = TPMT_SCHEME(TPM_ALG.ECDSA, TPM_ALG.SHA256)


def _ops(handles: dict[str, int]) -> dict[str, Op]:
    ak = handles["ak"]
    return {
        "get_random": lambda c: c.get_random(16),
        "pcr_read": lambda c: c.pcr_read(TPM_ALG.SHA256, [0, 1, 2]),
        "pcr_banks": lambda c: c.pcr_banks(),
        "properties": lambda c: c.get_properties(0x100, 8),
        "read_public": lambda c: c.read_public(0x81010001),
        "nv_read_public": lambda c: c.nv_read_public(0x01C00002),
        "nv_read": lambda c: c.nv_read(0x01C00002, 64, chunk=64),
        "quote": lambda c: c.quote(ak, b"nonce", ECDSA, pcr_selection(TPM_ALG.SHA256, [0, 16])),
        "start_auth_session": lambda c: c.start_auth_session(TPM_SE.POLICY),
    }


@pytest.fixture(scope="module")
def recorded(swtpm: Any) -> tuple[dict[str, list[bytes]], dict[str, Op]]:
    """One real response sequence per operation, recorded from swtpm."""
    out: dict[str, list[bytes]] = {}
    with Tpm.open(swtpm.tcti) as tpm:
        blob = tpm.provision_ak()
    transport = open_transport(swtpm.tcti)
    try:
        cmd = TpmCommands(transport)
        srk = cmd.create_primary(TPM_RH.OWNER, T.SRK_ECC_TEMPLATE)
        ak, _ = cmd.load(srk.handle, len(blob.private).to_bytes(2, "big") + blob.private, blob.public)
        ops = _ops({"ak": ak})
        for name, op in ops.items():
            rec = Recorder(transport)
            op(TpmCommands(rec))
            out[name] = rec.responses
            if name == "start_auth_session":
                # Flush the session it opened (handle in the response).
                cmd.flush_context(int.from_bytes(rec.responses[-1][10:14], "big"))
        cmd.flush_context(ak)
        cmd.flush_context(srk.handle)
    finally:
        transport.close()
    return out, ops


def _run(op: Op, responses: list[bytes]) -> None:
    c = TpmCommands(Replay(responses), max_retries=2, retry_delay=0.0)
    with contextlib.suppress(TpmError):
        op(c)


def test_recorded_responses_replay_cleanly(recorded: Any) -> None:
    responses, ops = recorded
    for name, op in ops.items():
        op(TpmCommands(Replay(responses[name])))  # unmodified: must succeed


@pytest.mark.parametrize("name", ["get_random", "pcr_read", "pcr_banks", "properties", "read_public",
                                  "nv_read_public", "nv_read", "quote", "start_auth_session"])
def test_truncated_and_extended_responses(recorded: Any, name: str) -> None:
    responses, ops = recorded
    good = responses[name]
    for i, rsp in enumerate(good):
        for cut in range(len(rsp)):
            bad = list(good)
            bad[i] = rsp[:cut]
            _run(ops[name], bad)
        # A consistent header with trailing junk: the parameter parse must notice.
        longer = rsp + b"\x00\x01"
        longer = longer[:2] + len(longer).to_bytes(4, "big") + longer[6:]
        bad = list(good)
        bad[i] = longer
        with pytest.raises(TpmError) as ei:
            ops[name](TpmCommands(Replay(bad)))
        assert ei.value.code == ErrorCode.BAD_RESPONSE


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_responses_raise_only_tpm_error(recorded: Any, data: st.DataObject) -> None:
    responses, ops = recorded
    name = data.draw(st.sampled_from(sorted(ops)))
    good = responses[name]
    i = data.draw(st.integers(0, len(good) - 1))
    rsp = bytearray(good[i])
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(rsp) - 1))
        rsp[pos] = data.draw(st.integers(0, 255))
    bad = list(good)
    bad[i] = bytes(rsp)
    _run(ops[name], bad)


def test_wrong_tag_and_lying_size(recorded: Any) -> None:
    responses, ops = recorded
    rsp = responses["get_random"][0]
    wrong_tag = TPM_ST.SESSIONS.to_bytes(2, "big") + rsp[2:]
    with pytest.raises(TpmError) as ei:
        ops["get_random"](TpmCommands(Replay([wrong_tag])))
    assert ei.value.code == ErrorCode.BAD_RESPONSE
    lying = rsp[:2] + (len(rsp) + 5).to_bytes(4, "big") + rsp[6:]
    with pytest.raises(TpmError) as ei:
        ops["get_random"](TpmCommands(Replay([lying])))
    assert ei.value.code == ErrorCode.BAD_RESPONSE


def test_endless_retry_is_bounded() -> None:
    retry = (0x8001).to_bytes(2, "big") + (10).to_bytes(4, "big") + (0x922).to_bytes(4, "big")
    c = TpmCommands(Replay([retry] * 10), max_retries=3, retry_delay=0.0)
    with pytest.raises(TpmError) as ei:
        c.get_random(8)
    assert ei.value.code == ErrorCode.RETRY_EXHAUSTED


def test_capability_swapped_for_another(recorded: Any) -> None:
    """A GetCapability answer for another capability than asked is refused, not misread."""
    responses, ops = recorded
    rsp = bytearray(responses["pcr_banks"][0])
    # Header (10) + moreData (1), then the u32 capability: claim TPM_CAP_HANDLES (1).
    rsp[11:15] = (1).to_bytes(4, "big")
    with pytest.raises(TpmError) as ei:
        ops["pcr_banks"](TpmCommands(Replay([bytes(rsp)])))
    assert ei.value.code == ErrorCode.BAD_RESPONSE
    assert "capability" in str(ei.value)
