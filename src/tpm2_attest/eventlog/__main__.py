"""``python -m tpm2_attest.eventlog FILE [--replay] [--json]``: ``tpm2-attest eventlog`` alone."""

from ..cli.eventlog import main

raise SystemExit(main())
