"""Coverage-guided fuzzing of the event-log parser with atheris (libFuzzer for Python).

    python tests/fuzz/fuzz_eventlog.py -max_total_time=60        # time-boxed CI run
    python tests/fuzz/fuzz_eventlog.py -runs=100000 CORPUS_DIR    # keep a corpus

The real and synthesized logs seed the corpus (written to a temporary directory unless a
corpus directory is given). The oracle is eventlog_synth.exercise, shared with the hypothesis
tests in tests/test_eventlog_fuzz.py. Requires ``pip install atheris``; nothing else imports
this file.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the synthesizers
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the harness

import atheris

with atheris.instrument_imports(include=["tpm2_attest"]):
    import eventlog_synth
    import tpm2_attest.eventlog
    import tpm2_attest.verify.eventlog  # noqa: F401


if __name__ == "__main__":
    from harness import run

    run("eventlog", eventlog_synth.exercise, eventlog_synth.seed_logs)
