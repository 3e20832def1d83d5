"""The libFuzzer driver the atheris scripts share: seed a corpus, bound the input size, run.

Seeds go to a temporary corpus directory unless the command line names one."""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import atheris


def run(name: str, exercise: Callable[[bytes], None], seeds: Callable[[], Iterable[bytes]]) -> None:
    """Fuzz ``exercise`` (the oracle: only documented errors may escape it) from ``seeds``."""
    argv = list(sys.argv)
    if not any(not a.startswith("-") for a in argv[1:]):
        corpus = Path(tempfile.mkdtemp(prefix=f"{name}-corpus-"))
        for i, seed in enumerate(seeds()):
            (corpus / f"seed{i}").write_bytes(seed)
        argv.append(str(corpus))
    if not any(a.startswith("-max_len") for a in argv):
        argv.insert(1, "-max_len=65536")
    atheris.Setup(argv, exercise)
    atheris.Fuzz()
