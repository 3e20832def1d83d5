"""``python -m tpm2_attest.cli``: the same as the ``tpm2-attest`` command."""

import os
import sys

from . import main

os.environ.setdefault("PYTHONUNBUFFERED", "1")
sys.exit(main())
