"""Coverage-guided fuzzing of the IMA list parser and verifier with atheris.

    python tests/fuzz/fuzz_ima.py -max_total_time=60        # time-boxed run
    python tests/fuzz/fuzz_ima.py -runs=100000 CORPUS_DIR    # keep a corpus

Synthesized lists of every template and the real lines in tests/data/ima seed the corpus.
The oracle is ima_synth.exercise, shared with tests/test_ima_fuzz.py. Requires atheris.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import atheris

with atheris.instrument_imports(include=["tpm2_attest"]):
    import ima_synth
    import tpm2_attest.ima
    import tpm2_attest.verify.ima  # noqa: F401


def test_one_input(data: bytes) -> None:
    ima_synth.exercise(data)


def main() -> None:
    argv = list(sys.argv)
    if not any(not a.startswith("-") for a in argv[1:]):
        corpus = Path(tempfile.mkdtemp(prefix="ima-corpus-"))
        for i, seed in enumerate(ima_synth.seed_lists()):
            (corpus / f"seed{i}").write_bytes(seed)
        argv.append(str(corpus))
    if not any(a.startswith("-max_len") for a in argv):
        argv.insert(1, "-max_len=65536")
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
