#!/usr/bin/env python3
"""Build (or check) the CA bundle shipped in ``src/tpm2_attest/trust/ca/``.

    python tools/build_trust_bundle.py --from DIR     # copy DIR/<folder>/* in, write manifest.json
    python tools/build_trust_bundle.py --check        # manifest.json matches the files? (exit 1 if not)
    python tools/build_trust_bundle.py --add FOLDER/FILE SOURCE   # after copying a file in by hand

``DIR`` holds one folder per source (``tpm-vendor-cas/``, ``cloud-vtpm-cas/``,
``tpm-ca-certificates/``); the
``SOURCES`` table below names where each folder came from (repository, path, commit,
licence). Files are copied byte for byte, so a file's SHA-256 can be compared with its
origin. The manifest is computed from the files alone (no clock, no network): parsing
goes through the verifier's lenient parser (some vendor CAs are not strict DER), a
certificate is a ``root`` when it is self-signed, and an ``anchor`` when the bundle holds
no issuer for it (roots, and intermediates whose root is not published with them); the
bundle passes anchors as ``roots`` and the others as ``intermediates``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CA_DIR = ROOT / "src" / "tpm2_attest" / "trust" / "ca"
MANIFEST = "manifest.json"
CERT_SUFFIXES = (".pem", ".crt", ".cer", ".der")

SOURCES: dict[str, dict[str, str]] = {
    "tpm-vendor-cas": {
        "repository": "keylime/keylime",
        "path": "tpm_cert_store/",
        "commit": "9b1f6e6a917f",
        "date": "2026-08-03",
        "licence": "Apache-2.0",
        "description": "TPM vendor EK CAs collected by the keylime project",
    },
    "cloud-vtpm-cas": {
        "repository": "google/go-tpm-tools",
        "path": "server/ca-certs/",
        "commit": "67670e5c021a",
        "date": "2026-08-21",
        "licence": "Apache-2.0",
        "description": "Google Compute Engine vTPM EK/AK CAs",
    },
    "tpm-ca-certificates": {
        "repository": "loicsikidi/tpm-ca-certificates",
        "path": "MIRROR.tpm-ca-certificates.pem",
        "commit": "12cc1da5e4d5",
        "date": "2026-06-10",
        "licence": "BSD-3-Clause",
        "description": "PEM blocks extracted from the bundle file (each one's SHA-256 as the file "
                       "records it): AMD fTPM and Pluton, Intel OnDie CA (PTT), Microsoft Pluton roots",
    },
}
"""Where each folder of the bundle comes from (one entry per folder of ``--from DIR``)."""

VENDORS: tuple[tuple[str, str], ...] = (
    ("AMD_", "AMD"),
    ("Alibaba_", "Alibaba Cloud"),
    ("GS_", "GlobalSign"),
    ("IFX", "Infineon"),
    ("INF_", "Infineon"),
    ("INTEL_", "Intel"),
    ("MSFT_", "Microsoft"),
    ("NTC", "Nuvoton"),
    ("NUVO_", "Nuvoton"),
    ("Nationz_", "Nationz"),
    ("STM_", "STMicroelectronics"),
    ("gcp_", "Google"),
    ("tpm_ek_", "Google"),
)
"""File name prefix -> vendor (the files are named by their publishers, not by us)."""


def _vendor(name: str) -> str:
    for prefix, vendor in VENDORS:
        if name.startswith(prefix):
            return vendor
    raise SystemExit(f"{name}: no vendor for this file name; extend VENDORS in {Path(__file__).name}")


def _key(cert: Any) -> str:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    key = cert.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA-{key.key_size}"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return {"secp256r1": "EC-P256", "secp384r1": "EC-P384", "secp521r1": "EC-P521"}.get(
            key.curve.name, f"EC-{key.curve.name}")
    return type(key).__name__


def _iso(dt: Any) -> str:
    return str(dt.strftime("%Y-%m-%dT%H:%M:%SZ"))


def build_manifest(ca_dir: Path = CA_DIR) -> dict[str, Any]:
    """The manifest of the certificate files under ``ca_dir`` (deterministic)."""
    from tpm2_attest.verify.certpath import parse_certificates, signed_by, validity

    files = sorted(p for p in ca_dir.rglob("*") if p.is_file() and p.suffix.lower() in CERT_SUFFIXES)
    parsed = []
    for path in files:
        rel = path.relative_to(ca_dir).as_posix()
        folder = rel.split("/", 1)[0]
        if folder not in SOURCES:
            raise SystemExit(f"{rel}: folder {folder!r} has no entry in SOURCES")
        data = path.read_bytes()
        certs = parse_certificates(data, rel)
        if len(certs) != 1:
            raise SystemExit(f"{rel}: {len(certs)} certificates; keep one per file")
        parsed.append((rel, folder, data, certs[0]))

    first_file: dict[bytes, str] = {}
    entries = []
    for rel, folder, data, p in parsed:
        issuers = [q for _, _, _, q in parsed if q.fingerprint != p.fingerprint and signed_by(p, q)]
        self_signed = p.subject == p.issuer and signed_by(p, p)
        nb, na = validity(p.cert)
        entries.append({
            "file": rel,
            "vendor": _vendor(Path(rel).name),
            "source": folder,
            "file_sha256": hashlib.sha256(data).hexdigest(),
            "sha256": p.fingerprint.hex(),
            "subject": p.subject.rfc4514_string(),
            "issuer": p.issuer.rfc4514_string(),
            "serial": f"{p.serial:x}" if p.serial >= 0 else f"-{-p.serial:x}",
            "not_before": _iso(nb),
            "not_after": _iso(na),
            "role": "root" if self_signed else "intermediate",
            "anchor": self_signed or not issuers,
            "key": _key(p.cert),
            "parsed": "strict" if p.strict else "lenient: " + ", ".join(p.tolerated),
            "duplicate_of": first_file.get(p.fingerprint),
        })
        first_file.setdefault(p.fingerprint, rel)
    return {
        "version": 1,
        "generated_by": "tools/build_trust_bundle.py",
        "sources": SOURCES,
        "certificates": entries,
    }


def render(manifest: dict[str, Any]) -> str:
    return json.dumps(manifest, indent=1, sort_keys=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = ap.add_mutually_exclusive_group(required=True)
    group.add_argument("--from", dest="source", metavar="DIR", type=Path,
                       help="copy DIR/<folder>/* into the bundle and write the manifest")
    group.add_argument("--check", action="store_true", help="exit 1 when manifest.json is stale")
    group.add_argument("--write", action="store_true", help="rewrite manifest.json from the files")
    args = ap.parse_args(argv)

    if args.source is not None:
        for folder in SOURCES:
            src = args.source / folder
            if not src.is_dir():
                raise SystemExit(f"{src}: missing (SOURCES names it)")
            dst = CA_DIR / folder
            if dst.exists():
                shutil.rmtree(dst)
            dst.mkdir(parents=True)
            for f in sorted(src.iterdir()):
                if f.is_file() and f.suffix.lower() in CERT_SUFFIXES:
                    shutil.copyfile(f, dst / f.name)
    manifest = render(build_manifest())
    target = CA_DIR / MANIFEST
    if args.check:
        current = target.read_text(encoding="utf-8") if target.exists() else ""
        if current != manifest:
            print(f"{target} does not match the certificate files; run {Path(__file__).name} --write",
                  file=sys.stderr)
            return 1
        print(f"{target}: {len(json.loads(manifest)['certificates'])} certificates, up to date")
        return 0
    target.write_text(manifest, encoding="utf-8")
    print(f"wrote {target}: {len(json.loads(manifest)['certificates'])} certificates")
    return 0


if __name__ == "__main__":
    sys.exit(main())
