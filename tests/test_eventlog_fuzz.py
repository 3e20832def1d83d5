"""Fuzzing the event-log parser with hypothesis: mutated real and synthesized logs, and raw
bytes. The oracle (eventlog_synth.exercise) drives parse, replay, verify, Secure Boot and
to_dict(); only the documented errors may escape. Bounded to a few seconds; the atheris
counterpart (tests/fuzz/fuzz_eventlog.py) runs longer where atheris is installed."""

from __future__ import annotations

import importlib.util
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import eventlog_synth as synth
from tpm2_attest.eventlog import EventLogError, parse_event_log

SEEDS = synth.seed_logs()


def _interesting(raw: bytes) -> list[int]:
    """Offsets of length/count/type fields, where a mutation is most likely to lie."""
    try:
        log = parse_event_log(raw, strict=False)
    except EventLogError:
        return [0]
    out: list[int] = []
    for e in log.events:
        data_at = e.offset + (32 if e.index == 0 or log.format == "sha1" else 0)
        out += [e.offset, e.offset + 4, e.offset + 8, data_at + 16, data_at + 24, data_at + 28]
    return [o for o in out if o < len(raw)] or [0]


INTERESTING = [_interesting(s) for s in SEEDS]
U32_VALUES = [0, 1, 2, 3, 4, 7, 16, 0x7F, 0xFF, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]

mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 2**31), st.integers(1, 255)),
    st.tuples(st.just("u32"), st.integers(0, 2**31),
              st.sampled_from(U32_VALUES) | st.integers(0, 2**32 - 1)),
    st.tuples(st.just("u32@field"), st.integers(0, 2**31), st.sampled_from(U32_VALUES)),
    st.tuples(st.just("truncate"), st.integers(0, 2**31), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 2**31), st.binary(min_size=1, max_size=24)),
    st.tuples(st.just("delete"), st.integers(0, 2**31), st.integers(1, 64)),
    st.tuples(st.just("repeat"), st.integers(0, 2**31), st.integers(1, 256)),
)


def mutate(seed: int, muts: list[tuple[str, int, object]]) -> bytes:
    data = bytearray(SEEDS[seed])
    for kind, where, arg in muts:
        if not data:
            break
        pos = where % len(data)
        if kind == "flip":
            data[pos] ^= int(arg)  # type: ignore[call-overload]
        elif kind in ("u32", "u32@field"):
            if kind == "u32@field":
                fields = INTERESTING[seed]
                pos = fields[where % len(fields)] % len(data)
            chunk = struct.pack("<I", int(arg))  # type: ignore[call-overload]
            data[pos : pos + 4] = chunk[: len(data) - pos] if pos + 4 > len(data) else chunk
        elif kind == "truncate":
            del data[pos:]
        elif kind == "insert":
            data[pos:pos] = arg  # type: ignore[assignment]
        elif kind == "delete":
            del data[pos : pos + int(arg)]  # type: ignore[call-overload]
        elif kind == "repeat":
            data[pos:pos] = data[pos : pos + int(arg)]  # type: ignore[call-overload]
    return bytes(data)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow],
          database=None)
@given(seed=st.integers(0, len(SEEDS) - 1), muts=st.lists(mutation, min_size=1, max_size=4))
def test_mutated_logs(seed: int, muts: list[tuple[str, int, object]]) -> None:
    synth.exercise(mutate(seed, muts))


@settings(max_examples=300, deadline=None, database=None)
@given(st.binary(max_size=300))
def test_random_bytes(data: bytes) -> None:
    synth.exercise(data)


@settings(max_examples=300, deadline=None, database=None)
@given(st.sampled_from([("sha256",), ("sha1", "sha256"), ("sha384", "sha512")]),
       st.binary(max_size=400))
def test_random_events_after_a_valid_spec_id(banks: tuple[str, ...], tail: bytes) -> None:
    synth.exercise(synth.spec_id_record(banks) + tail)


def test_seeds_pass_the_oracle() -> None:
    for s in SEEDS:
        synth.exercise(s)


def test_fuzz_regressions() -> None:
    """lazy-x509-subject.bin (atheris): a db certificate that loads but whose subject only
    fails when read; it must be reported as unparseable, not crash to_dict()."""
    inputs = synth.regression_inputs()
    assert inputs
    for data in inputs:
        synth.exercise(data)


ATHERIS_SCRIPT = Path(__file__).parent / "fuzz" / "fuzz_eventlog.py"


@pytest.mark.skipif(importlib.util.find_spec("atheris") is None, reason="atheris not installed")
def test_atheris_smoke() -> None:
    """A very short coverage-guided run (the hypothesis tests above always run)."""
    proc = subprocess.run([sys.executable, str(ATHERIS_SCRIPT), "-runs=300"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
