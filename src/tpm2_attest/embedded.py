"""The embedded software TPM: a private swtpm with EK certificates, run as a child process.

``EmbeddedSwtpm`` manufactures a TPM with ``swtpm_setup`` (RSA-2048 and ECC P-384 EK
certificates, a platform certificate, PCR banks sha1+sha256, a private local CA), starts
``swtpm socket`` on a free loopback port pair (control = data + 1, as tpm2-tss expects) and
stops it again. Everything lives in one temporary folder; nothing touches /var/lib or ~.

Manufacturing costs about a second, so each process manufactures once and every instance
starts from a copy of that state (same EK and seeds, separate directories and processes);
``fresh_identity=True`` manufactures a new EK (same CA) for that instance.

``state_dir=DIR`` keeps one TPM in DIR instead, across processes: manufactured there (with a
CA of its own) on first use, started from it afterwards, never removed, so an AK made in one
process loads in the next (``tpm2-attest enroll --embedded`` then ``attest --embedded``).
One process at a time uses it: the others wait for its lock (``lock_timeout``).

The child never outlives us: ``stop()`` is idempotent and also runs from a
``weakref.finalize`` hook (which fires at interpreter exit too), and on Linux the child
gets PR_SET_PDEATHSIG so even a SIGKILLed parent takes it down.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final, Self

from .errors import ErrorCode, TpmError
from .tpm2.constants import TPM_CC, TPM_ST, TPM_SU
from .tpm2.marshal import Writer

INSTALL_HINT: Final = "apt-get install swtpm swtpm-tools"
BINARIES: Final = ("swtpm", "swtpm_setup", "swtpm_localca")
PCR_BANKS: Final = "sha1,sha256"
HOST: Final = "127.0.0.1"

# swtpm control channel commands (big-endian u32, answered with a u32 result).
CMD_GET_CAPABILITY: Final = 1
CMD_INIT: Final = 2
CMD_SHUTDOWN: Final = 3

LOCK_FILE: Final = "lock"
"""The file in a persistent state directory that one process at a time holds (flock)."""
DEFAULT_LOCK_TIMEOUT: Final = 60.0

_PORT_RANGE: Final = (20000, 32000)
"""Below Linux's ephemeral range (32768+), so outgoing connections never squat our ports."""
_U32: Final = struct.Struct(">I")


def swtpm_available() -> bool:
    """True when swtpm, swtpm_setup and swtpm_localca are on PATH."""
    return all(shutil.which(b) for b in BINARIES)


def _require_binaries() -> None:
    missing = [b for b in BINARIES if not shutil.which(b)]
    if missing:
        raise TpmError(f"swtpm is not installed (missing {', '.join(missing)})",
                       code=ErrorCode.UNSUPPORTED, hint=INSTALL_HINT)


def user_state_dir() -> Path:
    """Where a user's persistent embedded TPM lives by default:
    ``$XDG_STATE_HOME/tpm2-attest/embedded-tpm`` (``~/.local/state/...``; on Windows under
    ``%LOCALAPPDATA%``)."""
    if os.name == "nt":  # pragma: no cover - Windows only
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    else:
        base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return base / "tpm2-attest" / "embedded-tpm"


# -- manufacturing ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Layout:
    """One TPM's files: state, CA (root + intermediate + signing key), EK certificate files."""

    root: Path

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def ca(self) -> Path:
        return self.root / "ca"

    @property
    def certs(self) -> Path:
        return self.root / "certs"

    @property
    def cfg(self) -> Path:
        return self.root / "cfg"


def _write_config(layout: _Layout) -> Path:
    """Private swtpm_setup / swtpm_localca configuration pointing into ``layout``."""
    cfg = layout.cfg
    cfg.mkdir(parents=True, exist_ok=True)
    layout.ca.mkdir(parents=True, exist_ok=True)
    (cfg / "swtpm-localca.conf").write_text(
        f"statedir = {layout.ca}\n"
        f"signingkey = {layout.ca / 'signkey.pem'}\n"
        f"issuercert = {layout.ca / 'issuercert.pem'}\n"
        f"certserial = {layout.ca / 'certserial'}\n")
    (cfg / "swtpm-localca.options").write_text(
        "--platform-manufacturer tpm2-attest\n--platform-version 2.1\n--platform-model swtpm\n")
    setup = cfg / "swtpm_setup.conf"
    setup.write_text(
        "create_certs_tool = /usr/bin/swtpm_localca\n"
        f"create_certs_tool_config = {cfg / 'swtpm-localca.conf'}\n"
        f"create_certs_tool_options = {cfg / 'swtpm-localca.options'}\n"
        f"active_pcr_banks = {PCR_BANKS}\n")
    localca = shutil.which("swtpm_localca")
    if localca:
        setup.write_text(setup.read_text().replace("/usr/bin/swtpm_localca", localca))
    return setup


def _manufacture(layout: _Layout) -> None:
    """swtpm_setup into ``layout``: EK certs (RSA + ECC) and platform cert, signed by the
    local CA in ``layout.ca`` (created there on first use)."""
    config = _write_config(layout)
    for d in (layout.state, layout.certs, layout.root / "tmp"):
        d.mkdir(parents=True, exist_ok=True)
    cmd = ["swtpm_setup", "--tpm2", "--tpmstate", str(layout.state), "--config", str(config),
           "--create-ek-cert", "--create-platform-cert", "--pcr-banks", PCR_BANKS,
           "--write-ek-cert-files", str(layout.certs), "--overwrite"]
    env = {**os.environ, "TMPDIR": str(layout.root / "tmp")}
    try:
        res = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                             text=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise TpmError(f"swtpm_setup failed: {exc}", code=ErrorCode.TPM_ERROR) from None
    if res.returncode != 0:
        out = (res.stdout + res.stderr).strip()[-2000:]
        raise TpmError(f"swtpm_setup failed (exit {res.returncode}): {out}",
                       code=ErrorCode.TPM_ERROR)
    shutil.rmtree(layout.root / "tmp", ignore_errors=True)


TEMPLATE_ENV: Final = "TPM2_ATTEST_SWTPM_TEMPLATE"
"""A directory from :func:`template_dir` of another process: copy it instead of manufacturing
(saves a second per process in test suites that spawn programs using the embedded swtpm)."""

_template: _Layout | None = None
_template_lock = threading.Lock()


def _remove_template(path: Path, owner: int) -> None:
    if os.getpid() == owner:  # not in a fork()ed child that happens to exit normally
        shutil.rmtree(path, ignore_errors=True)


def _usable(layout: _Layout) -> bool:
    return ((layout.state / "tpm2-00.permall").is_file() and layout.certs.is_dir()
            and (layout.ca / "swtpm-localca-rootca-cert.pem").is_file())


def _manufactured_template() -> _Layout:
    """The per-process manufactured TPM that instances copy (made on first use)."""
    global _template
    with _template_lock:
        if _template is None:
            given = os.environ.get(TEMPLATE_ENV)
            if given and _usable(_Layout(Path(given))):
                _template = _Layout(Path(given))  # someone else's: never removed by us
                return _template
            layout = _Layout(Path(tempfile.mkdtemp(prefix="tpm2-attest-swtpm-template-")))
            try:
                _manufacture(layout)
            except BaseException:
                _remove_template(layout.root, os.getpid())
                raise
            atexit.register(_remove_template, layout.root, os.getpid())
            _template = layout
        return _template


def template_dir() -> Path:
    """This process's manufactured template (made now if needed); hand it to child processes
    as ``$TPM2_ATTEST_SWTPM_TEMPLATE`` so they skip manufacturing. Removed when we exit."""
    _require_binaries()
    return _manufactured_template().root


def _copy_tree(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".lock*"))


# -- a persistent state directory ------------------------------------------------------------


def _lock(root: Path, timeout: float) -> int | None:
    """Create ``root`` (mode 0700) and hold its lock file; the descriptor to release, None
    where there is no flock (Windows: swtpm's own lock on its state refuses a second user)."""
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return None
    path = root / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise TpmError(f"embedded TPM state {root}: cannot open {path}: {exc.strerror or exc}",
                       code=ErrorCode.TRANSPORT) from None
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
                os.close(fd)
                raise TpmError(f"the embedded TPM in {root} is in use by another process (pid {holder}) "
                               f"for more than {timeout:g} s", code=ErrorCode.TRANSPORT,
                               hint="wait for the other tpm2-attest process, or use another state "
                                    "directory") from None
            time.sleep(0.05)
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode("ascii"), 0)
    return fd


def _unlock(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)  # closing the descriptor releases the flock


# -- the process ------------------------------------------------------------------------------


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def _pick_ports(rng: random.Random) -> int:
    """A data port P with P and P + 1 both free on loopback."""
    for _ in range(500):
        port = rng.randrange(*_PORT_RANGE)
        if _port_free(port) and _port_free(port + 1):
            return port
    raise TpmError("no free loopback port pair for swtpm", code=ErrorCode.TRANSPORT)


def _death_signal() -> Callable[[], None] | None:
    """preexec_fn asking Linux to SIGKILL the child when we die (main thread only: the signal
    follows the thread that forked, and a worker thread may end long before the process)."""
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1
    sig = int(signal.SIGKILL)

    def preexec() -> None:
        prctl(pr_set_pdeathsig, sig, 0, 0, 0)

    return preexec


def control(port: int, command: int, payload: bytes = b"", *, timeout: float = 5.0) -> int:
    """One swtpm control-channel command; returns its u32 result (0 = success)."""
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        s.sendall(_U32.pack(command) + payload)
        data = b""
        while len(data) < 4:
            chunk = s.recv(4 - len(data))
            if not chunk:
                raise TpmError(f"swtpm control port {port}: connection closed",
                               code=ErrorCode.TRANSPORT)
            data += chunk
    return int(_U32.unpack(data)[0])


def _stop_process(proc: subprocess.Popen[bytes], ctrl_port: int, root: Path | None,
                  owner: int | None = None, lock: int | None = None, orderly: bool = False) -> None:
    """Shut swtpm down through its control port, kill it if that does not work, remove files
    (``root``; None keeps them) and release the state's ``lock``.

    ``orderly``: send TPM2_Shutdown(CLEAR) first, as an OS does before power-off, so that a
    TPM whose state lives on does not count each stop as a non-orderly shutdown.
    ``owner``: the pid that started it; a fork()ed child running finalizers does nothing."""
    if owner is not None and os.getpid() != owner:
        return
    try:
        if orderly and proc.poll() is None:
            _orderly_shutdown(ctrl_port - 1)
        if proc.poll() is None:
            with contextlib.suppress(OSError, TpmError):
                control(ctrl_port, CMD_SHUTDOWN, timeout=2.0)
            try:
                proc.wait(timeout=3.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5.0)
    finally:
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)
        _unlock(lock)


def _orderly_shutdown(port: int) -> None:
    """TPM2_Shutdown(CLEAR) on the data port (errors ignored: the process is stopped anyway)."""
    from .transport.swtpm_tcp import SwtpmTransport

    with contextlib.suppress(OSError, TpmError), SwtpmTransport(HOST, port, timeout=5.0, probe=False) as t:
        t.send(_command(TPM_CC.Shutdown, TPM_SU.CLEAR))


def _command(code: int, su: int) -> bytes:
    """TPM2_Startup / TPM2_Shutdown with one TPM_SU parameter (12 bytes, no sessions)."""
    return Writer().u16(TPM_ST.NO_SESSIONS).u32(12).u32(code).u16(su).getvalue()


def _rc(response: bytes) -> int:
    return int(_U32.unpack_from(response, 6)[0])


class EmbeddedSwtpm:
    """A private swtpm child process with EK certificates; a context manager.

    After :meth:`start`: ``tcti`` ("swtpm:host=127.0.0.1,port=N"), ``port``, ``ctrl_port``,
    ``state_dir``, ``ca_root_path``, ``ca_intermediate_path``, ``ek_cert_files``.
    """

    def __init__(self, *, fresh_identity: bool = False, startup_timeout: float = 10.0,
                 log_level: int = 1, state_dir: str | os.PathLike[str] | None = None,
                 lock_timeout: float = DEFAULT_LOCK_TIMEOUT) -> None:
        self.fresh_identity = fresh_identity
        self.startup_timeout = startup_timeout
        self.log_level = log_level
        self.persistent_dir = Path(state_dir) if state_dir is not None else None
        self.lock_timeout = lock_timeout
        self.host = HOST
        self._layout: _Layout | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._port = 0
        self._finalizer: weakref.finalize[..., object] | None = None
        self._lock = threading.Lock()

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> Self:
        """Provision a fresh state directory and start swtpm (no-op if already running); with
        ``state_dir``, take its lock, manufacture it on first use and start from it."""
        with self._lock:
            if self._proc is not None:
                return self
            _require_binaries()
            if self.persistent_dir is not None:
                return self._start_persistent(self.persistent_dir)
            template = _manufactured_template()
            layout = _Layout(Path(tempfile.mkdtemp(prefix="tpm2-attest-swtpm-")))
            try:
                if self.fresh_identity:
                    _copy_tree(template.ca, layout.ca)
                    _manufacture(layout)
                else:
                    for part in ("state", "ca", "certs"):
                        _copy_tree(template.root / part, layout.root / part)
                proc, port = self._launch(layout)
            except BaseException:
                shutil.rmtree(layout.root, ignore_errors=True)
                raise
            self._layout, self._proc, self._port = layout, proc, port
            self._finalizer = weakref.finalize(self, _stop_process, proc, port + 1, layout.root,
                                               os.getpid())
            return self

    def _start_persistent(self, root: Path) -> Self:
        layout = _Layout(root)
        lock = _lock(root, self.lock_timeout)
        try:
            if not _usable(layout):  # first use, or an interrupted first use: manufacture it
                _manufacture(layout)
            proc, port = self._launch(layout)
        except BaseException:
            _unlock(lock)
            raise
        self._layout, self._proc, self._port = layout, proc, port
        self._finalizer = weakref.finalize(self, _stop_process, proc, port + 1, None, os.getpid(), lock, True)
        return self

    def _launch(self, layout: _Layout) -> tuple[subprocess.Popen[bytes], int]:
        rng = random.Random()
        deadline = time.monotonic() + self.startup_timeout
        last = ""
        for _attempt in range(10):
            port = _pick_ports(rng)
            log = layout.root / "swtpm.log"
            err_path = layout.root / "swtpm.stderr"
            cmd = ["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={layout.state}",
                   "--server", f"type=tcp,port={port},bindaddr={HOST}",
                   "--ctrl", f"type=tcp,port={port + 1},bindaddr={HOST}",
                   "--flags", "not-need-init,startup-clear",
                   "--log", f"file={log},level={self.log_level},truncate"]
            with open(err_path, "wb") as err:
                proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=err, start_new_session=True,
                                        preexec_fn=_death_signal())
            if self._wait_ready(proc, port, deadline):
                return proc, port
            _stop_process(proc, port + 1, None)
            last = _read_text(err_path) + _read_text(log)
            if "in use" not in last.lower() or time.monotonic() > deadline:
                break
        raise TpmError(f"swtpm did not start: {last.strip()[-1000:] or 'no output'}",
                       code=ErrorCode.TPM_ERROR)

    @staticmethod
    def _wait_ready(proc: subprocess.Popen[bytes], port: int, deadline: float) -> bool:
        """Poll a TCP connect to the data port (ready after ~10 ms) while the child lives."""
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return False
            try:
                socket.create_connection((HOST, port), timeout=0.5).close()
            except OSError:
                time.sleep(0.002)
                continue
            return proc.poll() is None
        return False

    def stop(self) -> None:
        """Shut swtpm down (control SHUTDOWN, kill if needed) and remove its files; idempotent."""
        with self._lock:
            fin, self._finalizer = self._finalizer, None
            self._proc = None
            if fin is not None:
                fin()

    def reboot(self) -> None:
        """A simulated reboot: TPM2_Shutdown(CLEAR), control INIT, TPM2_Startup(CLEAR).

        PCRs return to their reset values; persistent objects and NV survive."""
        from .transport.swtpm_tcp import SwtpmTransport

        port = self.port
        with SwtpmTransport(HOST, port, timeout=30.0, probe=False) as t:
            rc = _rc(t.send(_command(TPM_CC.Shutdown, TPM_SU.CLEAR)))
            if rc != 0:
                raise TpmError(tpm_rc=rc, command="TPM2_Shutdown")
            result = control(port + 1, CMD_INIT, _U32.pack(0))
            if result != 0:
                raise TpmError(f"swtpm control INIT failed with result 0x{result:x}",
                               code=ErrorCode.TRANSPORT)
            rc = _rc(t.send(_command(TPM_CC.Startup, TPM_SU.CLEAR)))
            if rc != 0:
                raise TpmError(tpm_rc=rc, command="TPM2_Startup")

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- what callers use ---------------------------------------------------------------------

    def _started(self) -> _Layout:
        if self._layout is None or self._proc is None:
            raise TpmError("the embedded swtpm is not running (call start())",
                           code=ErrorCode.TPM_NOT_FOUND)
        return self._layout

    @property
    def running(self) -> bool:
        """True while the child process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int:
        """The swtpm child's process id."""
        self._started()
        assert self._proc is not None
        return self._proc.pid

    @property
    def port(self) -> int:
        """The data (TPM command) port."""
        self._started()
        return self._port

    @property
    def ctrl_port(self) -> int:
        """The control port (always data port + 1)."""
        return self.port + 1

    @property
    def tcti(self) -> str:
        """``swtpm:host=127.0.0.1,port=N`` for this library and tpm2-tools alike."""
        return f"swtpm:host={HOST},port={self.port}"

    @property
    def root_dir(self) -> Path:
        """The instance's folder: a private temporary one (removed by stop()), or ``state_dir``."""
        return self._started().root

    @property
    def state_dir(self) -> Path:
        """swtpm's --tpmstate directory (tpm2-00.permall) of this instance."""
        return self._started().state

    @property
    def log_path(self) -> Path:
        """swtpm's log file (level 1 by default: errors only)."""
        return self._started().root / "swtpm.log"

    @property
    def ca_root_path(self) -> Path:
        """The local CA's root certificate (PEM): the trust anchor for the EK certificates."""
        return self._started().ca / "swtpm-localca-rootca-cert.pem"

    @property
    def ca_intermediate_path(self) -> Path:
        """The local CA's issuing certificate (PEM) that signed the EK certificates."""
        return self._started().ca / "issuercert.pem"

    @property
    def ek_cert_files(self) -> dict[str, Path]:
        """EK certificates (DER) as written by swtpm_setup: ``{"rsa": ..., "ecc": ...}``."""
        certs = self._started().certs
        out: dict[str, Path] = {}
        for path in sorted(certs.glob("ek-*.crt")):
            out["rsa" if path.name.startswith("ek-rsa") else "ecc"] = path
        return out

    def tools_env(self) -> dict[str, str]:
        """Environment variables that point tpm2-tools (and this library) at this swtpm."""
        return {"TPM2TOOLS_TCTI": self.tcti, "TPM2_ATTEST_TCTI": self.tcti}

    def __repr__(self) -> str:
        state = f"port {self._port}" if self._proc is not None else "stopped"
        return f"<EmbeddedSwtpm {state}>"


def _read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""
