"""verify_ima_log over PCR values computed independently (tests/ima_synth.py): every template,
bank and encoding; each field tampered; replay prefixes; boot_aggregate; incremental state.
The same checks against a real swtpm quote are in test_ima_swtpm.py."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

import ima_synth as synth
from tpm2_attest.ima import parse_ima_log
from tpm2_attest.verify import ImaResult, ImaState, Reason, VerificationError, verify_ima_log

KERNEL = {"sha1": "sha1", "sha256": "sha256", "sha384": "sha384", "sha512": "sha512"}


def boot_pcrs(bank: str) -> dict[int, bytes]:
    return {i: hashlib.new(bank, b"boot %d" % i).digest() for i in range(10)}


def scenario(bank: str = "sha256", *, mode: str = "native", template: str = "ima-ng",
             entries: list[synth.Entry] | None = None) -> tuple[list[synth.Entry], dict[int, bytes]]:
    """A list starting with the kernel's boot_aggregate, and the PCRs a quote would show."""
    pcrs0 = boot_pcrs(bank)
    agg_alg = "sha1" if template == "ima" else KERNEL[bank]
    ents = [synth.boot_aggregate_entry(pcrs0, agg_alg, template),
            *(synth.every_template() if entries is None else entries)]
    return ents, {**pcrs0, **synth.pcr_values(ents, bank, mode)}


def expect(reason: Reason, *args: Any, **kw: Any) -> VerificationError:
    with pytest.raises(VerificationError) as exc:
        verify_ima_log(*args, **kw)
    assert exc.value.reason is reason, exc.value
    return exc.value


# -- full lists ------------------------------------------------------------------------------------


@pytest.mark.parametrize("bank", ["sha1", "sha256", "sha384"])
@pytest.mark.parametrize("list_alg", ["sha1", "sha256"])
@pytest.mark.parametrize("fmt", ["binary", "ascii"])
def test_full_list_verifies(bank: str, list_alg: str, fmt: str) -> None:
    ents, quoted = scenario(bank)
    data = synth.binary(ents, list_alg) if fmt == "binary" else synth.ascii(ents, list_alg)
    res = verify_ima_log(data, quoted, bank=bank)
    assert isinstance(res, ImaResult)
    assert res.count == len(ents) and len(res.entries) == len(ents) and res.pending == ()
    assert res.template_digests == ("listed" if list_alg == bank else "native")
    assert res.boot_aggregate == "verified"
    assert res.violations == 2
    assert res.pcrs == {10: quoted[10], 11: quoted[11]}
    assert res.bank == bank and res.state.count == len(ents)
    json.dumps(res.to_dict())
    assert [e.path for e in res.entries][:2] == ["boot_aggregate", "/usr/bin/legacy"]


def test_quote_result_like_objects_and_bank_from_the_quote() -> None:
    ents, quoted = scenario("sha1")

    @dataclasses.dataclass
    class Q:
        pcrs: dict[int, bytes]
        bank: str = "sha1"
        reset_count: int = 4

    res = verify_ima_log(synth.binary(ents), Q(quoted), bank="sha256")  # the quote's bank wins
    assert res.bank == "sha1" and res.state.reset_count == 4


def test_padded_template_digests_of_older_kernels() -> None:
    ents, quoted = scenario("sha256", mode="padded")
    data = synth.binary(ents)
    res = verify_ima_log(data, quoted, bank="sha256")
    assert res.template_digests == "padded" and res.count == len(ents)
    assert verify_ima_log(data, quoted, bank="sha256", template_digests="padded").count == len(ents)
    expect(Reason.IMA_REPLAY_MISMATCH, data, quoted, bank="sha256", template_digests="native")
    native_ents, native_quoted = scenario("sha256")
    expect(Reason.IMA_REPLAY_MISMATCH, synth.binary(native_ents), native_quoted, bank="sha256",
           template_digests="padded")
    with pytest.raises(ValueError):
        verify_ima_log(data, quoted, bank="sha256", template_digests="both")  # type: ignore[arg-type]


def test_per_bank_list_with_padded_hashes_binds() -> None:
    """A per-bank list of a bank the kernel could not hash lists padded SHA-1 hashes."""
    ents, quoted = scenario("sha256", mode="padded")
    res = verify_ima_log(synth.binary(ents, "sha256", padded=True), quoted, bank="sha256")
    assert res.template_digests == "listed" and res.count == len(ents)


# -- boot_aggregate --------------------------------------------------------------------------------


def test_boot_aggregate_covers_pcrs_0_9_except_in_sha1() -> None:
    ents, quoted = scenario("sha256")
    for pcr in range(10):
        bad = {**quoted, pcr: b"\x42" * 32}
        expect(Reason.IMA_BOOT_AGGREGATE_MISMATCH, synth.binary(ents), bad, bank="sha256")
    ents1, quoted1 = scenario("sha1")
    for pcr in range(10):
        bad = {**quoted1, pcr: b"\x42" * 20}
        if pcr < 8:
            expect(Reason.IMA_BOOT_AGGREGATE_MISMATCH, synth.binary(ents1), bad, bank="sha1")
        else:  # PCRs 8-9 are not in a SHA-1 boot_aggregate
            assert verify_ima_log(synth.binary(ents1), bad, bank="sha1").boot_aggregate == "verified"


def test_boot_aggregate_of_kernels_5_7_covers_pcrs_0_7_in_any_bank() -> None:
    """5.7 (and the stable kernels that took "ima: Switch to ima_hash_algo for boot aggregate"
    without 5.8's "extend boot_aggregate with kernel measurements": 5.4.y, 5.6.y) hash PCRs
    0-7 only, in the SHA-256 bank: keylime's captured 5.4.48 lines come from such a kernel,
    and keylime accepts the aggregate over 8 or over 10 PCRs of every bank."""
    pcrs0 = boot_pcrs("sha256")
    first = synth.ima_ng("boot_aggregate", digest=hashlib.sha256(b"".join(pcrs0[i] for i in range(8))).digest())
    ents = [first, synth.ima_ng("/bin/a")]
    quoted = {**pcrs0, **synth.pcr_values(ents, "sha256")}
    res = verify_ima_log(synth.binary(ents), quoted)
    assert res.boot_aggregate == "verified" and res.boot_aggregates == (0,)
    only0_7 = {k: v for k, v in quoted.items() if k not in (8, 9)}
    assert verify_ima_log(synth.binary(ents), only0_7).boot_aggregate == "verified"
    # PCRs 0-9 aggregates need 8 and 9 quoted; a match of neither is still refused
    ents9, quoted9 = scenario("sha256")
    no89 = {k: v for k, v in quoted9.items() if k not in (8, 9)}
    assert verify_ima_log(synth.binary(ents9), no89).boot_aggregate == "not_quoted"
    expect(Reason.IMA_BOOT_AGGREGATE_MISMATCH, synth.binary(ents), {**quoted, 3: b"\x33" * 32})


def test_legacy_template_boot_aggregate_is_sha1() -> None:
    ents, quoted = scenario("sha1", template="ima")
    assert verify_ima_log(synth.ascii(ents), quoted, bank="sha1").boot_aggregate == "verified"
    ents256, quoted256 = scenario("sha256", template="ima")
    assert verify_ima_log(synth.binary(ents256), quoted256, bank="sha256").boot_aggregate == "other_bank"


def test_boot_aggregate_statuses() -> None:
    ents, quoted = scenario("sha256")
    no9 = {k: v for k, v in quoted.items() if k != 9}
    assert verify_ima_log(synth.binary(ents), no9).boot_aggregate == "not_quoted"
    rest = ents[1:]
    quoted_rest = {**quoted, **synth.pcr_values(rest, "sha256")}
    assert verify_ima_log(synth.binary(rest), quoted_rest).boot_aggregate == "absent"
    # the aggregate in another bank than the quote's
    sha1_first = [synth.boot_aggregate_entry(boot_pcrs("sha1"), "sha1"), *ents[1:]]
    q = {**quoted, **synth.pcr_values(sha1_first, "sha256")}
    assert verify_ima_log(synth.binary(sha1_first), q).boot_aggregate == "other_bank"


def test_zero_boot_aggregate_is_refused() -> None:
    """No TPM when IMA started: the list is not bound to this boot."""
    pcrs0 = boot_pcrs("sha256")
    ents = [synth.ima_ng("boot_aggregate", digest=bytes(32)), synth.ima_ng("/a")]
    quoted = {**pcrs0, **synth.pcr_values(ents, "sha256")}
    err = expect(Reason.IMA_BOOT_AGGREGATE_MISMATCH, synth.binary(ents), quoted)
    assert "no TPM" in err.detail


# -- tampering -------------------------------------------------------------------------------------


def _tampered(ents: list[synth.Entry], i: int, j: int) -> list[synth.Entry]:
    """Entry i with field j changed, still listing the original template hashes."""
    out = copy.deepcopy(ents)
    e = out[i]
    e.forced_hash = {alg: e.template_hash(alg) for alg in ("sha1", "sha256")}
    fid, data = e.fields[j]
    if fid in synth.STRING_FIELDS:
        new = data[:-1] + b"x\0" if data else b"x\0"
    elif fid in synth.DIGEST_NG_FIELDS and data:
        new = data[:-1] + bytes([data[-1] ^ 1])
    elif fid in ("iuid", "igid"):
        new = (int.from_bytes(data, "little") + 1).to_bytes(4, "little")
    elif fid == "imode":
        new = (int.from_bytes(data, "little") ^ 0o7).to_bytes(2, "little")
    elif fid in synth.DIGEST_NG_FIELDS:
        new = b"sha256:\0" + bytes(32)
    else:
        new = data[:-1] + bytes([data[-1] ^ 1]) if data else b"\x01"
    e.fields[j] = (fid, new)
    return out


@pytest.mark.parametrize("fmt", ["binary", "ascii"])
def test_every_field_of_every_template_is_bound(fmt: str) -> None:
    ents, quoted = scenario("sha256")
    checked = 0
    for i, e in enumerate(ents):
        for j in range(len(e.fields)):
            bad = _tampered(ents, i, j)
            data = synth.binary(bad) if fmt == "binary" else synth.ascii(bad)
            if e.violation:  # a violation's fields bind nothing (the kernel hashed nothing)
                assert verify_ima_log(data, quoted).count == len(ents)
                continue
            err = expect(Reason.IMA_TEMPLATE_HASH_MISMATCH, data, quoted)
            assert f"entry {i} " in err.detail
            checked += 1
    assert checked > 40


def test_tampered_template_hash_pcr_order_and_drops() -> None:
    ents, quoted = scenario("sha256")
    flipped = copy.deepcopy(ents)
    th = flipped[3].template_hash("sha1")
    flipped[3].forced_hash = {"sha1": bytes([th[0] ^ 1]) + th[1:]}
    expect(Reason.IMA_TEMPLATE_HASH_MISMATCH, synth.binary(flipped), quoted)
    swapped = [ents[0], ents[2], ents[1], *ents[3:]]
    expect(Reason.IMA_REPLAY_MISMATCH, synth.binary(swapped), quoted)
    dropped = ents[:4] + ents[5:]
    expect(Reason.IMA_REPLAY_MISMATCH, synth.binary(dropped), quoted)
    moved = copy.deepcopy(ents)
    moved[4].pcr = 11
    expect(Reason.IMA_REPLAY_MISMATCH, synth.binary(moved), quoted)
    fake_violation = copy.deepcopy(ents)
    fake_violation[5].forced_hash = {"sha1": bytes(20)}  # zeroed: extended as 0xff..., not as it was
    expect(Reason.IMA_REPLAY_MISMATCH, synth.binary(fake_violation), quoted)


def test_coverage_of_the_ima_pcrs() -> None:
    ents, quoted = scenario("sha256")
    no10 = {k: v for k, v in quoted.items() if k != 10}
    expect(Reason.IMA_PCR_NOT_QUOTED, synth.binary(ents), no10)
    no11 = {k: v for k, v in quoted.items() if k != 11}
    err = expect(Reason.IMA_PCR_NOT_QUOTED, synth.binary(ents), no11)
    assert "[11]" in err.detail
    # an empty list still accounts for PCR 10
    expect(Reason.IMA_REPLAY_MISMATCH, b"", {10: b"\x01" * 32})
    res = verify_ima_log(b"", {10: bytes(32)})
    assert res.count == 0 and res.boot_aggregate == "unchecked"


def test_a_pcr_earlier_entries_extended_stays_quoted() -> None:
    """The state tracks PCR 11 (a pcr=11 rule measured earlier): a later quote must cover it
    even when the tail has no PCR 11 entry, or a device could drop the PCR 11 entries the
    kernel appended since and no replay would see it."""
    ents = [synth.ima_ng("/a"), synth.ima_ng("/conf", pcr=11), synth.ima_ng("/b"), synth.ima_ng("/evil", pcr=11)]
    first = verify_ima_log(synth.binary(ents[:2]), synth.pcr_values(ents[:2], "sha256"))
    now = synth.pcr_values(ents, "sha256")
    dropped = synth.binary([ents[2]])  # the device leaves out /evil
    err = expect(Reason.IMA_PCR_NOT_QUOTED, dropped, {10: now[10]}, state=first.state)
    assert "[11]" in err.detail
    expect(Reason.IMA_REPLAY_MISMATCH, dropped, now, state=first.state)
    assert verify_ima_log(synth.binary(ents[2:]), now, state=first.state).count == 4


def test_unknown_templates() -> None:
    ents, quoted = scenario("sha256", entries=[synth.ima_ng("/a"), synth.unknown("/u")])
    res = verify_ima_log(synth.binary(ents), quoted)
    assert res.count == 3 and res.entries[2].field_ids is None
    text = synth.ascii(ents[:2]) + f"10 {ents[2].template_hash('sha1').hex()} future-tmpl 010203 /u\n".encode()
    expect(Reason.IMA_TEMPLATE_UNSUPPORTED, text, quoted)


def test_malformed_and_bad_arguments() -> None:
    expect(Reason.IMA_LOG_MALFORMED, b"\x0a\x00\x00\x00garbage", {10: bytes(32)})
    expect(Reason.MALFORMED, b"", {10: bytes(20)}, bank="sha256")
    expect(Reason.UNSUPPORTED_FORMAT, b"", {10: bytes(32)}, bank="md5")
    expect(Reason.MALFORMED, b"", object())
    with pytest.raises(TypeError):
        verify_ima_log(12345, {10: bytes(32)})  # type: ignore[arg-type]


# -- the list runs ahead of the quote; incremental state ---------------------------------------


def test_list_ahead_of_the_quote_leaves_entries_pending() -> None:
    ents, _ = scenario("sha256")
    k = 7
    quoted = {**boot_pcrs("sha256"), **synth.pcr_values(ents[:k], "sha256")}
    quoted.setdefault(11, bytes(32))
    res = verify_ima_log(synth.binary(ents), quoted)
    assert res.count == k and len(res.entries) == k and len(res.pending) == len(ents) - k
    assert [e.index for e in res.pending] == list(range(k, len(ents)))
    # the quote ahead of the list (the device read the list before quoting) is refused
    short_quote = {**boot_pcrs("sha256"), **synth.pcr_values(ents, "sha256")}
    expect(Reason.IMA_REPLAY_MISMATCH, synth.binary(ents[:k]), short_quote)


def test_incremental_verification_one_entry_at_a_time() -> None:
    ents, final_quote = scenario("sha256")
    raw = synth.binary(ents)
    full = parse_ima_log(raw)
    state: ImaState | None = None
    for k in range(1, len(ents) + 1):
        quoted = {**boot_pcrs("sha256"), 11: bytes(32), **synth.pcr_values(ents[:k], "sha256")}
        offset = state.offset if state else 0
        tail = raw[offset:]  # what the device sends from the saved offset
        res = verify_ima_log(tail, quoted, state=state)
        assert res.count == k and [e.index for e in res.entries] == list(range(k - len(res.entries), k))
        state = res.state
        assert state.offset == full.offset_of(k) if k < len(ents) else state.offset == len(raw)
        assert state.boot_aggregate == "verified"
        state = ImaState.from_dict(json.loads(json.dumps(state.to_dict())))
    assert state is not None and state.count == len(ents)
    assert dict(state.pcrs) == {10: final_quote[10], 11: final_quote[11]}
    # nothing new: an empty tail verifies against the same quote
    again = verify_ima_log(b"", final_quote, state=state)
    assert again.count == len(ents) and again.entries == ()
    # the whole list with a state: its verified part is skipped
    assert verify_ima_log(full, final_quote, state=state).count == len(ents)


def test_incremental_state_keeps_the_template_digest_mode() -> None:
    ents, quoted = scenario("sha256", mode="padded")
    first = verify_ima_log(synth.binary(ents[:2]), {**quoted, **synth.pcr_values(ents[:2], "sha256", "padded")})
    assert first.template_digests == "padded"
    raw = synth.binary(ents)
    res = verify_ima_log(raw[first.state.offset:], quoted, state=first.state.to_dict())
    assert res.template_digests == "padded" and res.count == len(ents)
    # a native-extended continuation does not match a padded kernel
    native_tail = parse_ima_log(synth.binary(ents))
    expect(Reason.IMA_REPLAY_MISMATCH, native_tail, {**quoted, 10: synth.pcr_values(ents, "sha256")[10]},
           state=first.state)


def test_state_mismatches() -> None:
    ents, quoted = scenario("sha256")
    res = verify_ima_log(synth.binary(ents[:5]), {**quoted, **synth.pcr_values(ents[:5], "sha256"), 11: bytes(32)})
    st = res.state
    expect(Reason.IMA_STATE_MISMATCH, b"", {10: bytes(20)}, bank="sha1", state=st)
    tail = parse_ima_log(synth.binary(ents[5:]), start=3)
    expect(Reason.IMA_STATE_MISMATCH, tail, quoted, state=st)
    expect(Reason.IMA_STATE_MISMATCH, parse_ima_log(synth.binary(ents[:3])), quoted, state=st)
    expect(Reason.IMA_STATE_MISMATCH, tail, quoted)  # a tail without the state it continues

    @dataclasses.dataclass
    class Q:
        pcrs: dict[int, bytes]
        bank: str = "sha256"
        reset_count: int = 1

    rst = dataclasses.replace(st, reset_count=0)
    err = expect(Reason.IMA_STATE_MISMATCH, synth.binary(ents), Q(quoted), state=rst)
    assert "reset" in err.detail


@pytest.mark.parametrize("change", [
    {"version": 2}, {"bank": "md5"}, {"pcrs": {"10": "00"}}, {"pcrs": {"40": "00" * 32}},
    {"count": -1}, {"template_digests": "weird"}, {"boot_aggregate": "maybe"}, {"extra": 1},
    {"pcrs": "nope"},
])
def test_saved_state_that_does_not_parse(change: dict[str, Any]) -> None:
    _refused_state(change)


@pytest.mark.parametrize("change", [{"hash_alg": "crc32"}, {"hash_alg": ["sha1"]}, {"hash_alg": "SHA256"},
                                    {"format": "yaml"}])
def test_saved_state_with_a_list_encoding_that_does_not_parse(change: dict[str, Any]) -> None:
    """The state's algorithm now parses the device's tail: a bad one is MALFORMED, not a crash."""
    _refused_state(change)


def _refused_state(change: dict[str, Any]) -> None:
    good = ImaState("sha256", 3, {10: bytes(32)}).to_dict()
    assert ImaState.from_dict(good) == ImaState("sha256", 3, {10: bytes(32)})
    with pytest.raises(VerificationError) as exc:
        ImaState.from_dict({**good, **change})
    assert exc.value.reason is Reason.MALFORMED
    with pytest.raises(VerificationError):
        verify_ima_log(b"", {10: bytes(32)}, state={**good, **change})


def test_state_carries_a_bounded_number_of_key_buffers() -> None:
    """Keys a list loads onto keyrings ride along in the state; a hostile list cannot bloat it."""
    bufs = [synth.ima_buf(".ima", b"\x30\x82" + bytes([i % 256]) * 100) for i in range(100)]
    huge = synth.ima_buf(".ima", b"\x30" + b"\x00" * 20000)
    text = synth.ima_buf("kexec-cmdline", b"quiet")
    ents = [huge, text, *bufs]
    log = parse_ima_log(synth.binary(ents))
    res = verify_ima_log(log, log.replay_all("sha256"))
    kb = res.state.key_buffers
    assert len(kb) == 64 and all(name == ".ima" and len(b) == 102 for name, b in kb)
    assert ImaState.from_dict(json.loads(json.dumps(res.state.to_dict()))).key_buffers == kb
    with pytest.raises(VerificationError):
        ImaState.from_dict({**res.state.to_dict(), "key_buffers": [[".ima", "30"]] * 65})


# -- violations in every bank (ima_queue.c, ima_init_digests; tpm_pcr_extend before 5.8) ----------


def _legacy_pcr10(ents: list[synth.Entry], bank: str) -> bytes:
    """PCR 10 as kernels before 5.8 extended a non-SHA-1 bank, computed here from the kernel's
    definition rather than the synthesizer: ``tpm_pcr_extend`` copied the 20-byte SHA-1 value
    (0xff * 20 for a violation) into a zeroed digest of the bank's size."""
    size = hashlib.new(bank).digest_size
    value = bytes(size)
    for e in ents:
        if e.pcr != 10:
            continue
        twenty = b"\xff" * 20 if e.violation else hashlib.sha1(e.hash_input()).digest()
        value = hashlib.new(bank, value + twenty + bytes(size - 20)).digest()
    return value


@pytest.mark.parametrize("bank", ["sha256", "sha384"])
def test_violations_of_kernels_before_5_8_extend_ff20_zero_padded(bank: str) -> None:
    """A 4.x/5.x kernel (RHEL 8's 4.18...) quoted in its SHA-256 bank: a ToMToU or open-writers
    violation extended 0xff * 20 followed by zeros, not 0xff over the whole digest."""
    ents, quoted = scenario(bank, mode="legacy")
    assert quoted[10] == _legacy_pcr10(ents, bank)
    assert sum(e.violation for e in ents) == 2
    res = verify_ima_log(synth.binary(ents), quoted, bank=bank)
    assert res.count == len(ents) and res.template_digests == "legacy" and res.violations == 2
    assert verify_ima_log(synth.binary(ents), quoted, bank=bank, template_digests="legacy").count == len(ents)
    expect(Reason.IMA_REPLAY_MISMATCH, synth.binary(ents), quoted, bank=bank, template_digests="padded")
    # the kernels since 5.8 with no crypto for a bank they know: padded SHA-1, full 0xff violations
    ents_p, quoted_p = scenario(bank, mode="padded")
    assert verify_ima_log(synth.binary(ents_p), quoted_p, bank=bank).template_digests == "padded"
    expect(Reason.IMA_REPLAY_MISMATCH, synth.binary(ents_p), quoted_p, bank=bank, template_digests="legacy")


def test_a_state_without_violations_does_not_pin_the_padded_variant() -> None:
    """Without a violation the two padded forms replay alike: a later violation decides."""
    ents, quoted = scenario("sha256", mode="legacy")
    first_viol = next(i for i, e in enumerate(ents) if e.violation)
    head = ents[:first_viol]
    first = verify_ima_log(synth.binary(head), {**quoted, **synth.pcr_values(head, "sha256", "legacy")})
    assert first.count == len(head) and first.template_digests in ("padded", "legacy")
    raw = synth.binary(ents)
    res = verify_ima_log(raw[first.state.offset:], quoted, state=first.state.to_dict())
    assert res.count == len(ents) and res.template_digests == "legacy"


# -- keylime's own test lists (tests/data/ima/keylime-create-runtime-policy) -----------------------

KEYLIME_LISTS = Path(__file__).parent / "data" / "ima" / "keylime-create-runtime-policy"


def _chain(bank: str, digests: list[bytes]) -> bytes:
    size = len(digests[0])
    value = bytes(size)
    for d in digests:
        value = _hash(bank, value + d)
    return value


def _hash(alg: str, data: bytes) -> bytes:
    from tpm2_attest.ima import algorithms

    return algorithms.digest(alg, data)


def test_keylime_sm3_per_bank_list_is_told_from_sha256() -> None:
    """keylime's ima-log-sm3_256: the per-bank list of an SM3 PCR bank, whose 32-byte template
    hashes are SM3. Their size alone says sha256; the verifier must find SM3 from the
    hashes, or it refuses a valid list as tampered."""
    raw = (KEYLIME_LISTS / "ima-log-sm3_256").read_bytes()
    log = parse_ima_log(raw)
    viol, data = log.entries
    assert viol.violation and data.path == "/data"
    want_sm3 = _chain("sm3", [b"\xff" * 32, data.template_hash])
    res = verify_ima_log(raw, {10: want_sm3}, bank="sm3_256")
    assert res.count == 2 and res.template_digests == "listed" and res.state.hash_alg == "sm3"
    assert verify_ima_log(log, {10: want_sm3}, bank="sm3_256").count == 2  # parsed by the caller
    want_256 = _chain("sha256", [b"\xff" * 32, hashlib.sha256(data.hash_input or b"").digest()])
    res = verify_ima_log(raw, {10: want_256}, bank="sha256")
    assert res.count == 2 and res.template_digests == "native"
    # an incremental tail that starts with a violation cannot show its algorithm: the state does
    tail = raw[raw.index(b"\n") + 1:]
    first = verify_ima_log(raw.split(b"\n")[0] + b"\n", {10: _chain("sm3", [b"\xff" * 32])}, bank="sm3_256")
    assert verify_ima_log(tail, {10: want_sm3}, bank="sm3_256", state=first.state).count == 2
    # hashes of no algorithm of their size still fail as tampered
    forged = raw.replace(data.template_hash.hex().encode(), b"11" * 32)
    expect(Reason.IMA_TEMPLATE_HASH_MISMATCH, forged, {10: want_sm3}, bank="sm3_256")


@pytest.mark.parametrize("name,digest_alg", [("ima-log-sha1", "sha1"), ("ima-log-sha256", "sha256"),
                                              ("ima-log-sha384", "sha384"), ("ima-log-sha512", "sha512")])
def test_keylime_sha1_lists_with_every_digest_algorithm(name: str, digest_alg: str) -> None:
    raw = (KEYLIME_LISTS / name).read_bytes()
    log = parse_ima_log(raw)
    assert log.hash_alg == "sha1" and [e.digest.algorithm for e in log if e.digest] == [digest_alg] * 2
    res = verify_ima_log(raw, {10: log.replay("sha1")}, bank="sha1")
    assert res.count == 2 and res.entries[1].path == "/data"


def test_keylime_list_of_an_unknown_digest_algorithm() -> None:
    """ima-log-unknown: digests of an algorithm no kernel has, and a template hash copied from
    another line: it parses, its digests keep their name, and it does not verify."""
    raw = (KEYLIME_LISTS / "ima-log-unknown").read_bytes()
    log = parse_ima_log(raw)
    assert [str(e.digest).split(":")[0] for e in log] == ["unknown", "unknown"]
    expect(Reason.IMA_TEMPLATE_HASH_MISMATCH, raw, {10: log.replay("sha256")})


def test_template_hash_algorithm_is_found_from_the_hashes() -> None:
    """A per-bank list of a SHA3-256 bank (32-byte hashes): verified, not called tampered."""
    ents, quoted = scenario("sha256")
    for fmt in (synth.binary, synth.ascii):
        res = verify_ima_log(fmt(ents, "sha3-256"), quoted, bank="sha256")
        assert res.count == len(ents) and res.state.hash_alg == "sha3-256" and res.template_digests == "native"


def test_ascii_list_of_a_big_endian_kernel() -> None:
    """s390x without ima_canonical_fmt hashes its template data with big-endian lengths and
    integers; its ASCII list shows none of that, so the verifier must try that order."""
    pcrs0 = boot_pcrs("sha256")
    ents = [synth.boot_aggregate_entry(pcrs0, "sha256"), *synth.every_template(order=">")]
    quoted = {**pcrs0, **synth.pcr_values(ents, "sha256", order=">")}
    res = verify_ima_log(synth.ascii(ents, order=">"), quoted, bank="sha256")
    assert res.count == len(ents) and res.boot_aggregate == "verified"
    uid = next(e for e in res.entries if e.template_name == "evm-sig").field("iuid")
    assert uid == (1000).to_bytes(4, "big")
    # a list that binds in neither order is still refused
    bad = synth.ascii(ents, order=">").replace(b"/usr/bin/bash", b"/usr/bin/bosh")
    expect(Reason.IMA_TEMPLATE_HASH_MISMATCH, bad, quoted, bank="sha256")
