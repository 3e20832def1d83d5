"""IMA verification against real quotes: swtpm's PCR 10 is extended the way the kernel does
(one multi-bank TPM2_PCR_Extend per measurement), the list is read back through
``Tpm.ima_log`` from a securityfs-shaped directory, and a signed quote is verified."""

from __future__ import annotations

import builtins
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

import ima_synth as synth
from tpm2_attest import Tpm, TpmError, verify
from tpm2_attest.errors import ErrorCode
from tpm2_attest.ima import parse_ima_log
from tpm2_attest.verify import Reason, VerificationError, verify_ima_log

QUOTED = list(range(12))


def boot(tpm: Tpm) -> None:
    """Firmware-like measurements into PCRs 0-9 (every allocated bank)."""
    for i in range(10):
        tpm.pcr.extend(i, os.urandom(16))


def measure(tpm: Tpm, entries: list[synth.Entry], mode: str = "native") -> None:
    """What ima_pcr_extend does: one extend per entry, each bank's own template digest."""
    banks = tpm.pcr.banks()
    for e in entries:
        tpm.backend.pcr_extend(e.pcr, {b: synth.bank_digest(e, b, mode=mode) for b in banks})


def write_securityfs(root: Path, entries: list[synth.Entry], banks: list[str]) -> None:
    d = root / "ima"
    d.mkdir(parents=True, exist_ok=True)
    (d / "binary_runtime_measurements").write_bytes(synth.binary(entries))
    (d / "ascii_runtime_measurements").write_bytes(synth.ascii(entries))
    for b in banks:
        if b != "sha1":
            (d / f"binary_runtime_measurements_{b}").write_bytes(synth.binary(entries, b))
            (d / f"ascii_runtime_measurements_{b}").write_bytes(synth.ascii(entries, b))


def quote(tpm: Tpm, blob: Any, bank: str) -> verify.QuoteResult:
    nonce = os.urandom(32)
    q = tpm.quote(blob, pcrs=QUOTED, bank=bank, qualifying_data=nonce)
    return verify.verify_quote(verify.check_ak(blob.to_bytes()), q, nonce=nonce)


def test_real_quote_verifies_every_list_form(fresh_swtpm: Any, tmp_path: Path) -> None:
    with Tpm.open(fresh_swtpm.tcti) as tpm:
        banks = tpm.pcr.banks()
        assert {"sha1", "sha256"} <= set(banks)
        boot(tpm)
        agg = synth.boot_aggregate_entry(tpm.pcr.read(range(10), "sha256"), "sha256")
        entries = [agg, *synth.every_template()]
        measure(tpm, entries)
        write_securityfs(tmp_path, entries, banks)
        blob = tpm.provision_ak()
        for bank in ("sha256", "sha1"):
            qr = quote(tpm, blob, bank)
            for kw in ({}, {"ascii": True}, {"bank": "sha256"}, {"bank": "sha256", "ascii": True}):
                raw = tpm.ima_log(securityfs=tmp_path, **kw)
                log = parse_ima_log(raw)
                res = verify_ima_log(log, qr)
                assert res.count == len(entries) and res.pending == ()
                assert res.boot_aggregate == ("verified" if bank == "sha256" else "other_bank")
                assert res.template_digests == ("listed" if log.hash_alg == bank else "native")
                assert res.pcrs[10] == qr.pcrs[10] and res.pcrs[11] == qr.pcrs[11]
        # the quote is signed: a list with an entry left out does not verify against it
        other = [agg, *synth.every_template()[1:]]
        with pytest.raises(VerificationError) as exc:
            verify_ima_log(synth.binary(other), qr)
        assert exc.value.reason is Reason.IMA_REPLAY_MISMATCH
        # leaving out every entry of PCR 11 is seen once PCR 11 is declared IMA's
        no11 = [e for e in entries if e.pcr != 11]
        assert verify_ima_log(synth.binary(no11), qr).count == len(no11)
        with pytest.raises(VerificationError) as exc:
            verify_ima_log(synth.binary(no11), qr, pcrs=(10, 11))
        assert exc.value.reason is Reason.IMA_REPLAY_MISMATCH


def test_pcr10_agrees_with_tpm2_tools(fresh_swtpm: Any, tpm2_tools: Any) -> None:
    entries = synth.every_template()
    with Tpm.open(fresh_swtpm.tcti) as tpm:
        measure(tpm, entries)
    log = parse_ima_log(synth.binary(entries))
    for bank in ("sha1", "sha256"):
        out = tpm2_tools("tpm2_pcrread", f"{bank}:10", sw=fresh_swtpm).stdout
        value = out.split("0x", 1)[1].split()[0].lower()
        assert log.replay(bank) == bytes.fromhex(value)


def test_older_kernel_padded_digests_against_a_real_quote(fresh_swtpm: Any) -> None:
    with Tpm.open(fresh_swtpm.tcti) as tpm:
        boot(tpm)
        sha1_pcrs = tpm.pcr.read(range(8), "sha1")
        entries = [synth.boot_aggregate_entry(sha1_pcrs, "sha1"), synth.ima_ng("/bin/a"),
                   synth.violation("/tmp/x"), synth.ima_sig("/bin/b")]
        measure(tpm, entries, mode="padded")
        blob = tpm.provision_ak()
        qr = quote(tpm, blob, "sha256")
        res = verify_ima_log(synth.binary(entries), qr)
        assert res.template_digests == "padded" and res.violations == 1
        assert res.boot_aggregate == "other_bank"  # a SHA-1 aggregate, quoted in SHA-256
        qr1 = quote(tpm, blob, "sha1")
        assert verify_ima_log(synth.binary(entries), qr1).boot_aggregate == "verified"


def test_incremental_attestation_over_several_quotes(fresh_swtpm: Any, tmp_path: Path) -> None:
    with Tpm.open(fresh_swtpm.tcti) as tpm:
        boot(tpm)
        entries = [synth.boot_aggregate_entry(tpm.pcr.read(range(10), "sha256"), "sha256")]
        measure(tpm, entries)
        blob = tpm.provision_ak()
        state = None
        for round_ in range(4):
            new = [synth.ima_ng(f"/usr/bin/round{round_}-{i}") for i in range(3 * round_)]
            entries += new
            measure(tpm, new)
            qr = quote(tpm, blob, "sha256")
            # the kernel lists the next entry before extending: the device reads after quoting
            late = synth.ima_ng(f"/usr/bin/late{round_}")
            write_securityfs(tmp_path, [*entries, late], ["sha1"])
            tail = tpm.ima_log(securityfs=tmp_path, offset=state.offset if state else 0)
            res = verify_ima_log(tail, qr, state=state)
            assert res.count == len(entries) and len(res.pending) == 1
            assert res.pending[0].path == f"/usr/bin/late{round_}"
            if state is not None:
                assert [e.index for e in res.entries] == list(range(state.count, len(entries)))
            measure(tpm, [late])
            entries.append(late)
            state = res.state
        assert state is not None and state.reset_count == qr.reset_count
        assert state.boot_aggregate == "verified"


def test_ima_log_device_errors(swtpm: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with Tpm.open(swtpm.tcti) as tpm:
        with pytest.raises(TpmError) as exc:
            tpm.ima_log()
        assert exc.value.code is ErrorCode.UNSUPPORTED
        with pytest.raises(TpmError) as exc:
            tpm.ima_log(securityfs=tmp_path)
        assert exc.value.code is ErrorCode.UNSUPPORTED and "CONFIG_IMA" in (exc.value.hint or "")
        write_securityfs(tmp_path, [synth.ima_ng("/a")], ["sha1"])
        with pytest.raises(TpmError) as exc:
            tpm.ima_log("sha384", securityfs=tmp_path)
        assert exc.value.code is ErrorCode.UNSUPPORTED and "6.10" in (exc.value.hint or "")
        with pytest.raises(TpmError) as exc:
            tpm.ima_log("md5", securityfs=tmp_path)
        assert exc.value.code is ErrorCode.INVALID_ARGUMENT
        raw = synth.binary([synth.ima_ng("/a")])
        assert tpm.ima_log(securityfs=tmp_path) == raw
        assert tpm.ima_log(securityfs=tmp_path, offset=len(raw)) == b""
        with pytest.raises(TpmError) as exc:
            tpm.ima_log(securityfs=tmp_path, offset=len(raw) + 1)
        assert exc.value.code is ErrorCode.INVALID_ARGUMENT
        with pytest.raises(TpmError) as exc:
            tpm.ima_log(securityfs=tmp_path, offset=-1)
        assert exc.value.code is ErrorCode.INVALID_ARGUMENT

        real_open = builtins.open

        def denied(path: Any, *a: Any, **kw: Any) -> Any:
            if str(path).startswith(str(tmp_path)):
                raise PermissionError(13, "Permission denied")
            return real_open(path, *a, **kw)

        monkeypatch.setattr(builtins, "open", denied)
        with pytest.raises(TpmError) as exc:
            tpm.ima_log(securityfs=tmp_path)
        assert exc.value.code is ErrorCode.REQUIRES_ELEVATION and "root" in (exc.value.hint or "")


REAL_IMA = Path("/sys/kernel/security/ima/binary_runtime_measurements")


@pytest.mark.skipif(not os.access(REAL_IMA, os.R_OK), reason="this kernel exposes no readable IMA list")
def test_this_machines_real_list() -> None:  # pragma: no cover - needs a kernel with IMA
    raw = REAL_IMA.read_bytes()
    log = parse_ima_log(raw)
    assert log.entries and log[0].path == "boot_aggregate"
    dev = next((p for p in ("/dev/tpmrm0", "/dev/tpm0") if os.path.exists(p)), None)
    if dev is None or shutil.which("tpm2_pcrread") is None:
        pcrs = {10: log.replay("sha1")}
    else:
        out = subprocess.run(["tpm2_pcrread", "sha1:10", "-T", f"device:{dev}"], capture_output=True,
                             text=True, check=True).stdout
        pcrs = {10: bytes.fromhex(out.split("0x", 1)[1].split()[0])}
    res = verify_ima_log(log, pcrs, bank="sha1")
    assert res.count > 0
