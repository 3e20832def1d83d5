"""Fuzzing the IMA list parser and verifier with hypothesis: mutated synthesized and real
lists, and raw bytes. The oracle (ima_synth.exercise) drives parse, views, replay and verify;
only the documented errors may escape. The atheris counterpart is tests/fuzz/fuzz_ima.py."""

from __future__ import annotations

import importlib.util
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ima_synth as synth
from tpm2_attest.ima import ImaLogError, parse_ima_log

SEEDS = synth.seed_lists()
U32_VALUES = [0, 1, 2, 3, 4, 10, 20, 32, 255, 256, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF]

mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 2**31), st.integers(1, 255)),
    st.tuples(st.just("u32"), st.integers(0, 2**31), st.sampled_from(U32_VALUES)),
    st.tuples(st.just("truncate"), st.integers(0, 2**31), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 2**31), st.binary(min_size=1, max_size=24)),
    st.tuples(st.just("text"), st.integers(0, 2**31), st.sampled_from([b" ", b"\n", b":", b"\0", b"|", b"zz"])),
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
        elif kind == "u32":
            data[pos : pos + 4] = struct.pack("<I", int(arg))[: len(data) - pos]  # type: ignore[call-overload]
        elif kind == "truncate":
            del data[pos:]
        elif kind in ("insert", "text"):
            data[pos:pos] = arg  # type: ignore[assignment]
        elif kind == "delete":
            del data[pos : pos + int(arg)]  # type: ignore[call-overload]
        elif kind == "repeat":
            data[pos:pos] = data[pos : pos + int(arg)]  # type: ignore[call-overload]
    return bytes(data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
@given(seed=st.integers(0, len(SEEDS) - 1), muts=st.lists(mutation, min_size=1, max_size=4))
def test_mutated_lists(seed: int, muts: list[tuple[str, int, object]]) -> None:
    synth.exercise(mutate(seed, muts))


@settings(max_examples=300, deadline=None, database=None)
@given(st.binary(max_size=300))
def test_random_bytes(data: bytes) -> None:
    synth.exercise(data)


@settings(max_examples=200, deadline=None, database=None)
@given(st.text(alphabet="0123456789abcdef :|-\n_imangsh/", max_size=200))
def test_random_ascii(text: str) -> None:
    synth.exercise(text.encode())


def test_seeds_pass_the_oracle() -> None:
    for s in SEEDS:
        synth.exercise(s)


def test_hostile_lengths_are_linear() -> None:
    """A million-entry claim in a small buffer, and long runs of tiny entries, stay cheap."""
    lying = struct.pack("<I", 10) + bytes(20) + struct.pack("<I", 6) + b"ima-ng" + struct.pack("<I", 0xFFFFFFF0)
    with pytest.raises(ImaLogError):
        parse_ima_log(lying * 1000)
    one = synth.binary([synth.unknown("")])
    t = time.perf_counter()
    log = parse_ima_log(one * 20000)
    assert len(log) == 20000 and time.perf_counter() - t < 30  # generous: catches quadratic blowups
    text = synth.ascii([synth.ima_ng("/a")]) * 20000
    assert len(parse_ima_log(text)) == 20000


ATHERIS_SCRIPT = Path(__file__).parent / "fuzz" / "fuzz_ima.py"


@pytest.mark.skipif(importlib.util.find_spec("atheris") is None, reason="atheris not installed")
def test_atheris_smoke() -> None:
    """A very short coverage-guided run (the hypothesis tests above always run)."""
    proc = subprocess.run([sys.executable, str(ATHERIS_SCRIPT), "-runs=300"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
