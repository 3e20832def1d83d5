"""The documentation is tested: its Python examples run against swtpm, its test vectors verify,
and its tables cover every ``verify.Reason``, every ``ErrorCode`` and every CLI command.

Conventions for ```python blocks in README.md and docs/*.md (docs/index.md says the same):

- the blocks of one file run in order, in one namespace, as a reader would type them;
- ``Tpm.open()`` reaches a fresh swtpm per file through ``$TPM2_ATTEST_TCTI``, and the variable
  ``tcti`` holds the same TCTI string; the working directory is an empty temporary one;
- a block whose first line is ``# doc-test: skip <reason>`` is not run (the reason is required).

The test vectors of docs/formats.md were captured from swtpm (AK blobs, a quote) or computed from
fixed inputs (a credential challenge). ``python tests/test_docs.py`` prints a fresh vectors
section; the tests parse the one in the document and check it byte for byte.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import chdir
from pathlib import Path
from typing import Any

import pytest

from tpm2_attest import AkBlob, CredentialChallenge, ErrorCode, Quote, verify
from tpm2_attest.embedded import EmbeddedSwtpm, swtpm_available
from tpm2_attest.tpm2.constants import TPM_ALG, TPM_ST

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
OWN_DOCS = ("index.md", "concepts.md", "formats.md", "verifier.md", "errors.md", "linux.md",
            "cli.md", "swtpm.md", "trust.md")
FOREIGN_DOCS: dict[str, str] = {}
"""Docs whose examples this test does not run, and why (their owners test them elsewhere)."""

FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)
SKIP = re.compile(r"#\s*doc-test:\s*skip\b\s*(.*)")


def python_blocks(path: Path) -> list[tuple[int, str]]:
    """(line number, code) of each ```python block."""
    text = path.read_text()
    return [(text.count("\n", 0, m.start()) + 1, m.group(2))
            for m in FENCE.finditer(text) if m.group(1) == "python"]


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


# -- examples run against swtpm ---------------------------------------------------------------


@pytest.mark.parametrize("path", [p for p in doc_files() if python_blocks(p)], ids=lambda p: p.name)
def test_python_examples_run(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = python_blocks(path)
    if path.name in FOREIGN_DOCS:
        pytest.skip(FOREIGN_DOCS[path.name])
    if not swtpm_available():
        pytest.skip("swtpm is not installed")
    with EmbeddedSwtpm() as sw:
        monkeypatch.setenv("TPM2_ATTEST_TCTI", sw.tcti)
        namespace: dict[str, Any] = {"__name__": "__doc_example__", "tcti": sw.tcti}
        with chdir(tmp_path):
            for line, code in blocks:
                first = code.lstrip().splitlines()[0] if code.strip() else ""
                skip = SKIP.match(first)
                if skip:
                    assert skip.group(1).strip(), f"{path.name}:{line}: doc-test skip needs a reason"
                    continue
                try:
                    exec(compile(code, f"{path.name}:{line}", "exec"), namespace)
                except Exception as exc:
                    raise AssertionError(f"the example at {path.name}:{line} failed: "
                                         f"{type(exc).__name__}: {exc}") from exc


def test_own_docs_exist_and_links_resolve() -> None:
    for name in OWN_DOCS:
        assert (DOCS / name).is_file(), name
    link = re.compile(r"\]\(([^)#\s]+)(#[^)]*)?\)")
    for path in doc_files():
        for target, _anchor in link.findall(path.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            resolved = (path.parent / target).resolve()
            assert resolved.exists(), f"{path.name}: broken link {target}"
            assert resolved.is_relative_to(ROOT), f"{path.name}: {target} lies outside the repository"


def test_the_repository_stands_alone() -> None:
    """No tracked file reads or links a folder beside the checkout: a clone is the whole project."""
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=False)
    if tracked.returncode != 0:
        pytest.skip("not a git checkout (an sdist): nothing beside it to depend on")
    outside = re.compile(rb"\.\./shared|/work/(?:shared)|parents\[2\] / \"shared\"")
    offenders = [name for name in tracked.stdout.decode().split("\0")
                 if name and (ROOT / name).is_file() and outside.search((ROOT / name).read_bytes())]
    assert offenders == [], f"files that reach outside the repository: {offenders}"


# -- tables that must stay complete -----------------------------------------------------------


def _table_names(path: Path) -> set[str]:
    """Names in the first cell of Markdown table rows: | `NAME` | ..."""
    return set(re.findall(r"^\|\s*`([A-Z][A-Z0-9_]*)`\s*\|", path.read_text(), re.M))


def test_every_reason_is_documented() -> None:
    documented = _table_names(DOCS / "verifier.md")
    reasons = {r.value for r in verify.Reason}
    assert reasons - documented == set(), "undocumented verify.Reason values in docs/verifier.md"
    assert documented - reasons == set(), "docs/verifier.md documents reasons that do not exist"


def test_every_error_code_is_documented() -> None:
    documented = _table_names(DOCS / "errors.md")
    codes = {c.value for c in ErrorCode}
    assert codes - documented == set(), "undocumented ErrorCode values in docs/errors.md"
    assert documented - codes == set(), "docs/errors.md documents codes that do not exist"


def test_every_fetch_failure_is_documented() -> None:
    from tpm2_attest.trust import FetchFailure

    documented = _table_names(DOCS / "trust.md")
    assert {f.value for f in FetchFailure} == documented, "docs/trust.md: the FetchFailure table"


def test_every_cli_command_and_probe_option_is_documented() -> None:
    from tpm2_attest.cli import build_parser
    from tpm2_attest.probe import CHOICES

    text = (DOCS / "cli.md").read_text()
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, command in sub.choices.items():
        assert f"`tpm2-attest {name}" in text, f"docs/cli.md does not document '{name}'"
        if name == "probe":
            for action in command._actions:
                for opt in action.option_strings:
                    if opt.startswith("--") and opt != "--help":
                        assert f"`{opt}" in text, f"docs/cli.md: probe option {opt}"
    for step in CHOICES:
        assert f"`{step}`" in text, f"docs/cli.md: probe step {step}"


# -- test vectors -------------------------------------------------------------------------------

VECTOR = re.compile(r"<!-- vector:(?P<name>[\w-]+) -->\n(?P<body>.*?)<!-- /vector -->\n", re.S)


def _hex_lines(data: bytes, width: int = 64) -> str:
    return "\n".join(textwrap.wrap(data.hex(), width))


def _alg(alg: int) -> str:
    try:
        return f"TPM_ALG_{TPM_ALG(alg).name}"
    except ValueError:
        return f"0x{alg:04x}"


def render_blob(name: str, title: str, raw: bytes, nonce: bytes) -> str:
    """The Markdown of one AK blob vector: inputs, a field table with offsets, the hex."""
    blob = AkBlob.from_bytes(raw)
    area = blob.public_area
    attest = blob.attest_struct
    sig = blob.signature_struct
    cd = blob.creation_data_struct
    key = blob.key_name.encode()
    fields = [
        ("magic", 4, f"`{blob.format}`"),
        ("key_name", 2 + len(key), f"`{blob.key_name}`" if key else "empty (u16 0)"),
        ("parent", 4, f"`0x{blob.parent:08x}`"),
        ("public (TPM2B_PUBLIC)", len(blob.public),
         f"{_alg(area.type)}, nameAlg {_alg(area.name_alg)}, objectAttributes "
         f"`0x{area.object_attributes:08x}`"),
        ("private (TPM2B_PRIVATE)", 2 + len(blob.private),
         f"{len(blob.private)} bytes, TPM-wrapped" if blob.private else "empty (u16 0)"),
        ("creation_data (TPM2B_CREATION_DATA)", 2 + len(blob.creation_data),
         f"outsideInfo {len(cd.outside_info)} bytes, locality {cd.locality}"),
        ("attest (TPM2B_ATTEST)", 2 + len(blob.attest),
         f"type {TPM_ST(attest.type).name}, extraData {len(attest.extra_data)} bytes"),
        ("signature (TPMT_SIGNATURE)", len(blob.signature),
         f"{_alg(sig.sig_alg)} with {_alg(sig.hash_alg)}"),
    ]
    rows, offset = [], 0
    for field_name, size, value in fields:
        rows.append(f"| {offset} | {size} | {field_name} | {value} |")
        offset += size
    assert offset == len(raw)
    return (f"<!-- vector:{name} -->\n"
            f"#### {title}\n\n"
            f"Enrollment nonce: `{nonce.hex()}`; AK Name: `{blob.name.hex()}`; {len(raw)} bytes.\n\n"
            "| offset | size | field | value |\n|---:|---:|---|---|\n" + "\n".join(rows) + "\n\n"
            f"```text\n{_hex_lines(raw)}\n```\n"
            "<!-- /vector -->\n")


def render_quote(name: str, quote: Quote, nonce: bytes) -> str:
    return (f"<!-- vector:{name} -->\n"
            "#### A quote by the TPW1 AK above\n\n"
            f"Nonce (qualifying data): `{nonce.hex()}`; PCRs 0-7 and 16 of the SHA-256 bank.\n\n"
            f"```json\n{json.dumps(quote.to_dict(), indent=2)}\n```\n"
            "<!-- /vector -->\n")


CRED_EK_SCALAR = int.from_bytes(bytes.fromhex("17" * 32), "big")
CRED_EPHEMERAL_SCALAR = int.from_bytes(bytes.fromhex("29" * 32), "big")
CRED_SECRET = bytes(range(32))


def credential_vector(ak_name: bytes) -> tuple[bytes, CredentialChallenge]:
    """A credential challenge from fixed inputs: an ECC P-256 EK (TCG template L-2) whose private
    scalar is 0x17..17, the ephemeral ECDH scalar 0x29..29, the secret 00 01 .. 1f."""
    from cryptography.hazmat.primitives.asymmetric import ec

    from tpm2_attest.backends.pcp import ek_public_from_ecc
    from tpm2_attest.tpm2 import crypto

    ek_key = ec.derive_private_key(CRED_EK_SCALAR, ec.SECP256R1()).public_key()
    ephemeral = ec.derive_private_key(CRED_EPHEMERAL_SCALAR, ec.SECP256R1())
    id_object, secret = crypto.make_credential(ek_key, ek_name_alg=TPM_ALG.SHA256, sym_bits=128,
                                               ak_name=ak_name, secret=CRED_SECRET,
                                               ephemeral_key=ephemeral)
    return ek_public_from_ecc(ek_key, "ecc"), CredentialChallenge(id_object, secret)


def render_credential(name: str, ak_name: bytes) -> str:
    ek_public, ch = credential_vector(ak_name)
    return (f"<!-- vector:{name} -->\n"
            "#### A credential challenge from fixed inputs\n\n"
            "EK: ECC NIST P-256 from the TCG template L-2 with private scalar `0x17` repeated 32 "
            "times; ephemeral ECDH scalar `0x29` repeated 32 times; AK Name: the TPW1 vector's; "
            f"secret `{CRED_SECRET.hex()}`.\n\n"
            f"EK TPM2B_PUBLIC ({len(ek_public)} bytes):\n\n```text\n{_hex_lines(ek_public)}\n```\n\n"
            f"Binary form, TPM2B_ID_OBJECT ({len(ch.credential_blob)} bytes) || "
            f"TPM2B_ENCRYPTED_SECRET ({len(ch.encrypted_secret)} bytes):\n\n"
            f"```text\n{_hex_lines(ch.to_bytes())}\n```\n"
            "<!-- /vector -->\n")


def _vector_hex(body: str) -> bytes:
    blocks = [m.group(2) for m in FENCE.finditer(body) if m.group(1) == "text"]
    return bytes.fromhex("".join(blocks[-1].split()))


def _doc_vectors() -> dict[str, str]:
    return {m.group("name"): m.group(0) for m in VECTOR.finditer((DOCS / "formats.md").read_text())}


def _nonce(body: str, label: str) -> bytes:
    m = re.search(label + r": `([0-9a-f]+)`", body)
    assert m, label
    return bytes.fromhex(m.group(1))


def test_ak_blob_vectors_parse_verify_and_match_their_tables() -> None:
    vectors = _doc_vectors()
    assert {"tpw1", "pcp2", "quote", "credential"} <= set(vectors)
    for name, fmt, title in (("tpw1", "TPW1", None), ("pcp2", "PCP2", None)):
        body = vectors[name]
        raw = _vector_hex(body)
        nonce = _nonce(body, "Enrollment nonce")
        blob = AkBlob.from_bytes(raw)
        assert blob.format == fmt and blob.to_bytes() == raw
        ak = verify.check_ak(raw, nonce=nonce)  # the creation signature over these exact bytes
        assert ak.name == blob.name
        heading = re.search(r"#### (.*)\n", body)
        assert heading
        assert render_blob(name, title or heading.group(1), raw, nonce) == body
    # The magic is not signed: the same bytes as PCP1 still check (scope is the enrollment
    # record's to keep, not the blob's to prove; docs/formats.md says so).
    pcp2 = _vector_hex(vectors["pcp2"])
    verify.check_ak(b"PCP1" + pcp2[4:], nonce=_nonce(vectors["pcp2"], "Enrollment nonce"))


def test_quote_vector_verifies() -> None:
    vectors = _doc_vectors()
    body = vectors["quote"]
    ak = verify.check_ak(_vector_hex(vectors["tpw1"]))
    (json_block,) = [m.group(2) for m in FENCE.finditer(body) if m.group(1) == "json"]
    quote = Quote.from_json(json_block)
    nonce = _nonce(body, r"Nonce \(qualifying data\)")
    res = verify.verify_quote(ak, quote, nonce=nonce)
    assert sorted(res.pcrs) == [0, 1, 2, 3, 4, 5, 6, 7, 16]
    assert render_quote("quote", quote, nonce) == body
    with pytest.raises(verify.VerificationError) as err:
        verify.verify_quote(ak, quote, nonce=bytes(32))
    assert err.value.reason == verify.Reason.NONCE_MISMATCH


def test_credential_vector_is_recomputed_exactly() -> None:
    vectors = _doc_vectors()
    ak_name = AkBlob.from_bytes(_vector_hex(vectors["tpw1"])).name
    assert render_credential("credential", ak_name) == vectors["credential"]
    raw = _vector_hex(vectors["credential"])
    ch = CredentialChallenge.from_bytes(raw)
    assert CredentialChallenge.from_bytes(ch.to_tpm2_tools()) == ch
    assert CredentialChallenge.from_json(ch.to_json()) == ch
    ek_public, _ = credential_vector(ak_name)
    # Our own make_credential accepts that EK (the public API, with random ephemeral keys).
    verify.make_credential(ek_public, ak_name)


# -- regenerating the vectors -------------------------------------------------------------------


def generate_vectors() -> Iterator[str]:
    """Capture fresh vectors from swtpm and the PCP emulator (new keys: new bytes)."""
    import tempfile

    from tpm2_attest import Tpm

    with EmbeddedSwtpm() as sw:
        nonce = bytes.fromhex("00112233445566778899aabbccddeeff")
        with Tpm.open(sw.tcti) as tpm:
            tpw1 = tpm.provision_ak(nonce=nonce)
            qnonce = bytes.fromhex("5eed" * 16)
            quote = tpm.quote(tpw1, pcrs=[0, 1, 2, 3, 4, 5, 6, 7, 16], qualifying_data=qnonce)
        yield render_blob("tpw1", "TPW1: an ECDSA P-256 AK made by swtpm", tpw1.to_bytes(), nonce)
        yield render_quote("quote", quote, qnonce)
        with tempfile.TemporaryDirectory() as state, \
                Tpm.open_pcp_emulator(sw.tcti, state, privilege="system") as tpm:
            pcp2 = tpm.provision_ak(key_name="my-app-device-ak", scope="machine", nonce=nonce)
        yield render_blob("pcp2", "PCP2: a machine-scope PCP identity key (PCP emulator over swtpm)",
                          pcp2.to_bytes(), nonce)
        yield render_credential("credential", tpw1.name)


if __name__ == "__main__":
    sys.stdout.write("\n".join(generate_vectors()))
    os._exit(0)
