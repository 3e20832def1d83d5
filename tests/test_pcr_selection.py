"""PCR selections in the tpm2-tools / tpm2-pytss text form, checked against both of them."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tpm2_attest.cli import EXIT_USAGE, build_parser, main
from tpm2_attest.evidence import Quote
from tpm2_attest.tpm2.selection import (
    PcrSelectionError,
    format_pcr_selection,
    parse_pcr_selection,
)

ALL = tuple(range(24))


@pytest.mark.parametrize(("text", "want"), [
    ("sha256:0,1,2+sha1:0", {"sha256": (0, 1, 2), "sha1": (0,)}),
    ("0-7,16", {None: (0, 1, 2, 3, 4, 5, 6, 7, 16)}),
    ("16", {None: (16,)}),
    ("sha256:all", {"sha256": ALL}),
    ("sha256:0x10", {"sha256": (16,)}),
    ("sha256:0x1,0xA", {"sha256": (1, 10)}),
    ("0x0B:1", {"sha256": (1,)}),
    ("11:1", {"sha256": (1,)}),
    ("SHA256:1", {"sha256": (1,)}),
    ("sha256 : 1 , 2", {"sha256": (1, 2)}),
    ("sha1:1+sha1:2", {"sha1": (1, 2)}),
    ("sha384:23+sha512:0-1", {"sha384": (23,), "sha512": (0, 1)}),
    ("sha256:7,0-3,3", {"sha256": (0, 1, 2, 3, 7)}),
])
def test_parses(text: str, want: dict[str | None, tuple[int, ...]]) -> None:
    got = parse_pcr_selection(text)
    assert got == want
    assert list(got) == list(want)  # banks keep the order they were named in


@pytest.mark.parametrize(("text", "says"), [
    ("sha256:016", "leading zero"),        # tpm2-tools: octal 14; tpm2-pytss: refused
    ("sha256:24", "out of range"),         # tpm2-tools: silently selects nothing
    ("sha256:0x18", "out of range"),
    ("sha256:", "no PCR index"),
    ("sha256:1,,2", "empty item"),
    ("md5:1", "unknown PCR bank"),
    ("0x0001:1", "unknown PCR bank"),      # TPM_ALG_RSA is no hash
    ("sha256:none", "none"),
    ("sha256:7-3", "backwards"),
    ("1+2", "name the bank"),
    ("sha256:1+", "empty bank selection"),
    ("", "empty"),
    ("sha256:all,1", "must stand alone"),
    ("sha256:0b1", "not a PCR index"),
    ("sha256:1.5", "not a PCR index"),
    ("sha256:-1", "not a PCR index"),
])
def test_refuses_with_a_reason(text: str, says: str) -> None:
    with pytest.raises(PcrSelectionError, match=says):
        parse_pcr_selection(text)


def test_format_round_trips() -> None:
    sel = parse_pcr_selection("sha256:0-2,16+sha1:0")
    assert format_pcr_selection(sel) == "sha256:0,1,2,16+sha1:0"
    assert parse_pcr_selection(format_pcr_selection(sel)) == sel


def _tools_indices(stdout: str) -> dict[str, tuple[int, ...]]:
    out: dict[str, list[int]] = {}
    bank = None
    for line in stdout.splitlines():
        if m := re.fullmatch(r"\s*(\w+):\s*", line):
            bank = m.group(1)
            out.setdefault(bank, [])
        elif (m := re.fullmatch(r"\s*(\d+)\s*:\s*0x[0-9A-Fa-f]+\s*", line)) and bank:
            out[bank].append(int(m.group(1)))
    return {b: tuple(sorted(v)) for b, v in out.items()}


@pytest.mark.parametrize("text", [
    "sha256:0,1,2+sha1:0", "sha256:all", "sha256:0xf", "sha256:0x1,2", "0x0B:1",
    "sha1:1+sha1:2", "sha256:23",
])
def test_same_pcrs_as_tpm2_pcrread(tpm2_tools: Any, text: str) -> None:
    """What tpm2_pcrread reads for a selection is what we select (on forms both accept)."""
    got = tpm2_tools("tpm2_pcrread", text).stdout
    ours: dict[str, set[int]] = {}
    for bank, idx in parse_pcr_selection(text).items():
        ours.setdefault(str(bank), set()).update(idx)
    assert _tools_indices(got) == {b: tuple(sorted(v)) for b, v in ours.items()}


@pytest.mark.parametrize("text", ["sha256:016", "sha256:24", "sha256:0-3", "SHA256:1", "sha256:0x10"])
def test_forms_tpm2_tools_reads_differently_are_explained(tpm2_tools: Any, text: str) -> None:
    """tpm2-tools misreads or refuses these: we either refuse them with a reason or (a range,
    any case) accept them as an extension, never pick other PCRs silently."""
    res = tpm2_tools("tpm2_pcrread", text, check=False)
    try:
        ours = parse_pcr_selection(text)
    except PcrSelectionError:
        return
    if res.returncode == 0:
        assert _tools_indices(res.stdout).get("sha256") == ours["sha256"]


@pytest.mark.parametrize("text", ["sha256:0,1,2+sha1:0", "sha256:all", "sha256:0x10",
                                  "SHA256:1", "0xb:1", "sha256 : 1 , 2", "sha256:1+sha256:2"])
def test_same_pcrs_as_tpm2_pytss(text: str) -> None:
    types = pytest.importorskip("tpm2_pytss.types")
    theirs: dict[str, set[int]] = {}
    names = {0x4: "sha1", 0xB: "sha256", 0xC: "sha384", 0xD: "sha512"}
    for s in types.TPML_PCR_SELECTION.parse(text):
        bits = bytes(s.pcrSelect)[: s.sizeofSelect]
        theirs.setdefault(names[int(s.hash)], set()).update(
            i for i in range(len(bits) * 8) if bits[i // 8] >> (i % 8) & 1)
    ours = {str(b): set(v) for b, v in parse_pcr_selection(text).items()}
    assert ours == theirs


# -- the command line --------------------------------------------------------------------------


def test_quote_takes_a_tpm2_tools_selection(tcti: str, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    ak = tmp_path / "ak.blob"
    q = tmp_path / "q.json"
    assert main(["provision-ak", "--tcti", tcti, "--out", str(ak)]) == 0
    assert main(["quote", "--tcti", tcti, "--ak", str(ak), "--pcrs", "sha1:0x10,0-2",
                 "--nonce", "aa", "--out", str(q)]) == 0
    assert {b: sorted(v) for b, v in Quote.from_json(q.read_bytes()).pcrs.items()} == {"sha1": [0, 1, 2, 16]}
    assert main(["verify-quote", "--ak", str(ak), "--quote", str(q), "--nonce", "aa"]) == 0
    capsys.readouterr()


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tpm2_attest.cli", *args], capture_output=True,
                          text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"})


@pytest.mark.parametrize(("pcrs", "says"), [
    ("0,,1", "argument --pcrs: .*empty item"),
    ("sha256:016", "argument --pcrs: .*leading zero"),
    ("sha256:x", "argument --pcrs: .*not a PCR index"),
    ("0-99", "argument --pcrs: .*out of range"),
])
def test_bad_selection_is_a_usage_error_naming_the_option(pcrs: str, says: str) -> None:
    for command in (["quote", "--ak", "x"], ["attest", "--server", "http://127.0.0.1:1", "--ak", "x"]):
        res = run_cli(*command, "--pcrs", pcrs)
        assert res.returncode == EXIT_USAGE, res.stderr
        assert re.search(says, res.stderr), res.stderr
        assert "invalid literal" not in res.stderr and "Traceback" not in res.stderr


def test_a_quote_covers_one_bank(tmp_path: Path) -> None:
    res = run_cli("quote", "--ak", str(tmp_path / "none"), "--pcrs", "sha256:0+sha1:0")
    assert res.returncode == EXIT_USAGE and "--pcrs selects banks sha256, sha1" in res.stderr
    res = run_cli("quote", "--ak", str(tmp_path / "none"), "--pcrs", "sha1:0", "--bank", "sha256")
    assert res.returncode == EXIT_USAGE and "--pcrs names bank sha1 but --bank says sha256" in res.stderr


def test_attest_parses_selections_like_quote() -> None:
    args = build_parser().parse_args(["attest", "--server", "http://x", "--ak", "f", "--pcrs",
                                      "sha256:all"])
    assert args.pcrs == {"sha256": ALL}
    args = build_parser().parse_args(["attest", "--server", "http://x", "--ak", "f"])
    assert args.pcrs == {None: tuple(range(8))} and args.bank is None


def test_json_usage_error_shape(tmp_path: Path) -> None:
    res = run_cli("quote", "--json", "--ak", str(tmp_path / "none"), "--pcrs", "sha256:0+sha1:0")
    out = json.loads(res.stdout)
    assert res.returncode == EXIT_USAGE
    assert out["ok"] is False and out["exit_code"] == EXIT_USAGE and "--pcrs" in out["usage_error"]


def test_bank_is_checked_like_a_selection_names_it(tmp_path: Path) -> None:
    """--bank takes what a selection takes for its bank (0x000B is sha256); anything else is
    a usage error naming --bank, not a TPM error after the AK was loaded."""
    for command in (["quote", "--ak", "x"], ["attest", "--server", "http://127.0.0.1:1", "--ak", "x"]):
        res = run_cli(*command, "--bank", "sha999")
        assert res.returncode == EXIT_USAGE, res.stderr
        assert "argument --bank: unknown PCR bank 'sha999'" in res.stderr, res.stderr
    args = build_parser().parse_args(["quote", "--ak", "f", "--pcrs", "sha256:7", "--bank", "0x000B"])
    assert args.bank == "sha256"
    args = build_parser().parse_args(["quote", "--ak", "f", "--bank", "SHA1"])
    assert args.bank == "sha1"
    res = run_cli("quote", "--ak", str(tmp_path / "none"), "--pcrs", "sha256:7", "--bank", "0xb")
    assert res.returncode == EXIT_USAGE and "--ak" in res.stderr  # the bank agreed: on to the AK
