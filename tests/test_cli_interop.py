"""The verifier commands read what other tools write: tpm2-tools' ak.pub/ek.pub, PEM and DER
keys and certificates, tpm2_quote's message/signature/PCR files in every format, and
tpm2_pcrread's output as expected values. Made by the real tpm2-tools against swtpm."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import given, settings
from hypothesis import strategies as st

from tpm2_attest.cli import EXIT_FAIL, EXIT_OK, EXIT_USAGE
from tpm2_attest.embedded import EmbeddedSwtpm, swtpm_available
from tpm2_attest.evidence import Quote
from tpm2_attest.tpm2.keys import public_key_from_public
from tpm2_attest.tpm2.marshal import ParseError
from tpm2_attest.tpm2.structures import TPMT_SIGNATURE
from tpm2_attest.tpm2.tools_formats import (
    pcr_file_format,
    read_pcr_file,
    signature_from_plain,
    write_pcr_file,
)

NONCE = "c0ffee0123456789"
Tools = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def sw() -> Iterator[EmbeddedSwtpm]:
    """A swtpm of this module's own: the tests extend its PCR 16."""
    if not swtpm_available() or shutil.which("tpm2_quote") is None:
        pytest.skip("needs swtpm and tpm2-tools")
    with EmbeddedSwtpm() as s:
        yield s


@pytest.fixture(scope="module")
def tools(sw: EmbeddedSwtpm) -> Tools:
    """Run one tpm2-tools command, then flush what it left loaded (no resource manager)."""

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, **sw.tools_env()}
        res = subprocess.run(list(args), env=env, capture_output=True, text=True, timeout=60)
        subprocess.run(["tpm2_flushcontext", "-t"], env=env, capture_output=True, timeout=60)
        if check and res.returncode:
            pytest.fail(f"{' '.join(args)}: {res.stderr}")
        return res

    return run


@pytest.fixture(scope="module")
def files(tools: Tools, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """EK, an RSA and an ECC AK, and quotes in tss/plain signature and serialized/values PCR
    formats, all written by tpm2-tools."""
    d = tmp_path_factory.mktemp("tpm2-tools")
    tools("tpm2_pcrextend", f"16:sha256={hashlib.sha256(b'module').hexdigest()}")
    tools("tpm2_createek", "-c", f"{d}/ek.ctx", "-G", "rsa", "-u", f"{d}/ek.pub")
    tools("tpm2_readpublic", "-c", f"{d}/ek.ctx", "-f", "pem", "-o", f"{d}/ek.pem")
    for name, alg, scheme in (("ak", "rsa", "rsassa"), ("akecc", "ecc", "ecdsa")):
        tools("tpm2_createak", "-C", f"{d}/ek.ctx", "-c", f"{d}/{name}.ctx", "-G", alg, "-g", "sha256",
              "-s", scheme, "-u", f"{d}/{name}.pub", "-n", f"{d}/{name}.name", "-r", f"{d}/{name}.priv")
        tools("tpm2_readpublic", "-c", f"{d}/{name}.ctx", "-f", "pem", "-o", f"{d}/{name}.pem")
        tools("tpm2_readpublic", "-c", f"{d}/{name}.ctx", "-f", "der", "-o", f"{d}/{name}.der")
    sel = "sha256:0,1,2,16"
    tools("tpm2_quote", "-c", f"{d}/ak.ctx", "-l", sel, "-q", NONCE, "-m", f"{d}/q.msg",
          "-s", f"{d}/q.sig", "-o", f"{d}/q.pcrs")
    tools("tpm2_quote", "-c", f"{d}/ak.ctx", "-l", sel, "-q", NONCE, "-m", f"{d}/qp.msg",
          "-s", f"{d}/qp.sig", "-f", "plain", "-o", f"{d}/qp.pcrs", "-F", "values")
    tools("tpm2_quote", "-c", f"{d}/akecc.ctx", "-l", "sha256:all", "-q", NONCE, "-m", f"{d}/qe.msg",
          "-s", f"{d}/qe.sig", "-f", "plain", "-o", f"{d}/qe.pcrs")
    tools("tpm2_pcrread", sel, "-o", f"{d}/golden.values")
    tools("tpm2_pcrread", sel, "-o", f"{d}/golden.ser", "-F", "serialized")
    return d


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tpm2_attest.cli", *args], capture_output=True,
                          text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"})


# -- tpm2_quote's files in verify-quote ---------------------------------------------------------


@pytest.mark.parametrize(("ak", "quote"), [
    ("ak.pub", "q"),      # TPM2B_PUBLIC, tss signature, serialized PCRs (tpm2_quote's defaults)
    ("ak.pem", "q"),      # a PEM key: the scheme comes from the TPMT_SIGNATURE
    ("ak.der", "qp"),     # DER key, plain RSA signature, values PCR file
    ("ak.pub", "qp"),
    ("akecc.pub", "qe"),  # ECC AK, plain (DER ECDSA-Sig-Value) signature, all 24 PCRs
    ("akecc.pem", "qe"),
])
def test_verify_quote_takes_tpm2_quote_files(files: Path, ak: str, quote: str) -> None:
    args = ["verify-quote", "--json", "--ak", str(files / ak), "--message", str(files / f"{quote}.msg"),
            "--signature", str(files / f"{quote}.sig"), "--pcrs-file", str(files / f"{quote}.pcrs")]
    res = run_cli(*args, "--nonce", NONCE)
    assert res.returncode == EXIT_OK, res.stdout + res.stderr
    out = json.loads(res.stdout)
    assert out["ok"] and out["bank"] == "sha256" and "16" in out["pcrs"]
    assert out["pcrs"]["16"] != "00" * 32  # the extended PCR, read from tpm2-tools' file
    res = run_cli(*args, "--nonce", "00" + NONCE[2:])
    assert res.returncode == EXIT_FAIL and json.loads(res.stdout)["reason"] == "NONCE_MISMATCH"


def test_tpm2_checkquote_agrees(files: Path, tools: Tools) -> None:
    """The independent verifier accepts the same files, so ours is not reading them loosely."""
    tools("tpm2_checkquote", "-u", str(files / "ak.pem"), "-m", str(files / "q.msg"), "-s",
          str(files / "q.sig"), "-f", str(files / "q.pcrs"), "-g", "sha256", "-q", NONCE)


def test_pcr_values_that_do_not_match_the_quote_fail(files: Path, tmp_path: Path) -> None:
    pcrs = bytearray((files / "qp.pcrs").read_bytes())
    pcrs[-1] ^= 1  # PCR 16's last byte
    (tmp_path / "bad.pcrs").write_bytes(pcrs)
    res = run_cli("verify-quote", "--ak", str(files / "ak.pub"), "--message", str(files / "qp.msg"),
                  "--signature", str(files / "qp.sig"), "--pcrs-file", str(tmp_path / "bad.pcrs"),
                  "--nonce", NONCE)
    assert res.returncode == EXIT_FAIL and "PCR_DIGEST_MISMATCH" in res.stderr


def test_expected_pcrs_from_tpm2_pcrread_and_inline(files: Path) -> None:
    base = ["verify-quote", "--ak", str(files / "ak.pub"), "--message", str(files / "q.msg"),
            "--signature", str(files / "q.sig"), "--pcrs-file", str(files / "q.pcrs"), "--nonce", NONCE]
    for golden in ("golden.values", "golden.ser"):
        res = run_cli(*base, "--expect-pcrs", str(files / golden))
        assert res.returncode == EXIT_OK and "expected values match" in res.stdout, res.stderr
    pcr16 = read_pcr_file((files / "q.pcrs").read_bytes())["sha256"][16].hex()
    assert run_cli(*base, "--expect-pcr", f"sha256:16={pcr16}").returncode == EXIT_OK
    res = run_cli(*base, "--expect-pcr", f"sha256:16={'00' * 32}")
    assert res.returncode == EXIT_FAIL and "PCR_VALUE_MISMATCH" in res.stderr and "sha256:16" in res.stderr
    res = run_cli(*base, "--expect-pcr", "sha256:7=00")
    assert res.returncode == EXIT_USAGE and "32 bytes" in res.stderr
    res = run_cli(*base, "--expect-pcr", "sha256:0,1=00")
    assert res.returncode == EXIT_USAGE and "BANK:INDEX=HEX" in res.stderr


def test_message_needs_its_companions(files: Path) -> None:
    res = run_cli("verify-quote", "--ak", str(files / "ak.pub"), "--message", str(files / "q.msg"))
    assert res.returncode == EXIT_USAGE and "--message needs --signature and --pcrs-file" in res.stderr


# -- keys and AKs in every form ------------------------------------------------------------------


def test_verify_ak_takes_tpm2_tools_ak_pub(files: Path) -> None:
    res = run_cli("verify-ak", "--json", "--ak", str(files / "ak.pub"))
    assert res.returncode == EXIT_OK, res.stderr
    out = json.loads(res.stdout)
    name = (files / "ak.name").read_bytes()
    assert out["evidence"] == "public" and bytes.fromhex(out["name"]) == name  # tpm2_createak -n
    res = run_cli("verify-ak", "--ak", str(files / "ak.pub"), "--nonce", "00")
    assert res.returncode == EXIT_FAIL and "no creation evidence" in res.stderr


def test_verify_ak_refuses_a_bare_key_and_the_ek_clearly(files: Path) -> None:
    res = run_cli("verify-ak", "--ak", str(files / "ak.pem"))
    assert res.returncode == EXIT_FAIL and "carries no TPM attributes" in res.stderr
    res = run_cli("verify-ak", "--ak", str(files / "ek.pub"))
    assert res.returncode == EXIT_FAIL and "AK_ATTRIBUTES" in res.stderr


@pytest.mark.parametrize("command", [
    ["verify-ak", "--ak", "{bad}"],
    ["verify-quote", "--ak", "{bad}", "--message", "{bad}", "--signature", "{bad}", "--pcrs-file", "{bad}"],
    ["make-credential", "--ek-public", "{bad}", "--ak-name", "00", "--out", "{out}"],
])
def test_neither_public_area_nor_pem_der_is_a_verifier_error(tmp_path: Path, command: list[str]) -> None:
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x00\x17not a key at all")
    res = run_cli(*[c.format(bad=bad, out=tmp_path / "out") for c in command])
    assert res.returncode == EXIT_FAIL, res.stderr
    assert res.stderr.startswith("verification failed: MALFORMED:"), res.stderr
    assert "neither" in res.stderr and "PEM or DER" in res.stderr
    assert "made by another TPM" not in res.stderr and "BAD_BLOB" not in res.stderr


def test_malformed_quote_json_is_a_verifier_error(files: Path, tmp_path: Path) -> None:
    (tmp_path / "q.json").write_text('{"version": 1, "attest": "!!"}')
    res = run_cli("verify-quote", "--ak", str(files / "ak.pub"), "--quote", str(tmp_path / "q.json"))
    assert res.returncode == EXIT_FAIL and res.stderr.startswith("verification failed: MALFORMED: --quote")
    assert "made by another TPM" not in res.stderr


def test_an_ek_given_as_the_ak_is_refused_naming_the_option(files: Path) -> None:
    res = run_cli("verify-ak", "--ak", str(files / "ek.pub"))
    assert res.returncode == EXIT_FAIL
    assert res.stderr.startswith(f"verification failed: AK_ATTRIBUTES: --ak {files / 'ek.pub'}: objectAttributes")


def test_a_tpm2_tools_context_file_as_ak_says_what_to_give_instead(files: Path) -> None:
    res = run_cli("verify-quote", "--ak", str(files / "ak.ctx"), "--message", str(files / "q.msg"),
                  "--signature", str(files / "q.sig"), "--pcrs-file", str(files / "q.pcrs"))
    assert res.returncode == EXIT_FAIL and "tpm2-tools context or credential file" in res.stderr
    assert "tpm2_createak -u" in res.stderr and "Traceback" not in res.stderr


def test_pem_and_bad_pem(files: Path, tmp_path: Path) -> None:
    (tmp_path / "x.pem").write_text("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    res = run_cli("verify-quote", "--ak", str(tmp_path / "x.pem"), "--message", str(files / "q.msg"),
                  "--signature", str(files / "q.sig"), "--pcrs-file", str(files / "q.pcrs"))
    assert res.returncode == EXIT_FAIL and "PEM data that is neither a public key nor a certificate" in res.stderr


def test_make_credential_takes_pem_der_and_certificate_eks(tcti: str, tmp_path: Path) -> None:
    """A challenge for our TPM's EK given as PEM, DER or its certificate is answered by it."""
    ak = tmp_path / "ak.blob"
    assert run_cli("provision-ak", "--tcti", tcti, "--out", str(ak)).returncode == 0
    assert run_cli("ek", "--tcti", tcti, "--out-public", str(tmp_path / "ek.pub"),
                   "--out-cert", str(tmp_path / "ek.crt")).returncode == 0
    key = public_key_from_public((tmp_path / "ek.pub").read_bytes())
    (tmp_path / "ek.pem").write_bytes(key.public_bytes(serialization.Encoding.PEM,
                                                       serialization.PublicFormat.SubjectPublicKeyInfo))
    (tmp_path / "ek.der").write_bytes(key.public_bytes(serialization.Encoding.DER,
                                                       serialization.PublicFormat.SubjectPublicKeyInfo))
    for ek in ("ek.pem", "ek.der", "ek.crt"):
        ch, sec, got = tmp_path / f"{ek}.ch", tmp_path / f"{ek}.secret", tmp_path / f"{ek}.got"
        res = run_cli("make-credential", "--ek-public", str(tmp_path / ek), "--ak", str(ak),
                      "--out", str(ch), "--secret-out", str(sec))
        assert res.returncode == EXIT_OK, res.stderr
        res = run_cli("activate", "--tcti", tcti, "--ak", str(ak), "--challenge", str(ch), "--out", str(got))
        assert res.returncode == EXIT_OK, res.stderr
        assert got.read_bytes() == sec.read_bytes()
    res = run_cli("make-credential", "--ek-public", str(tmp_path / "ek.pem"), "--ak", str(ak),
                  "--out", str(tmp_path / "ek.pem.ch"))
    assert res.returncode == EXIT_USAGE and "exists; pass --force" in res.stderr


def test_make_credential_for_a_tpm2_tools_ak(files: Path, tmp_path: Path) -> None:
    """--ak takes tpm2-tools' ak.pub: the challenge binds the Name tpm2_createak printed."""
    out = tmp_path / "ch.json"
    res = run_cli("make-credential", "--ek-public", str(files / "ek.pub"), "--ak", str(files / "ak.pub"),
                  "--out", str(out), "--tpm2-tools")
    assert res.returncode == EXIT_OK, res.stderr
    res = run_cli("make-credential", "--ek-public", str(files / "ek.pub"), "--ak", str(files / "ak.pem"),
                  "--out", str(tmp_path / "ch2"))
    assert res.returncode == EXIT_FAIL and "has no TPM Name" in res.stderr


# -- the file formats themselves ---------------------------------------------------------------


def test_formats_of_real_files(files: Path) -> None:
    assert pcr_file_format((files / "q.pcrs").read_bytes()) == "serialized"
    assert pcr_file_format((files / "golden.ser").read_bytes()) == "serialized"
    assert pcr_file_format((files / "qp.pcrs").read_bytes()) is None  # values need a selection
    assert len((files / "qe.pcrs").read_bytes()) == 132 + 4 + 3 * 532  # 24 PCRs: 3 digest lists


def test_our_serialized_file_is_tpm2_tools_byte_for_byte(files: Path) -> None:
    data = (files / "q.pcrs").read_bytes()
    assert write_pcr_file(read_pcr_file(data), "serialized") == data
    data = (files / "qe.pcrs").read_bytes()
    assert write_pcr_file(read_pcr_file(data), "serialized") == data


def test_marshaled_format_matches_tpm2_pytss(files: Path, tmp_path: Path) -> None:
    types = pytest.importorskip("tpm2_pytss.types")
    values = read_pcr_file((files / "q.pcrs").read_bytes())
    digests = [values["sha256"][i] for i in sorted(values["sha256"])]
    theirs = (types.TPML_PCR_SELECTION.parse("sha256:0,1,2,16").marshal()
              + (1).to_bytes(4, "big")
              + types.TPML_DIGEST([types.TPM2B_DIGEST(d) for d in digests]).marshal())
    assert write_pcr_file(values, "marshaled") == theirs
    assert read_pcr_file(theirs) == values
    (tmp_path / "q.marshaled").write_bytes(theirs)
    res = run_cli("verify-quote", "--ak", str(files / "ak.pub"), "--message", str(files / "q.msg"),
                  "--signature", str(files / "q.sig"), "--pcrs-file", str(tmp_path / "q.marshaled"),
                  "--nonce", NONCE)
    assert res.returncode == EXIT_OK, res.stderr


def test_our_quote_passes_tpm2_checkquote(tcti: str, tools: Tools, tmp_path: Path) -> None:
    """Our quote, in tpm2-tools' files (our serialized writer), checked by tpm2_checkquote."""
    ak, q = tmp_path / "ak.blob", tmp_path / "q.json"
    assert run_cli("provision-ak", "--tcti", tcti, "--out", str(ak), "--algorithm", "rsa").returncode == 0
    assert run_cli("quote", "--tcti", tcti, "--ak", str(ak), "--pcrs", "sha256:0,1,16", "--nonce",
                   NONCE, "--out", str(q)).returncode == 0
    quote = Quote.from_json(q.read_bytes())
    from tpm2_attest.evidence import AkBlob
    blob = AkBlob.load(ak.read_bytes())
    (tmp_path / "ak.der").write_bytes(blob.ak_public_der)
    (tmp_path / "ak.pem").write_bytes(serialization.load_der_public_key(blob.ak_public_der).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    (tmp_path / "m").write_bytes(quote.attest)
    (tmp_path / "s").write_bytes(quote.signature)
    (tmp_path / "p").write_bytes(write_pcr_file(quote.pcrs, "serialized"))
    tools("tpm2_checkquote", "-u", str(tmp_path / "ak.pem"), "-m", str(tmp_path / "m"), "-s",
          str(tmp_path / "s"), "-f", str(tmp_path / "p"), "-g", "sha256", "-q", NONCE)


@pytest.mark.parametrize("data", [
    b"", b"\x01\x00\x00\x00", bytes(668), b"\x01\x00\x00\x00" + bytes(664),
    (1).to_bytes(4, "little") + b"\x0b\x00\x04" + bytes(661),
    (2**31).to_bytes(4, "big") + bytes(20), b"\xff" * 10000,
])
def test_hostile_pcr_files_raise_parse_error(data: bytes) -> None:
    with pytest.raises(ParseError):
        read_pcr_file(data, [(0x000B, [0, 1])])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000), st.sampled_from([None, [(0x000B, [0, 1])], [(0x0004, list(range(24)))]]))
def test_pcr_file_reader_on_random_bytes(data: bytes, selection: list[tuple[int, list[int]]] | None) -> None:
    try:
        out = read_pcr_file(data, selection)
    except ParseError:
        return
    assert all(isinstance(v, bytes) for bank in out.values() for v in bank.values())


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.sampled_from([(0x0014, 256), (0x0018, 32), (0x0018, 48)]))
def test_plain_signature_reader_on_random_bytes(data: bytes, scheme: tuple[int, int]) -> None:
    try:
        sig = signature_from_plain(data, scheme[0], 0x000B, size=scheme[1])
    except ParseError:
        return
    parsed = TPMT_SIGNATURE.from_bytes(sig)  # only ParseError, or a well-formed signature
    assert parsed.sig_alg == scheme[0] and len(parsed.sig or parsed.r) == scheme[1]


def test_serialized_write_read_round_trip_many_banks() -> None:
    pcrs = {"sha1": {i: bytes([i]) * 20 for i in range(24)}, "sha256": {3: b"\x03" * 32, 17: b"\x11" * 32}}
    for fmt in ("serialized", "marshaled"):
        assert read_pcr_file(write_pcr_file(pcrs, fmt)) == pcrs
    sel = [(0x0004, list(range(24))), (0x000B, [3, 17])]
    assert read_pcr_file(write_pcr_file(pcrs, "values"), sel) == pcrs


# -- credentials both ways -----------------------------------------------------------------------


def test_our_credential_for_a_tpm2_tools_ak_activates_with_tpm2_activatecredential(
        files: Path, tools: Tools, tmp_path: Path) -> None:
    """make-credential --ak-name @FILE takes the binary Name tpm2_createak -n wrote, and
    --tpm2-tools writes what tpm2_activatecredential reads (the 0xBADCC0DE file)."""
    ch, secret, got = tmp_path / "cred.bin", tmp_path / "secret", tmp_path / "got"
    res = run_cli("make-credential", "--ek-public", str(files / "ek.pub"), "--ak-name", f"@{files / 'ak.name'}",
                  "--tpm2-tools", "--out", str(ch), "--secret-out", str(secret))
    assert res.returncode == EXIT_OK, res.stderr
    assert ch.read_bytes()[:8] == bytes.fromhex("badcc0de00000001")
    session = tmp_path / "session.ctx"
    tools("tpm2_startauthsession", "--policy-session", "-S", str(session))
    try:
        tools("tpm2_policysecret", "-S", str(session), "-c", "e")
        tools("tpm2_activatecredential", "-c", str(files / "ak.ctx"), "-C", str(files / "ek.ctx"),
              "-i", str(ch), "-o", str(got), "-P", f"session:{session}")
    finally:
        tools("tpm2_flushcontext", str(session), check=False)
    assert got.read_bytes() == secret.read_bytes()


def test_ak_name_forms_and_a_name_that_is_not_one(files: Path, tmp_path: Path) -> None:
    """--ak-name as hex equals --ak-name @FILE; a wrong Name is refused naming --ak-name."""
    name = (files / "ak.name").read_bytes()
    out = tmp_path / "c.json"
    assert run_cli("make-credential", "--ek-public", str(files / "ek.pub"), "--ak-name", name.hex(),
                   "--out", str(out)).returncode == EXIT_OK
    (tmp_path / "short.name").write_bytes(name[:10])
    for value in ("000b00", f"@{tmp_path / 'short.name'}"):
        res = run_cli("make-credential", "--ek-public", str(files / "ek.pub"), "--ak-name", value,
                      "--out", str(tmp_path / "x"))
        assert res.returncode == EXIT_FAIL, res.stderr
        assert f"--ak-name {value}:" in res.stderr and "not a TPM object Name" in res.stderr
        assert "ak_name of" not in res.stderr  # the Python parameter


def test_tpm2_makecredential_blob_activates_with_our_activate(tcti: str, tools: Tools,
                                                               tmp_path: Path) -> None:
    """tpm2_makecredential (no TPM) for our AK's Name and our EK public: `activate` answers it."""
    ak, ek = tmp_path / "ak.blob", tmp_path / "ek.pub"
    res = run_cli("provision-ak", "-T", tcti, "--out", str(ak), "--json")
    assert res.returncode == EXIT_OK, res.stderr
    name = json.loads(res.stdout)["name"]
    assert run_cli("ek", "-T", tcti, "--out-public", str(ek)).returncode == EXIT_OK
    (tmp_path / "secret").write_bytes(b"sixteen byte key")
    tools("tpm2_makecredential", "-T", "none", "-u", str(ek), "-s", str(tmp_path / "secret"),
          "-n", name, "-o", str(tmp_path / "cred.bin"))
    res = run_cli("activate", "-T", tcti, "--ak", str(ak), "--challenge", str(tmp_path / "cred.bin"))
    assert res.returncode == EXIT_OK, res.stderr
    assert bytes.fromhex(res.stdout.strip()) == b"sixteen byte key"


@pytest.mark.parametrize(("broken", "says"), [
    ("--message", "TPMS_ATTEST of 0 bytes"),
    ("--signature", "neither a TPMT_SIGNATURE"),
    ("--pcrs-file", "PCR file: 0 bytes are not a serialized or marshaled tpm2-tools PCR file"),
])
def test_a_broken_tpm2_quote_file_is_named_by_its_option(files: Path, tmp_path: Path, broken: str,
                                                          says: str) -> None:
    """An empty (truncated) file of tpm2_quote's set is a MALFORMED naming the option it came
    from, as every other input file is."""
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    given = {"--message": files / "q.msg", "--signature": files / "q.sig", "--pcrs-file": files / "q.pcrs",
             broken: empty}
    res = run_cli("verify-quote", "--ak", str(files / "ak.pub"), "--nonce", NONCE,
                  *[str(x) for option, path in given.items() for x in (option, path)])
    assert res.returncode == EXIT_FAIL, res.stderr
    assert res.stderr.startswith(f"verification failed: MALFORMED: {broken} {empty}: {says}"), res.stderr
    res = run_cli("verify-quote", "--ak", str(files / "ak.pub"), "--message", str(files / "q.msg"),
                  "--signature", str(files / "q.sig"), "--pcrs-file", str(files / "q.pcrs"),
                  "--nonce", NONCE, "--expect-pcrs", str(files / "q.msg"))
    assert res.returncode == EXIT_USAGE and f"--expect-pcrs {files / 'q.msg'}: PCR file" in res.stderr


# -- our files in tpm2-tools -----------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["rsa", "ecc"])
def test_our_quote_files_pass_tpm2_checkquote_and_tpm2_print(tcti: str, tools: Tools, tmp_path: Path,
                                                             algorithm: str) -> None:
    """provision-ak --out-public and quote --message/--signature/--pcrs-file write what
    tpm2_createak -u and tpm2_quote -m/-s/-o write: tpm2_checkquote and tpm2_print read them,
    and so does our verify-quote."""
    d = tmp_path
    res = run_cli("provision-ak", "-T", tcti, "--out", str(d / "ak.blob"), "--out-public", str(d / "ak.pub"),
                  "--algorithm", algorithm)
    assert res.returncode == EXIT_OK, res.stderr
    res = run_cli("quote", "-T", tcti, "--ak", str(d / "ak.blob"), "--pcrs", "sha256:0,1,7,16", "--nonce", NONCE,
                  "--message", str(d / "q.msg"), "--signature", str(d / "q.sig"), "--pcrs-file", str(d / "q.pcrs"))
    assert res.returncode == EXIT_OK, res.stderr
    assert Quote.from_json(res.stdout.encode()).attest == (d / "q.msg").read_bytes()  # the JSON still on stdout
    tools("tpm2_checkquote", "-u", str(d / "ak.pub"), "-m", str(d / "q.msg"), "-s", str(d / "q.sig"),
          "-f", str(d / "q.pcrs"), "-g", "sha256", "-q", NONCE)
    bad = tools("tpm2_checkquote", "-u", str(d / "ak.pub"), "-m", str(d / "q.msg"), "-s", str(d / "q.sig"),
                "-f", str(d / "q.pcrs"), "-g", "sha256", "-q", "00" + NONCE[2:], check=False)
    assert bad.returncode != 0  # tpm2_checkquote really checks the nonce of our files
    printed = tools("tpm2_print", "-t", "TPMS_ATTEST", str(d / "q.msg")).stdout
    assert "magic: ff544347" in printed and NONCE in printed
    assert "name-alg" in tools("tpm2_print", "-t", "TPM2B_PUBLIC", str(d / "ak.pub")).stdout
    res = run_cli("verify-quote", "--ak", str(d / "ak.pub"), "--message", str(d / "q.msg"),
                  "--signature", str(d / "q.sig"), "--pcrs-file", str(d / "q.pcrs"), "--nonce", NONCE)
    assert res.returncode == EXIT_OK, res.stderr


def test_quote_pcrs_format_values(tcti: str, tmp_path: Path) -> None:
    """--pcrs-format values is tpm2_quote -F values: the digests alone, in selection order."""
    ak = tmp_path / "ak.blob"
    assert run_cli("provision-ak", "-T", tcti, "--out", str(ak)).returncode == EXIT_OK
    res = run_cli("quote", "-T", tcti, "--ak", str(ak), "--pcrs", "sha256:1,0", "--nonce", NONCE,
                  "--pcrs-file", str(tmp_path / "v"), "--pcrs-format", "values", "--out", str(tmp_path / "q.json"))
    assert res.returncode == EXIT_OK and res.stdout == "", res.stderr
    quote = Quote.from_json((tmp_path / "q.json").read_bytes())
    assert (tmp_path / "v").read_bytes() == quote.pcrs["sha256"][0] + quote.pcrs["sha256"][1]
