"""Coverage-guided fuzzing of the IMA list parser and verifier with atheris.

    python tests/fuzz/fuzz_ima.py -max_total_time=60        # time-boxed run
    python tests/fuzz/fuzz_ima.py -runs=100000 CORPUS_DIR    # keep a corpus

Synthesized lists of every template and the real lines in tests/data/ima seed the corpus.
The oracle is ima_synth.exercise, shared with tests/test_ima_fuzz.py. Requires atheris.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the synthesizers
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the harness

import atheris

with atheris.instrument_imports(include=["tpm2_attest"]):
    import ima_synth
    import tpm2_attest.ima
    import tpm2_attest.verify.ima  # noqa: F401


if __name__ == "__main__":
    from harness import run

    run("ima", ima_synth.exercise, ima_synth.seed_lists)
