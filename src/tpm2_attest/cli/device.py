"""Device-side commands: ``info``, ``demo``, ``ek``, ``provision-ak``, ``quote``, ``activate``."""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
from typing import TYPE_CHECKING

from ..errors import TpmError
from .common import (
    EXIT_FAIL,
    EXIT_OK,
    SubParsers,
    UsageError,
    check_output,
    device_options,
    emit,
    hex_or_file,
    one_bank,
    open_tpm,
    pcr_bank,
    pcr_selection,
    read_input,
    write_output,
)

if TYPE_CHECKING:
    from ..evidence import AkBlob


def load_ak(path: str, option: str = "--ak") -> AkBlob:
    """The AK blob in ``path`` (binary or JSON); a malformed one names the option."""
    from ..evidence import AkBlob  # loaded by the commands that use it, not at every start

    try:
        return AkBlob.load(read_input(path, option))
    except TpmError as exc:
        raise TpmError(f"{option} {path}: {exc.message}", code=exc.code,
                       hint="give the file provision-ak, probe --save-blob or enroll wrote") from None


def cmd_info(args: argparse.Namespace) -> int:
    with open_tpm(args, fallback=True) as tpm:
        info = tpm.info()
        pcrs = {bank: tpm.pcr.read(bank=bank) for bank in info.pcr_banks}
        obj = {**info.to_dict(), "source": tpm.tcti_source,
               "pcrs": {b: {str(i): v.hex() for i, v in vals.items()} for b, vals in pcrs.items()}}

        def text() -> None:
            print(f"TPM:          {info.manufacturer} ({info.vendor_string}), firmware {info.firmware_version}")
            print(f"Spec:         TPM {info.spec_family} revision {info.spec_revision} ({info.spec_year})")
            print(f"Transport:    {info.tcti} [{info.platform}, from {tpm.tcti_source}]")
            print(f"PCR banks:    {', '.join(info.pcr_banks)}")
            for bank, vals in pcrs.items():
                print(f"{bank}:")
                for i, v in vals.items():
                    print(f"  {i:2d}: {v.hex()}")

        emit(args, obj, text)
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from ..demo import Step, run_demo

    roots = [read_input(p, "--ek-root") for p in args.ek_root] if args.ek_root else None
    inter = [read_input(p, "--ek-intermediate") for p in args.ek_intermediate] if args.ek_intermediate else None

    def show(st: Step) -> None:
        if args.json:
            return
        cmds = ", ".join(f"{k.removeprefix('TPM2_')}x{v}" if v > 1 else k.removeprefix("TPM2_")
                         for k, v in st.commands.items())
        print(f"[{st.status}] {st.name}  ({st.seconds * 1000:.1f} ms, {sum(st.commands.values())} TPM commands)")
        if st.detail:
            print(f"       {st.detail}")
        if cmds:
            print(f"       commands: {cmds}")

    with open_tpm(args, fallback=True) as tpm:
        if not args.json:
            print(f"Demo against {tpm.tcti} ({'embedded swtpm' if tpm.embedded else tpm.tcti_source})\n")
        report = run_demo(tpm, ek_roots=roots, ek_intermediates=inter, algorithm=args.algorithm,
                          on_step=show)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        d = report.to_dict()
        print(f"\n{'OK' if report.ok else 'FAILED'}: {len(report.steps)} steps, "
              f"{d['total_tpm_commands']} TPM commands, {d['total_seconds'] * 1000:.0f} ms")
    return EXIT_OK if report.ok else EXIT_FAIL


def cmd_ek(args: argparse.Namespace) -> int:
    with open_tpm(args, fallback=False) as tpm:
        ek = tpm.ek(args.kind, fetch=args.fetch or args.offline, url=args.certificate_url,
                    timeout=args.timeout, cache_dir=args.cache_dir, offline=args.offline)
        if args.out_public:
            write_output(args.out_public, ek.public, "--out-public")
        if args.out_cert and ek.certificate:
            write_output(args.out_cert, ek.certificate, "--out-cert")
        if args.out_chain and ek.chain:
            import ssl  # its PEM helper; loaded by this option only

            write_output(args.out_chain, "".join(map(ssl.DER_cert_to_PEM_cert, ek.chain)).encode(),
                         "--out-chain")
        chain = [_chain_entry(der) for der in ek.chain]
        obj = {"kind": ek.kind, "handle": f"0x{ek.handle:08x}" if ek.handle else None,
               "persistent": ek.persistent, "name": ek.name.hex(),
               "certificate": len(ek.certificate) if ek.certificate else None,
               "certificate_url": ek.certificate_url, "chain": chain, "chain_note": ek.chain_note}

        def text() -> None:
            for k, v in obj.items():
                if k == "chain":
                    print(f"chain: {len(chain)} certificate(s)")
                    for c in chain:
                        print(f"  {c['subject']!r} issued by {c['issuer']!r} (sha256 {c['sha256']})")
                elif k != "chain_note" or v is not None:
                    print(f"{k}: {v}")

        emit(args, obj, text)
    return EXIT_OK


def _chain_entry(der: bytes) -> dict[str, str | None]:
    """One EK chain certificate as ``ek --json`` shows it (names None when unreadable here)."""
    from cryptography import x509

    subject = issuer = None
    try:
        cert = x509.load_der_x509_certificate(der)
        subject, issuer = cert.subject.rfc4514_string(), cert.issuer.rfc4514_string()
    except ValueError:
        pass
    return {"subject": subject, "issuer": issuer, "sha256": hashlib.sha256(der).hexdigest(),
            "der": base64.b64encode(der).decode("ascii")}


def cmd_provision_ak(args: argparse.Namespace) -> int:
    check_output(args.out, "--out", force=args.force)  # an earlier AK blob is not lost by accident
    if args.out_public:
        check_output(args.out_public, "--out-public", force=args.force)
    nonce = hex_or_file(args.nonce)
    with open_tpm(args, fallback=False) as tpm:
        blob = tpm.provision_ak(key_name=args.key_name, scope=args.scope, overwrite=args.overwrite,
                                nonce=nonce, algorithm=args.algorithm)
    write_output(args.out, blob.to_bytes(), "--out")
    if args.out_public:
        write_output(args.out_public, blob.public, "--out-public")
    obj = {"format": blob.format, "file": args.out, "name": blob.name.hex(), "key_name": blob.key_name}
    emit(args, obj, lambda: print(f"{blob.format} AK written to {args.out}; Name {blob.name.hex()}"))
    return EXIT_OK


def cmd_quote(args: argparse.Namespace) -> int:
    bank, pcrs = one_bank(args.pcrs, args.bank)
    blob = load_ak(args.ak)
    nonce = hex_or_file(args.nonce) or b""
    if len(nonce) > 64:
        raise UsageError(f"--nonce of {len(nonce)} bytes: a TPM takes at most 64 (a digest)")
    with open_tpm(args, fallback=False) as tpm:
        q = tpm.quote(blob, pcrs=pcrs, bank=bank, qualifying_data=nonce)
    data = q.to_json().encode()
    if args.message:  # tpm2_quote -m / -s (tss) / -o: the file set tpm2_checkquote reads
        write_output(args.message, q.attest, "--message")
    if args.signature:
        write_output(args.signature, q.signature, "--signature")
    if args.pcrs_file:
        from ..tpm2.tools_formats import write_pcr_file

        write_output(args.pcrs_file, write_pcr_file(q.pcrs, args.pcrs_format), "--pcrs-file")
    if args.out:
        write_output(args.out, data, "--out")
    else:
        print(data.decode())
    return EXIT_OK


def cmd_activate(args: argparse.Namespace) -> int:
    from ..evidence import CredentialChallenge

    blob = load_ak(args.ak)
    raw = read_input(args.challenge, "--challenge")
    try:
        ch = (CredentialChallenge.from_json(raw) if raw.lstrip().startswith(b"{")
              else CredentialChallenge.from_bytes(raw))
    except TpmError as exc:
        raise TpmError(f"--challenge {args.challenge}: {exc.message}", code=exc.code,
                       hint="give the file make-credential (or tpm2_makecredential) wrote") from None
    with open_tpm(args, fallback=False) as tpm:
        secret = tpm.activate_credential(blob, ch)
    if args.out:
        write_output(args.out, secret, "--out")
    else:
        print(secret.hex())
    return EXIT_OK


def add_parser(sub: SubParsers) -> None:
    """Register the device-side commands."""
    dev = device_options()
    s = sub.add_parser("info", parents=[dev], help="TPM identity, banks and PCRs")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("demo", parents=[dev], help="end-to-end enrollment and attestation")
    s.add_argument("--ek-root", action="append", metavar="PEM/DER", help="trusted EK root CA (repeatable)")
    s.add_argument("--ek-intermediate", action="append", metavar="PEM/DER", help="EK intermediate CA")
    s.add_argument("--algorithm", choices=["ecc", "rsa"], default="ecc", help="AK algorithm")
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("ek", parents=[device_options(timeout=False)],  # --timeout: the download's
                       help="read the endorsement key and certificate")
    s.add_argument("--kind", choices=["rsa", "ecc", "ecc384"], default="rsa",
                   help="which EK: RSA 2048, ECC NIST P-256, or ECC P-384 (default rsa)")
    s.add_argument("--out-public", metavar="FILE", help="write the TPM2B_PUBLIC")
    s.add_argument("--out-cert", metavar="FILE", help="write the certificate (DER)")
    s.add_argument("--out-chain", metavar="FILE",
                   help="write the intermediate CAs the TPM keeps for it (PEM, EK chain NV indices)")
    s.add_argument("--fetch", action="store_true",
                   help="no certificate in NV: fetch it from the vendor's service (Intel PTT, AMD fTPM)")
    s.add_argument("--certificate-url", metavar="URL", help="fetch from this URL instead (a mirror)")
    s.add_argument("--cache-dir", metavar="DIR", help="keep fetched certificates here, by URL")
    s.add_argument("--offline", action="store_true", help="only read --cache-dir, never the network")
    s.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                   help="seconds to wait for the certificate download (default 10)")
    s.set_defaults(func=cmd_ek)

    s = sub.add_parser("provision-ak", parents=[dev], help="create an attestation key blob")
    s.add_argument("--out", required=True, metavar="FILE",
                   help="AK blob file (written atomically; an existing one needs --force)")
    s.add_argument("--force", action="store_true", help="replace an existing --out file")
    s.add_argument("--nonce", help="enrollment nonce (hex, or @FILE)")
    s.add_argument("--algorithm", choices=["ecc", "rsa"],
                   help="AK algorithm on a raw TPM (default ecc: ECDSA P-256)")
    s.add_argument("--key-name", help="PCP key name (Windows)")
    s.add_argument("--scope", choices=["user", "machine"], default="user",
                   help="PCP key scope (Windows; machine needs an elevated account)")
    s.add_argument("--overwrite", action="store_true",
                   help="replace a PCP key of the same --key-name (Windows)")
    s.add_argument("--out-public", metavar="FILE",
                   help="also write the AK's TPM2B_PUBLIC, as tpm2_createak -u does (for "
                        "tpm2_checkquote -u and tpm2_print -t TPM2B_PUBLIC)")
    s.set_defaults(func=cmd_provision_ak)

    s = sub.add_parser("quote", parents=[dev], help="quote PCRs with an AK blob")
    s.add_argument("--ak", required=True, metavar="FILE", help="AK blob (from provision-ak)")
    s.add_argument("--pcrs", default="0-7", type=pcr_selection, metavar="SELECTION",
                   help="PCRs to quote, as tpm2-tools writes them: sha256:0,1,2 or sha256:all, "
                        "or a list such as 0-7,16 (default 0-7)")
    s.add_argument("--bank", type=pcr_bank, metavar="BANK",
                   help="PCR bank when --pcrs names none (default sha256)")
    s.add_argument("--nonce", help="qualifying data (hex, or @FILE; at most 64 bytes)")
    s.add_argument("--out", metavar="FILE", help="quote JSON file (default: stdout)")
    s.add_argument("--message", metavar="FILE",
                   help="also write the quoted TPMS_ATTEST, as tpm2_quote -m does")
    s.add_argument("--signature", metavar="FILE",
                   help="also write the TPMT_SIGNATURE, as tpm2_quote -s does (format tss)")
    s.add_argument("--pcrs-file", metavar="FILE",
                   help="also write the PCR values, as tpm2_quote -o does (see --pcrs-format)")
    s.add_argument("--pcrs-format", choices=["serialized", "values", "marshaled"], default="serialized",
                   help="--pcrs-file format, as tpm2_quote -F (default serialized, tpm2_checkquote's)")
    s.set_defaults(func=cmd_quote)

    s = sub.add_parser("activate", parents=[dev], help="activate a credential challenge")
    s.add_argument("--ak", required=True, metavar="FILE", help="AK blob the challenge was made for")
    s.add_argument("--challenge", required=True, metavar="FILE", help="our JSON/binary form or a tpm2-tools file")
    s.add_argument("--out", metavar="FILE", help="write the secret (default: hex on stdout)")
    s.set_defaults(func=cmd_activate)
