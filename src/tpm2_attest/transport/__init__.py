"""How command bytes reach a TPM: Linux device, swtpm / MS simulator over TCP, Windows TBS.

``open_transport(tcti)`` returns a :class:`Transport` whose ``send(command) -> response``
exchanges one complete TPM command; the concrete transports live in the submodules
(``device``, ``swtpm``, ``mssim``, ``tbs``) and are imported only when used.
"""

from .base import Transport
from .tcti import TctiSpec, default_tcti, open_transport, parse_tcti, resolve_tcti

__all__ = ["TctiSpec", "Transport", "default_tcti", "open_transport", "parse_tcti", "resolve_tcti"]
