"""Parsing IMA measurement lists: real kernel lines, every template in every encoding, the
synthesized second opinion (tests/ima_synth.py), and every framing error typed and located."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import pytest

import ima_synth as synth
from tpm2_attest import ima
from tpm2_attest.ima import ImaLogError, parse_ima_log

DATA = Path(__file__).parent / "data" / "ima"
LIST_ALGS = ("sha1", "sha256", "sha384", "sha512")


# -- real kernel output ---------------------------------------------------------------------------


def test_real_kernel_lines_rebuild_their_template_hashes() -> None:
    """keylime's captured 5.4 lines: ima-sig with and without signatures, ima-buf (a key)."""
    log = parse_ima_log((DATA / "keylime_ima_sig.ascii").read_bytes())
    assert [e.template_name for e in log] == ["ima-sig"] * 5 + ["ima-buf"]
    for e in log:
        assert e.hash_input is not None
        assert hashlib.sha1(e.hash_input).digest() == e.template_hash, e
    first = log[0]
    assert first.path == "boot_aggregate" and first.signature is None
    assert first.digest == ima.ImaDigest("sha256", bytes.fromhex(
        "e4cb9f5709c88376b5fc3743cd88e76b9aae8f3d992d845678de5215edb31216"))
    dd = log[3]
    assert dd.path == "/usr/bin/dd" and dd.signature is not None and dd.signature[:9].hex() == "030204f3452d230100"
    key = log[5]
    assert key.path == ".ima" and key.buffer is not None and key.buffer[:2] == b"\x30\x82"
    assert log.hash_alg == "sha1" and log.format == "ascii"


def test_legacy_ima_template_hash_input_is_digest_and_padded_name() -> None:
    log = parse_ima_log((DATA / "linux_ima_wiki_legacy.ascii").read_bytes())
    (e,) = log.entries
    assert e.template_name == "ima" and e.field_ids == ("d", "n")
    assert e.hash_input == e.fields[0] + b"boot_aggregate".ljust(256, b"\0")
    assert len(e.hash_input) == 276
    assert hashlib.sha1(e.hash_input).digest() == e.template_hash
    assert e.digest is not None and e.digest.algorithm == "sha1"


# -- every template, every encoding, against the synthesizer ------------------------------------


@pytest.mark.parametrize("alg", LIST_ALGS)
@pytest.mark.parametrize("fmt", ["binary", "ascii"])
def test_every_template_parses_to_the_kernel_fields(alg: str, fmt: str) -> None:
    entries = synth.every_template()
    data = synth.binary(entries, alg) if fmt == "binary" else synth.ascii(entries, alg)
    log = parse_ima_log(data)
    assert (log.format, log.hash_alg, len(log), log.start) == (fmt, alg, len(entries), 0)
    for got, want in zip(log, entries, strict=True):
        assert got.template_name == want.template
        assert got.field_ids == tuple(f for f, _ in want.fields)
        assert got.fields == tuple(v for _, v in want.fields)
        assert got.template_hash == want.template_hash(alg)
        assert got.pcr == want.pcr
        assert got.violation is want.violation
        assert got.hash_input == want.hash_input()
        assert got.path == want.path


def test_binary_and_ascii_of_one_list_are_the_same_entries() -> None:
    entries = synth.every_template()
    b, a = parse_ima_log(synth.binary(entries)), parse_ima_log(synth.ascii(entries))
    for x, y in zip(b, a, strict=True):
        assert (x.index, x.pcr, x.template_hash, x.fields, x.template_data, x.hash_input) == \
               (y.index, y.pcr, y.template_hash, y.fields, y.template_data, y.hash_input)
    assert [e.offset for e in b][:2] == [0, len(synth.binary(entries[:1]))]
    assert [e.line for e in a][:3] == [1, 2, 3] and b[0].line is None


def test_decoded_views() -> None:
    log = parse_ima_log(synth.binary(synth.every_template()))
    by_path = {e.path: e for e in log}
    assert by_path["/usr/lib/with_space.so"].digest is not None  # the kernel's '_' for ' '
    ngv2 = by_path["/usr/bin/ngv2"].digest
    assert ngv2 is not None and (ngv2.kind, ngv2.algorithm) == ("ima", "sha256")
    assert str(ngv2).startswith("ima:sha256:")
    verity = by_path["/usr/bin/verity"]
    assert verity.digest is not None and verity.digest.kind == "verity" and verity.signature
    assert by_path["/usr/bin/sha512file"].digest.algorithm == "sha512"  # type: ignore[union-attr]
    mod = by_path["/lib/modules/mod.ko"]
    assert mod.modsig and mod.modsig_digest is not None and mod.signature is None
    plain = by_path["/lib/modules/plain.ko"]
    assert plain.modsig is None and plain.modsig_digest is None
    evm = by_path["/usr/bin/evm"]
    assert evm.field("iuid") == struct.pack("<I", 1000) and evm.field("imode") == struct.pack("<H", 0o100755)
    assert evm.field("xattrnames") == b"security.ima|security.selinux\0"
    custom = by_path["/opt/custom"]
    assert custom.template_name == "d-ng|n-ng|iuid" and custom.field_ids == ("d-ng", "n-ng", "iuid")
    kexec = by_path["kexec-cmdline"]
    assert kexec.buffer == b"root=/dev/sda1 quiet"
    tomtou = by_path["/var/tmp/tomtou"]
    assert tomtou.violation and tomtou.digest is not None and not any(tomtou.digest.digest)
    assert by_path["/usr/bin/other-pcr"].pcr == 11
    assert log.pcrs == {10, 11}
    for e in log:
        assert e.to_dict()["index"] == e.index
    assert log.to_dict()["entries"][0]["template"] == "ima"


def test_unknown_templates_keep_their_raw_fields() -> None:
    e = synth.unknown("/x")
    log = parse_ima_log(synth.binary([e]))
    (got,) = log.entries
    assert got.field_ids is None and got.fields == (b"\x01\x02\x03", b"/x\0")
    assert got.hash_input == e.data() and hashlib.sha1(got.hash_input).digest() == got.template_hash
    assert got.digest is None and got.path is None and got.field("n-ng") is None
    assert "fields" in got.to_dict()
    # ASCII: the tokens are kept, the binary encoding cannot be rebuilt
    text = f"10 {got.template_hash.hex()} future-tmpl 010203 /x\n".encode()
    (a,) = parse_ima_log(text).entries
    assert a.field_ids is None and a.fields == (b"010203", b"/x") and a.hash_input is None


def test_big_endian_lists() -> None:
    entries = synth.every_template(order=">")
    log = parse_ima_log(synth.binary(entries, order=">"))
    assert log.byteorder == "big"
    assert [e.hash_input for e in log] == [e.hash_input(">") for e in entries]
    with pytest.raises(ImaLogError):  # forced to the wrong order, it does not frame
        parse_ima_log(synth.binary(entries, order=">"), byteorder="little")


def test_per_bank_list_with_padded_sha1_template_hashes() -> None:
    """A bank the kernel's crypto lacks lists the SHA-1 template hash zero-padded."""
    entries = [synth.ima_ng("/a"), synth.ima_ng("/b")]
    log = parse_ima_log(synth.binary(entries, "sha256", padded=True))
    for got, want in zip(log, entries, strict=True):
        assert got.template_hash == hashlib.sha1(want.hash_input()).digest() + bytes(12)


def test_template_hash_algorithm_by_name() -> None:
    entries = [synth.ima_ng("/a")]
    raw = synth.binary(entries, "sha3-256")
    assert parse_ima_log(raw).hash_alg == "sha256"  # a 32-byte hash is sha256 unless told
    for name in ("sha3-256", "sha3_256", "SHA3-256"):
        assert parse_ima_log(raw, template_hash=name).hash_alg == "sha3-256"
    assert parse_ima_log(raw, template_hash="sm3_256").hash_alg == "sm3"
    with pytest.raises(ValueError, match="unknown template-hash"):
        parse_ima_log(raw, template_hash="crc32")
    assert ima.canonical("SM3_256") == "sm3" and ima.canonical("nope") is None


def test_empty_input_is_an_empty_list() -> None:
    log = parse_ima_log(b"", start=7, offset=99)
    assert len(log) == 0 and log.start == 7 and log.end == 7 and log.end_offset == 99
    assert log.replay("sha256") == bytes(32)
    assert log.replay("sha1", initial=b"\x01" * 20) == b"\x01" * 20


def test_tail_parsing_speaks_of_the_whole_list() -> None:
    entries = synth.every_template()
    raw = synth.binary(entries)
    full = parse_ima_log(raw)
    cut = full.offset_of(5)
    tail = parse_ima_log(raw[cut:], start=5, offset=cut)
    assert [e.index for e in tail] == list(range(5, len(entries)))
    assert [e.offset for e in tail] == [e.offset for e in full.entries[5:]]
    assert tail.end_offset == full.end_offset == len(raw)
    since = full.since(5)
    assert [e.index for e in since] == [e.index for e in tail] and since.offset_of(5) == cut
    assert full.offset_of(len(entries)) == len(raw)
    with pytest.raises(ValueError):
        full.since(len(entries) + 1)
    with pytest.raises(ValueError):
        full.offset_of(-1)
    # errors in a tail carry whole-list offsets
    with pytest.raises(ImaLogError) as exc:
        parse_ima_log(raw[cut:-3], start=5, offset=cut)
    assert exc.value.offset is not None and exc.value.offset >= cut
    # ASCII tail
    text = synth.ascii(entries)
    afull = parse_ima_log(text)
    acut = afull.offset_of(3)
    atail = parse_ima_log(text[acut:], start=3, offset=acut)
    assert [e.fields for e in atail] == [e.fields for e in afull.entries[3:]]


def test_replay_matches_the_synthesizer_in_every_bank_and_mode() -> None:
    entries = synth.every_template()
    for alg in LIST_ALGS:
        log = parse_ima_log(synth.binary(entries, alg))
        for bank in ("sha1", "sha256", "sha384", "sha512"):
            for mode in ("native", "padded"):
                want = synth.pcr_values(entries, bank, "native" if bank == alg else mode)
                assert log.replay_all(bank, mode=mode) == want, (alg, bank, mode)  # type: ignore[arg-type]
            assert log.replay(bank, 11) == synth.pcr_values(entries, bank)[11]
        assert log.template_digest(log[0], "sha256") == hashlib.sha256(entries[0].hash_input()).digest()
        if alg != "sha256":  # in its own bank a list's listed hashes are what was extended
            assert log.template_digest(log[0], "sha256", "padded") == \
                hashlib.sha1(entries[0].hash_input()).digest() + bytes(12)
    with pytest.raises(ValueError):
        parse_ima_log(synth.binary(entries)).replay("md5")


def test_ascii_tolerates_missing_trailing_empty_fields() -> None:
    """Some tools strip the trailing space of an ima-sig line with no signature."""
    line = ("10 8aa71d146be2b1a0a53cb603be22928f1b74ae17 ima-sig sha256:"
            "94326940137a8f59b369d1aa058bccce58cbda37e68be0f138ea45c2cb743a46 boot_aggregate\n")
    (e,) = parse_ima_log(line).entries
    assert e.fields[2] == b"" and hashlib.sha1(e.hash_input or b"").digest() == e.template_hash
    assert hashlib.sha256(e.hash_input or b"").hexdigest() == \
        "cc1078d3b981e8ef52b3d4d9cffc2f27648d05947d4caa829e47f83fb8f8ed00"
    # a missing required field is an error
    with pytest.raises(ImaLogError, match="fields"):
        parse_ima_log("10 " + "00" * 20 + " ima-sig sha256:00\n")


def test_single_digit_pcr_is_space_padded() -> None:
    e = synth.ima_ng("/p", pcr=9)
    text = synth.ascii([e])
    assert text.startswith(b" 9 ")
    (got,) = parse_ima_log(text).entries
    assert got.pcr == 9 and got.fields == tuple(v for _, v in e.fields)


# -- hostile and malformed input -------------------------------------------------------------------


def test_every_truncation_is_a_prefix_or_a_located_error() -> None:
    entries = [*synth.every_template(), synth.unknown("/u")]
    raw = synth.binary(entries)
    bounds = {e.offset for e in parse_ima_log(raw)} | {len(raw)}
    for cut in range(1, len(raw)):
        try:
            log = parse_ima_log(raw[:cut])
        except ImaLogError as exc:
            assert cut not in bounds
            assert exc.offset is not None and 0 <= exc.offset <= cut and exc.entry is not None
            continue
        assert cut in bounds, cut
        assert log.end_offset == cut


@pytest.mark.parametrize("raw, match", [
    (b"\x0a\x00\x00\x00" + b"\x00" * 20 + b"\xff\xff\xff\xff", "template name length"),
    (b"\x0a\x00\x00\x00" + b"\x00" * 20 + b"\x06\x00\x00\x00ima-ng\xff\xff\xff\x7f", "exceeds"),
    (b"\x0a\x00\x00\x00" + b"\x00" * 20 + b"\x06\x00\x00\x00ima-ng\x08\x00\x00\x00"
     b"\x10\x00\x00\x00abcd", "field length"),
    (b"\x0a\x00\x00\x00" + b"\x00" * 20 + b"\x06\x00\x00\x00ima-ng\x04\x00\x00\x00"
     b"\x00\x00\x00\x00", "1 fields, its template 2"),
    (b"\x0a\x00\x00\x00" + b"\x00" * 20 + b"\x06\x00\x00\x00im\x00-ng", "cannot frame"),
    (b"\x0a\x00\x00\x00" + b"\x00" * 20 + b"\x03\x00\x00\x00ima" + b"\x00" * 20 + b"\x00\x01\x00\x00",
     "'ima' name length"),
    (b"\x0a\x00\x00\x00" + b"\x00" * 20 + b"\x03\x00\x00\x00ima" + b"\x00" * 20 + b"\x02\x00\x00\x00a\x00",
     "NUL"),
    (b"\x40\x00\x00\x01", "not a PCR index"),
    (b"\x0a\x00", "truncated"),
])
def test_binary_framing_errors(raw: bytes, match: str) -> None:
    with pytest.raises(ImaLogError, match=match) as exc:
        parse_ima_log(raw, template_hash=None if match == "cannot frame" else "sha1")
    assert exc.value.offset is not None and exc.value.entry == 0


def test_binary_out_of_range_pcr_and_too_many_fields() -> None:
    good = synth.binary([synth.ima_ng("/a")])
    bad_pcr = struct.pack("<I", 32) + good[4:]
    with pytest.raises(ImaLogError):
        parse_ima_log(good + bad_pcr)
    fields = b"".join(struct.pack("<I", 1) + b"x" for _ in range(16))
    many = struct.pack("<I", 10) + bytes(20) + struct.pack("<I", 4) + b"tmpl" + struct.pack("<I", len(fields)) + fields
    with pytest.raises(ImaLogError, match="more fields"):
        parse_ima_log(many)


@pytest.mark.parametrize("text, match, line", [
    ("10 " + "00" * 20 + "\n", "not '<pcr>", 1),
    ("10 zz ima-ng sha256:00 /a\n", "not hex", 1),
    ("40 " + "00" * 20 + " ima-ng sha256:00 /a\n", "PCR", 1),
    ("1a " + "00" * 20 + " ima-ng sha256:00 /a\n", "PCR", 1),
    ("10 " + "11" * 20 + " ima-ng sha256:00 /a\n10 " + "11" * 32 + " ima-ng sha256:00 /b\n",
     "hashes", 2),
    ("10 " + "11" * 20 + " ima-ng sha256:00 /a\n\n10 " + "11" * 20 + " ima-ng sha256:00 /b\n",
     "empty line", 2),
    ("10 " + "11" * 20 + " ima-ng sha256:0g /a\n", "<algo>:<hex>", 1),
    ("10 " + "11" * 20 + " ima-ng 00ff /a\n", "<algo>:<hex>", 1),
    ("10 " + "11" * 20 + " ima-ng ima:sha256:00 /a\n", "wrong prefix", 1),
    ("10 " + "11" * 20 + " ima-ngv2 sha256:00 /a\n", "wrong prefix", 1),
    ("10 " + "11" * 20 + " ima-ng sha256:00 /a extra\n", "fields", 1),
    ("10 " + "11" * 20 + " ima-sig sha256:00 /a 0x12\n", "not hex", 1),
    ("10 " + "11" * 20 + " d-ng|n-ng|iuid sha256:00 /a -1\n", "decimal", 1),
    ("10 " + "11" * 20 + " d-ng|n-ng|imode sha256:00 /a 70000\n", "does not fit", 1),
    ("10 " + "11" * 21 + " ima-ng sha256:00 /a\n", "no default algorithm", 1),
    ("10 " + "11" * 20 + " ima " + "00" * 20 + " " + "n" * 300 + "\n", "255", 1),
    ("10 " + "11" * 20 + " im\x01a x y\n", "printable", 1),
])
def test_ascii_errors_carry_their_line(text: str, match: str, line: int) -> None:
    with pytest.raises(ImaLogError, match=match) as exc:
        parse_ima_log(text)
    assert exc.value.line == line and exc.value.offset is not None


def test_text_that_is_no_file_name_bytes_is_a_typed_error() -> None:
    """A str list (JSON can carry one) with a lone surrogate no byte decodes to: ImaLogError,
    not a UnicodeEncodeError, from the parser and from the verifier."""
    from tpm2_attest.verify import Reason, VerificationError, verify_ima_log

    text = "10 " + "11" * 20 + " ima-ng sha1:" + "00" * 20 + " /a\ud800\n"
    with pytest.raises(ImaLogError, match="UTF-8"):
        parse_ima_log(text)
    with pytest.raises(VerificationError) as exc:
        verify_ima_log(text, {10: bytes(32)})
    assert exc.value.reason is Reason.IMA_LOG_MALFORMED
    # the bytes a file name decoded with surrogateescape came from are kept
    assert parse_ima_log(text.replace("\ud800", "\udcff"))[0].fields[1] == b"/a\xff\0"


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        parse_ima_log(b"", byteorder="middle")
    with pytest.raises(ValueError):
        parse_ima_log(b"", start=-1)
    err = ImaLogError("x", offset=3, line=2, entry=1)
    assert str(err) == "x (entry 1, line 2, offset 3)" and isinstance(err, ValueError)


def test_boot_aggregate_definition() -> None:
    pcrs = {i: bytes([i]) * 32 for i in range(10)}
    assert ima.boot_aggregate(pcrs, "sha256") == hashlib.sha256(b"".join(pcrs[i] for i in range(10))).digest()
    sha1 = {i: bytes([i]) * 20 for i in range(8)}
    assert ima.boot_aggregate(sha1, "sha1") == hashlib.sha1(b"".join(sha1[i] for i in range(8))).digest()
    assert ima.boot_aggregate_pcrs("sha384") == tuple(range(10))
    with pytest.raises(KeyError):
        ima.boot_aggregate(sha1, "sha256")
    with pytest.raises(ValueError):
        ima.boot_aggregate(pcrs, "crc")
