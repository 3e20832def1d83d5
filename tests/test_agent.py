"""Continuous attestation (``attest --every``): the agent's rounds, schedule and stops, against
swtpm devices; in-process (the agent's logic, the application in a TestClient) and as real
processes (``tpm2-attest serve`` and ``tpm2-attest attest --every``, stopped by signals).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")

import eventlog_synth
import ima_synth
from serveproc import Serve, free_port
from test_service import InProcess, TestClient
from test_service_client import _counting, _threaded
from test_service_ima import Machine
from tpm2_attest import Tpm
from tpm2_attest.agent import (
    Agent,
    Outcome,
    Round,
    Schedule,
    StopReason,
    format_duration,
    parse_duration,
)
from tpm2_attest.cli import main
from tpm2_attest.embedded import EmbeddedSwtpm
from tpm2_attest.service import ServiceClient, Settings, create_app, enroll

# -- durations and the schedule ----------------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [("90", 90), ("30s", 30), ("5m", 300), ("1h", 3600),
                                               ("1h30m", 5400), ("250ms", 0.25), ("1.5h", 5400), ("2d", 172800),
                                               (" 10S ", 10), (".5s", 0.5)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "0", "0s", "-5m", "5x", "m", "5m5", "1h 30m", "nan", "inf", "400d",
                                  "1" * 400, "5m" * 10000])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_format_duration() -> None:
    assert [format_duration(s) for s in (2.5, 59, 60, 90, 3600, 5400, 90061)] == \
        ["2.5s", "59s", "1m", "1m30s", "1h", "1h30m", "1d1h1m1s"]


def test_schedule_jitters_and_backs_off() -> None:
    rng = random.Random(7)
    s = Schedule(100.0, jitter=0.1, backoff_min=5.0, backoff_max=60.0)
    waits = [s.after(Outcome.PASSED, 0, None, rng) for _ in range(2000)]
    assert 90 <= min(waits) < 92 and 108 < max(waits) <= 110  # spread both ways
    assert [s.after(Outcome.REFUSED, 0, None, rng) for _ in range(50)] != [100.0] * 50
    for n, (lo, hi) in enumerate([(2.5, 5), (5, 10), (10, 20), (20, 40), (30, 60), (30, 60), (30, 60)], 1):
        got = [s.after(Outcome.ERROR, n, None, rng) for _ in range(200)]
        assert lo <= min(got) and max(got) <= hi, (n, min(got), max(got))
    assert s.after(Outcome.ERROR, 1, 42.0, rng) == 42.0  # the service's Retry-After wins
    assert s.after(Outcome.ERROR, 10_000, None, rng) <= 60  # no overflow after a long outage
    short = Schedule(2.0)  # retries never wait longer than the interval by default
    assert max(short.after(Outcome.ERROR, n, None, rng) for n in range(1, 20)) <= 2.0
    for bad in ({"every": 0}, {"every": 1, "jitter": 0.6}, {"every": 1, "backoff_min": 0}):
        with pytest.raises(ValueError):
            Schedule(**bad)  # type: ignore[arg-type]


# -- the agent in-process ------------------------------------------------------------------------


@pytest.fixture
def settings(swtpm: EmbeddedSwtpm, tmp_path: Path) -> Settings:
    return Settings(database_url=f"sqlite:///{tmp_path / 'service.db'}", ek_roots=(Path(swtpm.ca_root_path),),
                    ek_intermediates=(Path(swtpm.ca_intermediate_path),), sweep_interval=0, challenge_rate=0)


def run_agent(tcti: str, client: ServiceClient, device_id: str, ak: Any, rounds: int,
              schedule: Schedule | None = None, **kw: Any) -> tuple[StopReason, list[Round]]:
    seen: list[Round] = []
    agent = Agent(lambda: Tpm.open(tcti), client, device_id, ak, schedule=schedule or Schedule(0.01),
                  rounds=rounds, report=kw.pop("report", seen.append), **kw)
    return agent.run(), seen


def test_rounds_pass_and_are_recorded(settings: Settings, swtpm: EmbeddedSwtpm) -> None:
    with Tpm.open(swtpm.tcti) as tpm, TestClient(create_app(settings)) as http:
        dev = enroll(tpm, InProcess(http))
        reason, rounds = run_agent(swtpm.tcti, InProcess(http), dev.device_id, dev.ak_blob, 3, pcrs=[0, 1, 2])
        assert reason is StopReason.ROUNDS
        assert [r.outcome for r in rounds] == [Outcome.PASSED] * 3 and [r.number for r in rounds] == [1, 2, 3]
        assert all(r.status == "trusted" and r.pcrs == 3 and r.fresh_until for r in rounds)
        assert [r.next_in is not None for r in rounds] == [True, True, False] and rounds[-1].stop is StopReason.ROUNDS
        records = http.app.state.service.store.attestations(dev.device_id)  # type: ignore[attr-defined]
        assert sorted(a.id for a in records if a.ok) == sorted(r.attestation_id for r in rounds)
        line = rounds[0].to_dict()
        assert line["event"] == "round" and line["outcome"] == "passed" and json.dumps(line)
        assert "round 1 passed" in rounds[0].text() and "next in" in rounds[0].text()


def test_refusals_are_reported_and_the_agent_goes_on(settings: Settings, swtpm: EmbeddedSwtpm,
                                                     tmp_path: Path) -> None:
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"default": {"sha256": {"0": "ff" * 32}}}))
    with Tpm.open(swtpm.tcti) as tpm, TestClient(create_app(settings.replace(pcr_policy=policy))) as http:
        dev = enroll(tpm, InProcess(http))
        schedule = Schedule(0.05, jitter=0.0, backoff_min=0.001)
        reason, rounds = run_agent(swtpm.tcti, InProcess(http), dev.device_id, dev.ak_blob, 2, schedule, pcrs=[0])
        assert reason is StopReason.ROUNDS
        assert [(r.outcome, r.code) for r in rounds] == [(Outcome.REFUSED, "POLICY_VIOLATION")] * 2
        assert rounds[0].rules and rounds[0].next_in == pytest.approx(0.05)  # the interval, not a retry
        assert "round 1 refused: POLICY_VIOLATION [" in rounds[0].text()


def test_errors_back_off_and_retry_after_is_honoured(swtpm: EmbeddedSwtpm, tmp_path: Path) -> None:
    with Tpm.open(swtpm.tcti) as tpm:
        ak = tpm.provision_ak()
    nobody = ServiceClient(f"http://127.0.0.1:{free_port()}")
    schedule = Schedule(30.0, backoff_min=0.01, backoff_max=0.08)
    reason, rounds = run_agent(swtpm.tcti, nobody, "d", ak, 6, schedule)
    assert reason is StopReason.ROUNDS and {r.code for r in rounds} == {"UNREACHABLE"}
    for r, (lo, hi) in zip(rounds, [(0.005, 0.01), (0.01, 0.02), (0.02, 0.04), (0.04, 0.08), (0.04, 0.08)],
                           strict=False):
        assert r.outcome is Outcome.ERROR and r.next_in is not None and lo <= r.next_in <= hi
        assert "retry in" in r.text()
    busy = _counting()
    busy.answer = (503, {"error": {"code": "DATABASE_UNAVAILABLE", "reason": None, "detail": "later"}})
    stop = threading.Event()
    reports: list[Round] = []
    for address in _threaded(busy):  # the service answers 503 with Retry-After: 7
        agent = Agent(lambda: Tpm.open(swtpm.tcti), ServiceClient(f"http://{address}"), "d", ak,
                      schedule=Schedule(600.0, backoff_min=1.0), report=reports.append, stop=stop)
        thread = threading.Thread(target=agent.run)
        thread.start()
        while not reports:
            time.sleep(0.01)
        r = reports[0]
        assert (r.outcome, r.code) == (Outcome.ERROR, "DATABASE_UNAVAILABLE")
        assert r.next_in is not None and r.next_in >= 7.0  # Retry-After: 7 over a backoff of 0.5-1 s
        stop.set()  # ends the wait at once
        thread.join(timeout=10)
        assert not thread.is_alive() and len(reports) == 1


def test_an_unknown_device_or_a_lost_ak_stops_the_agent(settings: Settings, swtpm: EmbeddedSwtpm) -> None:
    with Tpm.open(swtpm.tcti) as tpm, TestClient(create_app(settings)) as http:
        dev = enroll(tpm, InProcess(http))
        reason, [r] = run_agent(swtpm.tcti, InProcess(http), "not-a-device", dev.ak_blob, 5)
        assert reason is StopReason.NOT_ENROLLED and r.code == "UNKNOWN_DEVICE" and r.next_in is None
        with EmbeddedSwtpm(fresh_identity=True) as other:  # another TPM: the AK does not load there
            reason, [r] = run_agent(other.tcti, InProcess(http), dev.device_id, dev.ak_blob, 5)
        assert reason is StopReason.NOT_ENROLLED and (r.outcome, r.code) == (Outcome.ERROR, "BAD_BLOB")


def test_each_round_sends_the_new_ima_entries(fresh_swtpm: EmbeddedSwtpm, settings: Settings, tmp_path: Path) -> None:
    settings = settings.replace(ek_roots=(Path(fresh_swtpm.ca_root_path),),
                                ek_intermediates=(Path(fresh_swtpm.ca_intermediate_path),))
    with Tpm.open(fresh_swtpm.tcti) as tpm, TestClient(create_app(settings)) as http:
        machine = Machine(tpm, tmp_path / "securityfs")
        machine.measure(*(ima_synth.ima_ng(f"/usr/bin/tool{i}") for i in range(5)))
        dev = enroll(tpm, InProcess(http))
        seen: list[Round] = []

        def report(r: Round) -> None:  # the machine runs programs between rounds
            seen.append(r)
            machine.measure(*(ima_synth.ima_ng(f"/usr/bin/r{r.number}-{i}") for i in range(r.number)))

        reason, _ = run_agent(fresh_swtpm.tcti, InProcess(http), dev.device_id, dev.ak_blob, 3, ima=True,
                              ima_securityfs=str(machine.root), report=report)
        assert reason is StopReason.ROUNDS
        assert [r.to_dict()["ima"] for r in seen] == [{"count": 6, "verified": 6}, {"count": 7, "verified": 1},
                                                      {"count": 9, "verified": 2}]


def test_each_round_reads_the_event_log_again(fresh_swtpm: EmbeddedSwtpm, settings: Settings,
                                              tmp_path: Path) -> None:
    settings = settings.replace(ek_roots=(Path(fresh_swtpm.ca_root_path),),
                                ek_intermediates=(Path(fresh_swtpm.ca_intermediate_path),))
    log = eventlog_synth.LogBuilder(banks=("sha256",))
    path = tmp_path / "boot.log"

    def measure(text: bytes) -> None:  # the machine measures something, its log grows
        log.event(16, eventlog_synth.EV_ACTION, text)
        with Tpm.open(fresh_swtpm.tcti) as t:
            t.pcr.extend(16, log.records[-1].digests["sha256"], bank="sha256", digest=True)
        path.write_bytes(log.build())

    measure(b"first")
    seen: list[Round] = []

    def report(r: Round) -> None:
        seen.append(r)
        measure(b"after round %d" % r.number)

    with Tpm.open(fresh_swtpm.tcti) as tpm, TestClient(create_app(settings)) as http:
        dev = enroll(tpm, InProcess(http))
        reason, _ = run_agent(fresh_swtpm.tcti, InProcess(http), dev.device_id, dev.ak_blob, 3, pcrs=[16],
                              event_log=lambda _tpm: path.read_bytes(), report=report)
    assert reason is StopReason.ROUNDS and [r.outcome for r in seen] == [Outcome.PASSED] * 3
    counts = [r.to_dict()["event_log_events"] for r in seen]
    assert counts[1] == counts[0] + 1 and counts[2] == counts[0] + 2
    assert all(r.verdict and r.verdict["event_log"]["verified"] == [16] for r in seen)


# -- the agent as a process, against a real serve --------------------------------------------------


class AgentProcess:
    """``tpm2-attest attest ARGS`` (the agent with --every) as a process; its JSON lines."""

    def __init__(self, *args: Any, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "tpm2_attest.cli", "attest", *map(str, args)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     start_new_session=True, env={**os.environ, **(env or {})})
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def line(self, timeout: float = 60.0) -> str:
        try:
            text = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no line from the agent; so far {self.seen}; stderr: {self.stderr()}") from None
        self.seen.append(text)
        return text

    def event(self, timeout: float = 60.0) -> dict[str, Any]:
        obj: dict[str, Any] = json.loads(self.line(timeout))
        return obj

    def signal(self, sig: int) -> None:
        os.kill(self.proc.pid, sig)

    def wait(self, timeout: float = 30.0) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the agent did not exit; lines {self.seen}; stderr {self.stderr()}") from None

    def stderr(self) -> str:
        if self.proc.poll() is None:
            return "(running)"
        assert self.proc.stderr is not None
        return self.proc.stderr.read()

    def rest(self) -> list[str]:
        """Every line still to come (after the process ended)."""
        out = []
        while True:
            try:
                out.append(self.lines.get(timeout=2))
            except queue.Empty:
                return out

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


class SlowProxy:
    """A TCP proxy on loopback that holds the answer to ``POST /v1/attest`` until
    ``release`` is set (``answer_held`` tells when one is held): a round caught in flight."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.release = threading.Event()
        self.answer_held = threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.closing = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closing:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.upstream))
            held = threading.Event()
            threading.Thread(target=self._pump, args=(client, server, held, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, held, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, held: threading.Event, request: bool) -> None:
        try:
            while data := src.recv(65536):
                if request and data.startswith(b"POST /v1/attest "):
                    held.set()
                elif not request and held.is_set():
                    self.answer_held.set()
                    self.release.wait(120)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.closing = True
        self.release.set()
        self.sock.close()


@pytest.fixture(scope="module")
def service(swtpm: EmbeddedSwtpm, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    """One serve for the module: devices enroll again and again (the same swtpm's EK)."""
    db = f"sqlite:///{tmp_path_factory.mktemp('agent') / 'service.db'}"
    with Serve("--db", db, "--ek-root", swtpm.ca_root_path, "--ek-intermediate", swtpm.ca_intermediate_path,
               "--allow-reenroll", "--challenge-rate", "0", "--log-level", "warning") as srv:
        srv.db = db  # type: ignore[attr-defined]
        yield srv


@pytest.fixture
def enrolled(service: Serve, swtpm: EmbeddedSwtpm, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    ak = tmp_path / "ak.json"
    assert main(["enroll", "--server", service.url, "--tcti", swtpm.tcti, "--ak-out", str(ak)]) == 0
    capsys.readouterr()
    return ak


@pytest.fixture
def agents() -> Iterator[list[AgentProcess]]:
    started: list[AgentProcess] = []
    yield started
    for a in started:
        a.close()


def test_agent_rounds_then_sigterm(enrolled: Path, swtpm: EmbeddedSwtpm, agents: list[AgentProcess]) -> None:
    a = AgentProcess("--tcti", swtpm.tcti, "--ak", enrolled, "--every", "0.2s", "--jitter", "0", "--json")
    agents.append(a)
    start = a.event()
    assert start["event"] == "start" and start["every"] == 0.2 and start["pid"] == a.proc.pid
    rounds = [a.event() for _ in range(3)]
    assert [r["round"] for r in rounds] == [1, 2, 3] and {r["outcome"] for r in rounds} == {"passed"}
    assert {r["status"] for r in rounds} == {"trusted"} and len({r["attestation_id"] for r in rounds}) == 3
    a.signal(signal.SIGTERM)
    assert a.wait() == 0
    stop = json.loads([*a.seen, *a.rest()][-1])
    assert stop["event"] == "stop" and stop["reason"] == "stopped" and stop["exit_code"] == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_ends_the_sleep_at_once(enrolled: Path, swtpm: EmbeddedSwtpm, agents: list[AgentProcess],
                                         sig: int) -> None:
    a = AgentProcess("--tcti", swtpm.tcti, "--ak", enrolled, "--every", "1h")  # text lines this time
    agents.append(a)
    assert "attests to" in a.line() and "every 1h" in a.seen[0]
    first = a.line()
    assert " round 1 passed: device " in first and "status trusted" in first and "; next in " in first
    a.signal(sig)
    assert a.wait() == 0  # not an hour later
    assert "stopped after 1 round(s): asked to stop (exit 0)" in a.rest()[-1]


def test_sigterm_during_a_round_finishes_it(service: Serve, enrolled: Path, swtpm: EmbeddedSwtpm,
                                            agents: list[AgentProcess]) -> None:
    proxy = SlowProxy(service.port)
    try:
        a = AgentProcess("--tcti", swtpm.tcti, "--ak", enrolled, "--server", f"http://127.0.0.1:{proxy.port}",
                         "--every", "1h", "--json")
        agents.append(a)
        assert a.event()["event"] == "start"
        assert proxy.answer_held.wait(60), a.stderr()  # the quote is at the service; its answer is held
        a.signal(signal.SIGTERM)
        time.sleep(0.3)
        assert a.proc.poll() is None  # still waiting for the verdict
        proxy.release.set()
        r = a.event()
        assert (r["outcome"], r["status"], r["stop"], r["next_in"]) == ("passed", "trusted", "stopped", None)
        assert a.wait() == 0
        assert json.loads(a.rest()[-1])["reason"] == "stopped"
    finally:
        proxy.close()
    status, history = service.request("GET", f"/v1/admin/devices/{r['device_id']}/attestations",
                                      headers={"Authorization": f"Bearer {_admin_token(service)}"})
    assert status == 200 and history["items"][0]["attestation_id"] == r["attestation_id"]


def test_a_second_signal_abandons_the_round(service: Serve, enrolled: Path, swtpm: EmbeddedSwtpm,
                                           agents: list[AgentProcess]) -> None:
    proxy = SlowProxy(service.port)  # never releases the answer
    try:
        a = AgentProcess("--tcti", swtpm.tcti, "--ak", enrolled, "--server", f"http://127.0.0.1:{proxy.port}",
                         "--every", "1h", "--timeout", "300", "--json")
        agents.append(a)
        a.event()
        assert proxy.answer_held.wait(60)
        a.signal(signal.SIGTERM)
        time.sleep(0.2)
        a.signal(signal.SIGTERM)
        assert a.wait() == 0  # not after the 300 s HTTP timeout
        events = [json.loads(line) for line in a.rest()]
        assert [e["event"] for e in events] == ["abandoned", "stop"] and events[0]["round"] == 1
    finally:
        proxy.close()


_TOKENS: dict[str, str] = {}


def _admin_token(service: Serve) -> str:
    db = service.db  # type: ignore[attr-defined]
    if db not in _TOKENS:
        out = subprocess.run([sys.executable, "-m", "tpm2_attest.cli", "admin", "token", "create", "--db", db,
                              "--name", f"ops{len(_TOKENS)}", "--role", "admin", "--json"],
                             capture_output=True, text=True, check=True, timeout=60)
        _TOKENS[db] = json.loads(out.stdout)["token"]
    return _TOKENS[db]


def test_a_revoked_device_stops_the_agent_with_4(service: Serve, enrolled: Path, swtpm: EmbeddedSwtpm,
                                                 agents: list[AgentProcess]) -> None:
    a = AgentProcess("--tcti", swtpm.tcti, "--ak", enrolled, "--every", "0.3s", "--json")
    agents.append(a)
    a.event()
    first = a.event()
    assert first["outcome"] == "passed"
    status, _ = service.request("POST", f"/v1/admin/devices/{first['device_id']}/revoke", {"reason": "test"},
                                headers={"Authorization": f"Bearer {_admin_token(service)}"})
    assert status == 200
    assert a.wait() == 4
    events = [json.loads(line) for line in [*a.seen[2:], *a.rest()]]
    last_round = [e for e in events if e["event"] == "round"][-1]
    assert (last_round["code"], last_round["stop"]) == ("UNKNOWN_DEVICE", "not_enrolled")
    assert events[-1] == {**events[-1], "event": "stop", "reason": "not_enrolled", "exit_code": 4}


def test_the_agent_rides_out_an_outage(swtpm: EmbeddedSwtpm, tmp_path: Path, agents: list[AgentProcess],
                                       capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    db = f"sqlite:///{tmp_path / 'service.db'}"
    args = ("--db", db, "--ek-root", swtpm.ca_root_path, "--ek-intermediate", swtpm.ca_intermediate_path,
            "--allow-reenroll", "--log-level", "warning")
    ak = tmp_path / "ak.json"
    with Serve(*args, port=port) as srv:
        assert main(["enroll", "--server", srv.url, "--tcti", swtpm.tcti, "--ak-out", str(ak)]) == 0
    capsys.readouterr()
    a = AgentProcess("--tcti", swtpm.tcti, "--ak", ak, "--every", "1h", "--backoff-max", "0.5s", "--retries", "0")
    agents.append(a)
    a.line()
    for n in (1, 2):  # the service is down: errors, retried within --backoff-max
        line = a.line()
        assert f"round {n} error: UNREACHABLE" in line and "could not connect" in line and "retry in" in line
        assert float(line.rsplit("retry in ", 1)[1].rstrip("s")) <= 0.5
    with Serve(*args, port=port):
        while "passed" not in (line := a.line()):
            assert "error: UNREACHABLE" in line
        assert "status trusted" in line and "next in" in line
        a.signal(signal.SIGTERM)
        assert a.wait() == 0


def test_agent_usage_errors(enrolled: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "junk.json"
    junk.write_text('{"version": 1, "device_id": "d", "server": "http://127.0.0.1:1"}')
    for args, words in (((["--every", "0s"]), "--every"), ((["--every", "5 min"]), "--every"),
                        ((["--every", "5m", "--jitter", "80%"]), "--jitter"),
                        ((["--every", "5m", "--backoff-max", "x"]), "--backoff-max")):
        with pytest.raises(SystemExit) as info:
            main(["attest", "--embedded", "--ak", str(enrolled), *args])
        assert info.value.code == 2 and words in capsys.readouterr().err
    assert main(["attest", "--embedded", "--ak", str(junk), "--every", "5m"]) == 2
    assert "--ak" in capsys.readouterr().err
    assert main(["attest", "--embedded", "--ak", str(tmp_path / "none"), "--every", "5m"]) == 2
    assert main(["attest", "--embedded", "--ak", str(enrolled), "--every", "5m", "--event-log",
                 str(tmp_path / "none.log")]) == 2
    assert "--event-log" in capsys.readouterr().err


# -- the embedded TPM across processes -------------------------------------------------------------


def _cli(*args: Any, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tpm2_attest.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=180, env={**os.environ, **(env or {})}, check=False)


def test_enroll_then_attest_embedded_in_two_processes(tmp_path: Path, agents: list[AgentProcess]) -> None:
    state = tmp_path / "tpm"
    made = _cli("info", "--embedded-state", state, "--json")  # the device's TPM, made once
    assert made.returncode == 0, made.stderr
    assert (state / "state" / "tpm2-00.permall").is_file() and state.stat().st_mode & 0o777 == 0o700
    ak = tmp_path / "ak.json"
    with Serve("--db", f"sqlite:///{tmp_path / 's.db'}", "--ek-root", state / "ca" / "swtpm-localca-rootca-cert.pem",
               "--ek-intermediate", state / "ca" / "issuercert.pem", "--log-level", "warning") as srv:
        enrolled = _cli("enroll", "--embedded", "--embedded-state", state, "--server", srv.url, "--ak-out", ak,
                        "--json")
        assert enrolled.returncode == 0, enrolled.stderr
        attested = _cli("attest", "--embedded", "--embedded-state", state, "--ak", ak, "--json")
        assert attested.returncode == 0, attested.stderr
        assert json.loads(attested.stdout)["device_id"] == json.loads(enrolled.stdout)["device_id"]
        a = AgentProcess("--embedded-state", state, "--ak", ak, "--every", "0.1s", "--json")  # implies --embedded
        agents.append(a)
        a.event()
        assert [a.event()["outcome"] for _ in range(2)] == ["passed", "passed"]
        a.signal(signal.SIGTERM)
        assert a.wait() == 0


def test_the_default_embedded_state_is_the_users(tmp_path: Path) -> None:
    env = {"XDG_STATE_HOME": str(tmp_path / "xdg")}
    ak = tmp_path / "ak.json"
    with Serve("--db", f"sqlite:///{tmp_path / 's.db'}", "--allow-missing-ek-certificate",
               "--log-level", "warning") as srv:  # no EK roots: trust on first use
        enrolled = _cli("enroll", "--embedded", "--server", srv.url, "--ak-out", ak, env=env)
        assert enrolled.returncode == 0, enrolled.stderr
        assert "embedded software TPM kept in" in enrolled.stderr
        attested = _cli("attest", "--embedded", "--ak", ak, env=env)
        assert attested.returncode == 0, attested.stderr
        assert attested.stdout.startswith("attested: device ")
    assert (tmp_path / "xdg" / "tpm2-attest" / "embedded-tpm" / "state" / "tpm2-00.permall").is_file()


def test_one_process_at_a_time_uses_a_state_dir(tmp_path: Path) -> None:
    from tpm2_attest.errors import ErrorCode, TpmError

    with EmbeddedSwtpm(state_dir=tmp_path / "tpm") as first:
        with pytest.raises(TpmError) as info:
            EmbeddedSwtpm(state_dir=tmp_path / "tpm", lock_timeout=0.2).start()
        assert info.value.code == ErrorCode.TRANSPORT and f"(pid {os.getpid()})" in str(info.value)
        ek = Tpm.open(first.tcti).ek("rsa").public
    with EmbeddedSwtpm(state_dir=tmp_path / "tpm") as again, Tpm.open(again.tcti) as tpm:
        assert tpm.ek("rsa").public == ek  # the same TPM, started again
        assert (tmp_path / "tpm" / "state").is_dir()
    assert (tmp_path / "tpm" / "state").is_dir()  # kept


# -- the example systemd unit ------------------------------------------------------------------------

UNIT = Path(__file__).resolve().parent.parent / "examples" / "tpm2-attest-agent.service"


def test_the_example_unit_runs_the_agent_with_options_that_exist() -> None:
    import shlex

    from tpm2_attest.cli import build_parser

    lines = [line for line in UNIT.read_text().splitlines() if line.startswith(("ExecStart=", "#Environment="))]
    exec_start = shlex.split(lines[0].split("=", 1)[1].replace("%d", "/run/credentials/x"))
    assert exec_start[0] == "/usr/local/bin/tpm2-attest"
    args = build_parser().parse_args(exec_start[1:])
    assert args.func.__name__ == "cmd_attest" and args.every == 300 and args.ak == "/run/credentials/x/ak.json"
    envs = {part.split("=", 1)[0] for line in lines[1:] for part in line.split("=", 1)[1].split()}
    assert envs == {"TPM2_ATTEST_CA_FILE", "TPM2_ATTEST_CLIENT_CERT", "TPM2_ATTEST_CLIENT_KEY"}
    # the variables are the ones the client options read
    from tpm2_attest.cli.common import CA_FILE_ENV, CLIENT_CERT_ENV, CLIENT_KEY_ENV
    assert envs == {CA_FILE_ENV, CLIENT_CERT_ENV, CLIENT_KEY_ENV}
    text = UNIT.read_text()
    assert "RestartPreventExitStatus=2 4" in text and "KillSignal=SIGTERM" in text


def test_the_example_unit_is_valid_and_hardened(tmp_path: Path) -> None:
    import shutil

    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    exe = Path(sys.executable).with_name("tpm2-attest")  # ExecStart must name a program that exists
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/tpm2-attest", str(exe)))
    res = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0 and not res.stderr.strip(), res.stderr
    res = subprocess.run([analyze, "security", "--offline=yes", str(unit)], capture_output=True, text=True,
                         timeout=60, check=False)
    if "--offline" in res.stderr:
        pytest.skip("systemd-analyze security --offline needs systemd 250")
    score = float(res.stdout.rsplit("exposure level for", 1)[1].split(":", 1)[1].split()[0])
    assert score <= 2.0, res.stdout  # systemd rates 0-10; below 2.0 is "OK"
