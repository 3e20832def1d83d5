"""Evidence for a given event log from a real (sw)TPM: replay the log's digests into a fresh
swtpm's PCRs, then quote them. The quote is then genuine evidence of the boot the log describes,
so machine state and policies are tested over ``verify_quote`` + ``verify_event_log`` exactly as
a verifier runs them."""

from __future__ import annotations

import os
from dataclasses import dataclass

from tpm2_attest import AkBlob, Quote, Tpm, verify
from tpm2_attest.eventlog import parse_event_log


@dataclass
class QuotedLog:
    """A device's evidence: AK blob, quote, nonce and the log, and their verified results."""

    blob: AkBlob
    quote: Quote
    nonce: bytes
    log: bytes
    quote_result: verify.QuoteResult
    log_result: verify.EventLogResult


def quote_replayed(tcti: str, raw_log: bytes, *, bank: str = "sha256",
                   pcrs: list[int] | None = None) -> QuotedLog:
    """Extend every ``bank`` digest of ``raw_log`` into the (fresh, all-zero) swtpm at ``tcti``,
    quote ``pcrs`` (default: every PCR the log extends) over a random nonce, verify both."""
    log = parse_event_log(raw_log)
    assert log.startup_locality is None and not log.hcrtm, "PCR 0 must start at zero"
    with Tpm.open(tcti) as tpm:
        for ev in log.events:
            if ev.extends:
                digest = ev.digest(bank)
                assert digest is not None
                tpm.pcr.extend(ev.pcr, digest, bank=bank, digest=True)
        blob = tpm.provision_ak()
        nonce = os.urandom(16)
        selected = sorted(log.touched_pcrs) if pcrs is None else pcrs
        quote = tpm.quote(blob, pcrs=selected, bank=bank, qualifying_data=nonce)
    q = verify.verify_quote(verify.check_ak(blob.to_bytes()), quote, nonce=nonce)
    return QuotedLog(blob, quote, nonce, raw_log, q, verify.verify_event_log(raw_log, q))
