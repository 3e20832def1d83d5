"""GCE-style certified AKs on swtpm: the AK template and certificate in NV as Google Compute
Engine provisions them (go-tpm-tools' AKTemplateRSA/ECC; NV attributes as seen on GCE)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from pki import ak_extensions, der, make_leaf, name
from tpm2_attest import Tpm
from tpm2_attest.tpm2 import templates as T
from tpm2_attest.tpm2.constants import TPM_RH
from tpm2_attest.tpm2.keys import public_key_from_public
from tpm2_attest.tpm2.structures import TPMS_ECC_POINT

NV_ATTRS = "ppwrite|writedefine|ppread|ownerread|authread|no_da|platformcreate"  # as on GCE
INDICES = {"rsa": (0x01C10000, 0x01C10001), "ecc": (0x01C10002, 0x01C10003)}
TEMPLATES = {
    # go-tpm-tools' AKTemplateRSA/ECC as GCE stores them: 280 and 88 bytes of TPMT_PUBLIC
    "rsa": replace(T.AK_RSA_TEMPLATE, unique=bytes(256)),
    "ecc": replace(T.AK_ECC_TEMPLATE, unique=TPMS_ECC_POINT(bytes(32), bytes(32))),
}


def nv_put(tools, sw, index: int, data: bytes, tmp: Path) -> None:  # type: ignore[no-untyped-def]
    f = tmp / f"nv-{index:08x}.bin"
    f.write_bytes(data)
    tools("tpm2_nvdefine", "-C", "p", "-s", str(len(data)), "-a", NV_ATTRS, f"0x{index:08x}", sw=sw)
    tools("tpm2_nvwrite", "-C", "p", "-i", str(f), f"0x{index:08x}", sw=sw)


def provision(tools, sw, kind: str, ca, tmp: Path, *, cert_der: bytes | None = None) -> bytes:  # type: ignore[no-untyped-def]
    """What GCE does at VM creation: template and AK certificate into NV."""
    template = TEMPLATES[kind]
    with Tpm.open(sw.tcti) as tpm:
        assert tpm.commands is not None
        res = tpm.commands.create_primary(TPM_RH.ENDORSEMENT, template)
        tpm.commands.flush_context(res.handle)
    key = public_key_from_public(res.public)
    if cert_der is None:
        cert_der = der(make_leaf(ca[1], key, subject=name("1234567890", o="Google Compute Engine"),  # type: ignore[arg-type]
                                 extensions=ak_extensions()))
    cert_index, template_index = INDICES[kind]
    nv_put(tools, sw, template_index, template.to_bytes(), tmp)
    nv_put(tools, sw, cert_index, cert_der, tmp)
    return cert_der


