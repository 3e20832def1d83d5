"""The TPM 2.0 language shared by the device side and the verifier: no I/O here."""
