"""``python -m tpm2_attest.eventlog FILE [--replay] [--json]``."""

from .cli import main

raise SystemExit(main())
