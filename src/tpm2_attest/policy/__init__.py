"""Attestation policies: is the state a verified quote and event log show acceptable?

``verify`` answers "is this evidence authentic?"; a :class:`Policy` answers "is this machine in a
state we accept?" over the *verified* results only, and explains every refusal::

    from tpm2_attest import policy
    p = policy.learn(quote_result, event_log_result)   # the state of a known-good machine
    p2 = policy.Policy.from_dict(p.to_dict())          # or Policy.load("policy.json")
    r = p2.evaluate(quote_result, event_log_result)    # PolicyResult: .ok, .violations
    for v in r.violations:
        print(v.rule, v.detail)                        # "pcrs.value", "sha256 PCR 7 is ..."

Policies are data (JSON or YAML documents, see docs/verifier.md); every rule has a stable id,
and evaluation returns every violation instead of stopping at the first. Sections: ``pcrs``
(expected PCR values), ``secure_boot`` (Secure Boot on, keys, revocations) and ``boot``
(firmware, boot applications, GRUB files, kernel command lines), judged over the machine state
of a verified event log (``EventLogResult.state``).
"""

from .base import Evidence, PolicyError, PolicyResult, Section, Violation
from .boot import BootSection
from .document import SECTIONS, VERSION, Policy, learn
from .ima import ImaSection
from .keylime import from_keylime_allowlist, from_keylime_runtime_policy
from .pcrs import PcrSection
from .secure_boot import SecureBootSection, dbx_contains_document

__all__ = [
    "SECTIONS",
    "VERSION",
    "BootSection",
    "Evidence",
    "ImaSection",
    "PcrSection",
    "Policy",
    "PolicyError",
    "PolicyResult",
    "Section",
    "SecureBootSection",
    "Violation",
    "dbx_contains_document",
    "from_keylime_allowlist",
    "from_keylime_runtime_policy",
    "learn",
]
