"""The operator dashboard in a real browser: Debian's headless chromium (driven by selenium
through Debian's chromedriver) against the service under uvicorn on a free loopback port, with
swtpm devices enrolled and attested over HTTP: one passing, one refused by a policy, one
revoked. The event log the devices send carries hostile strings (markup, a script, bidi
controls) in measured and unmeasured places; the pages must show them as text.

Each page is also saved as a screenshot: to ``$TPM2_ATTEST_SCREENSHOTS`` when set, else to a
pytest temporary directory (the run's output names it after the module's tests).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("jinja2")
uvicorn = pytest.importorskip("uvicorn")

import eventlog_synth as synth  # noqa: E402
from serveproc import in_thread  # noqa: E402
from test_service import BACKENDS, POSTGRES_URL, reset_postgres  # noqa: E402
from test_service_operate import make_token as operator_token  # noqa: E402
from tpm2_attest import Tpm  # noqa: E402
from tpm2_attest.embedded import EmbeddedSwtpm  # noqa: E402
from tpm2_attest.service import (  # noqa: E402
    ServiceClient,
    ServiceError,
    Settings,
    attest,
    auth,
    create_app,
    enroll,
)
from tpm2_attest.service.store import Store  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-extensions", "--no-default-browser-check",
    "--disable-client-side-phishing-detection", "--disable-domain-reliability", "--no-pings",
    "--metrics-recording-only", "--password-store=basic", "--use-mock-keychain",
    "--disable-features=Translate,OptimizationHints,MediaRouter,AutofillServerCommunication",
    "--window-size=1400,1000",
)

# Hostile strings, as a device's event log can carry them. The command line is measured (GRUB
# measures it into PCR 8): it is in the machine state and in the policy violation. The boot
# application's path is an unmeasured label of its PCR 4 event.
HOSTILE_CMDLINE = ('/vmlinuz root=/dev/sda1 ro <script>document.title="pwned"</script>'
                   '<img src=x id=pwned onerror="document.title=\'pwned\'"> \u202eevil')
HOSTILE_APP = '\\EFI\\<b id="bold">boot</b>\\"><iframe src="/dashboard/audit"></iframe>.efi'
PCRS = [4, 8, 16]


def hostile_log() -> synth.LogBuilder:
    b = synth.LogBuilder(banks=("sha256",))
    b.event(4, synth.EV_EFI_ACTION, b"Calling EFI Application from Boot Option")
    b.event(4, synth.EV_EFI_BOOT_SERVICES_APPLICATION,
            synth.image_load(synth.dp_file(HOSTILE_APP) + synth.dp_end()), measured=b"shim")
    synth.grub_string(b, "kernel_cmdline", HOSTILE_CMDLINE)
    b.event(16, synth.EV_ACTION, b"tpm2-attest dashboard test")
    return b


def make_token(url: str, name: str, role: str) -> str:
    return operator_token(Settings(database_url=url), name, role)


@dataclass
class Fleet:
    base: str
    db: str
    settings: Settings
    read_token: str
    admin_token: str
    good: str
    bad: str
    gone: str
    shots: Path


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config) -> Iterator[Fleet]:
    """A served fleet: ``good`` passed, ``bad`` was refused by policy ``kiosk`` (its tag),
    ``gone`` attested once and was revoked (its EK then enrolled ``good``); two swtpms."""
    if not shutil.which("swtpm"):
        pytest.skip("swtpm is not installed (apt-get install swtpm swtpm-tools)")
    tmp = tmp_path_factory.mktemp("dashboard")
    shots = Path(os.environ.get("TPM2_ATTEST_SCREENSHOTS") or tmp / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    with EmbeddedSwtpm() as sw, EmbeddedSwtpm(fresh_identity=True) as sw2:
        settings = Settings(database_url=f"sqlite:///{tmp / 'service.db'}", ek_roots=(Path(sw.ca_root_path),),
                            ek_intermediates=(Path(sw.ca_intermediate_path),), sweep_interval=0)
        with in_thread(create_app(settings)) as base:
            admin_token = make_token(settings.database_url, "root", "admin")
            api = ServiceClient(base, token=admin_token)
            log = hostile_log()
            with Tpm.open(sw.tcti) as tpm, Tpm.open(sw2.tcti) as tpm2:
                for t in (tpm, tpm2):
                    for rec in log.records:
                        t.pcr.extend(rec.pcr, rec.digests["sha256"], bank="sha256", digest=True)
                gone = enroll(tpm, base)
                attest(tpm, base, gone.device_id, gone.ak_blob, pcrs=PCRS)
                api.request("POST", f"/v1/admin/devices/{gone.device_id}/revoke", {"reason": "stolen <laptop>"})
                good = enroll(tpm, base)  # the revoked device's EK may enroll anew
                bad = enroll(tpm2, base)
                api.request("POST", f"/v1/admin/devices/{good.device_id}/tags", {"add": ["lab", "rack-7"]})
                api.request("POST", f"/v1/admin/devices/{bad.device_id}/tags", {"add": ["kiosk"]})
                kiosk = {"boot": {"kernel_cmdline": ["/vmlinuz root=/dev/sda1 ro quiet"]},
                         "pcrs": {"sha256": {"16": "01" * 32}}}
                api.request("PUT", "/v1/admin/policies/kiosk", {"document": {"pcrs": {"sha256": {"16": "02" * 32}}}})
                api.request("PUT", "/v1/admin/policies/kiosk", {"document": kiosk, "freshness": 1800})
                api.request("PUT", "/v1/admin/assignments/tag/kiosk", {"policy": "kiosk"})
                attest(tpm, base, good.device_id, good.ak_blob, pcrs=PCRS, event_log=log.build())
                with pytest.raises(ServiceError) as refused:
                    attest(tpm2, base, bad.device_id, bad.ak_blob, pcrs=PCRS, event_log=log.build())
                assert refused.value.code == "POLICY_VIOLATION"
                assert sorted(refused.value.extra["rules"]) == ["boot.kernel_cmdline", "pcrs.value"]
            yield Fleet(base, settings.database_url, settings, make_token(settings.database_url, "viewer", "read"),
                        admin_token, good.device_id, bad.device_id, gone.device_id, shots)
    capture = pytestconfig.pluginmanager.get_plugin("capturemanager")
    if capture is not None and any(shots.iterdir()):  # where the screenshots are, in the run's output
        with capture.global_and_fixture_disabled():
            print(f"\ndashboard screenshots: {shots}")


@pytest.fixture(scope="module")
def browser(fleet: Fleet) -> Iterator[Any]:
    """Headless chromium (Debian's) through Debian's chromedriver; never downloads anything."""
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.skip("chromium / chromedriver are not installed (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager: never fetch a driver or browser
    profile = tempfile.mkdtemp(prefix="tpm2-attest-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(10)
    driver.set_script_timeout(5)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


# -- helpers ---------------------------------------------------------------------------------------


def by(driver: Any, css: str) -> Any:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, css)


def all_by(driver: Any, css: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return list(driver.find_elements(By.CSS_SELECTOR, css))


def follow(driver: Any, element: Any) -> None:
    """Click a link or a submit button and wait (bounded) until the next page has loaded."""
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.wait import WebDriverWait

    page = driver.find_element("tag name", "html")
    element.click()
    wait = WebDriverWait(driver, 5, poll_frequency=0.02)
    wait.until(expected_conditions.staleness_of(page))
    wait.until(lambda d: d.execute_script("return document.readyState") == "complete")


def path_of(driver: Any) -> str:
    parts = urllib.parse.urlsplit(driver.current_url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def screenshot(driver: Any, fleet: Fleet, name: str) -> Path:
    """The whole page as a PNG: the viewport is stretched to the content (bounded) meanwhile."""
    height = int(driver.execute_script("return document.body.scrollHeight"))
    metrics = {"width": 1400, "height": max(600, min(height, 6000)), "deviceScaleFactor": 1, "mobile": False}
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    try:
        path = fleet.shots / f"{name}.png"
        assert driver.save_screenshot(str(path))
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    assert path.stat().st_size > 5000
    return path


def login(driver: Any, fleet: Fleet, token: str | None = None, *, start: str = "/dashboard/devices") -> None:
    driver.delete_all_cookies()
    driver.get(fleet.base + start)
    assert path_of(driver).startswith("/dashboard/login")
    by(driver, "#token").send_keys(token or fleet.read_token)
    follow(driver, by(driver, "#login"))


def assert_inert(driver: Any) -> None:
    """No hostile markup became an element, no script ran, the strings are shown as text."""
    assert driver.title != "pwned" and "pwned" not in driver.title
    assert all_by(driver, "script") == [] and all_by(driver, "img") == [] and all_by(driver, "iframe") == []
    assert all_by(driver, "#pwned") == [] and all_by(driver, "#bold") == []


class Plain(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kw: Any) -> None:  # see redirects, do not follow them
        return None


def fetch(url: str, *, data: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, Any, bytes]:
    """(status, headers, body) of one request, redirects not followed."""
    opener = urllib.request.build_opener(Plain)
    req = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with opener.open(req, timeout=10) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


# -- the tests ---------------------------------------------------------------------------------------


def test_pages_need_a_login(fleet: Fleet, browser: Any) -> None:
    browser.delete_all_cookies()
    for page in ("/dashboard/devices", f"/dashboard/devices/{fleet.bad}", "/dashboard/policies",
                 "/dashboard/policies/kiosk", "/dashboard/audit"):
        browser.get(fleet.base + page)
        assert path_of(browser) == "/dashboard/login?" + urllib.parse.urlencode({"next": page}), page
        assert all_by(browser, "#token") and all_by(browser, "main table") == [] and "trusted" not in browser.page_source
    status, headers, _ = fetch(fleet.base + "/dashboard/audit")
    assert status == 303 and headers["location"] == "/dashboard/login?next=%2Fdashboard%2Faudit"
    screenshot(browser, fleet, "01-login")
    # A wrong token: refused on the page, no session cookie.
    by(browser, "#token").send_keys("tpa_not-a-token")
    follow(browser, by(browser, "#login"))
    assert by(browser, "#login-error").text == "Unknown or revoked token."
    assert browser.get_cookies() == [] and "tpa_not-a-token" not in browser.page_source
    screenshot(browser, fleet, "02-login-refused")


def test_devices_page_filters_and_links(fleet: Fleet, browser: Any) -> None:
    login(browser, fleet)
    assert path_of(browser) == "/dashboard/devices"
    assert "tpa_" not in browser.current_url  # the token travels in the form body only
    assert by(browser, "#who").text == "token:viewer (read)"
    rows = {r.get_attribute("data-device"): r for r in all_by(browser, "#devices > tbody > tr")}
    assert set(rows) == {fleet.good, fleet.bad, fleet.gone}
    status = {d: r.find_element("css selector", ".badge").text for d, r in rows.items()}
    assert status == {fleet.good: "trusted", fleet.bad: "failed", fleet.gone: "revoked"}
    assert "lab" in rows[fleet.good].text and "rack-7" in rows[fleet.good].text
    assert "refused" in rows[fleet.bad].text and "POLICY_VIOLATION" in rows[fleet.bad].text
    assert "boot.kernel_cmdline" in rows[fleet.bad].text and "pcrs.value" in rows[fleet.bad].text
    assert "passed" in rows[fleet.good].text and "passed" in rows[fleet.gone].text
    assert {s: by(browser, f"#count-{s}").text for s in ("trusted", "failed", "stale", "revoked")} == {
        "trusted": "1", "failed": "1", "stale": "0", "revoked": "1"}
    screenshot(browser, fleet, "03-devices")

    # Filter by status with the form, then by tag with a tag link.
    from selenium.webdriver.support.select import Select

    Select(by(browser, "#filter-status")).select_by_value("failed")
    follow(browser, by(browser, "#filter"))
    assert path_of(browser).startswith("/dashboard/devices?status=failed")
    assert [r.get_attribute("data-device") for r in all_by(browser, "#devices > tbody > tr")] == [fleet.bad]
    screenshot(browser, fleet, "04-devices-failed")
    browser.get(fleet.base + "/dashboard/devices")
    follow(browser, next(a for a in all_by(browser, "a.tag") if a.text == "rack-7"))
    assert path_of(browser) == "/dashboard/devices?tag=rack-7"
    assert [r.get_attribute("data-device") for r in all_by(browser, "#devices > tbody > tr")] == [fleet.good]
    browser.get(fleet.base + "/dashboard/devices?status=happy")
    assert by(browser, "#error-code").text == "INVALID_REQUEST" and "status must be one of" in browser.page_source


def test_devices_are_paginated(fleet: Fleet, browser: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from tpm2_attest.service import dashboard

    monkeypatch.setattr(dashboard, "PAGE_SIZE", 2)
    login(browser, fleet)
    seen = [r.get_attribute("data-device") for r in all_by(browser, "#devices > tbody > tr")]
    assert len(seen) == 2 and all_by(browser, "#first-page") == []
    follow(browser, by(browser, "#next-page"))
    seen += [r.get_attribute("data-device") for r in all_by(browser, "#devices > tbody > tr")]
    assert sorted(seen) == sorted([fleet.good, fleet.bad, fleet.gone])  # each once, enrollment order
    assert seen[0] == fleet.gone and all_by(browser, "#next-page") == []
    follow(browser, by(browser, "#first-page"))
    assert path_of(browser) == "/dashboard/devices" and len(all_by(browser, "#devices > tbody > tr")) == 2
    browser.get(fleet.base + "/dashboard/devices?cursor=%25%25%25")
    assert by(browser, "#error-code").text == "INVALID_REQUEST"


def test_a_refused_device_shows_its_rules_and_machine_state_inert(fleet: Fleet, browser: Any) -> None:
    login(browser, fleet)
    follow(browser, by(browser, f'#devices tr[data-device="{fleet.bad}"] a.device'))
    assert path_of(browser) == f"/dashboard/devices/{fleet.bad}"
    assert by(browser, "#device-id").text == fleet.bad
    refusal = by(browser, "#refusal")
    assert "POLICY_VIOLATION" in refusal.text
    rules = [c.text for c in refusal.find_elements("css selector", "code.rule")]
    assert sorted(rules) == ["boot.kernel_cmdline", "pcrs.value"]
    assert "kernel command line" in refusal.text and "<script>" in refusal.text  # the detail, as text
    assert by(browser, "#policies").text == "kiosk v2" and by(browser, "#tags").text == "kiosk"
    history = all_by(browser, "#history > tbody > tr")
    assert len(history) == 1 and "refused" in history[0].text and "pcrs.value" in history[0].text
    # The machine state: the hostile command line, measured, shown as the literal string.
    cmdline = by(browser, "#cmdline").text
    assert cmdline.startswith('/vmlinuz root=/dev/sda1 ro <script>document.title="pwned"</script><img src=x')
    assert cmdline.endswith("\\u202eevil")  # the bidi override shown, not obeyed
    assert '\\EFI\\<b id="bold">boot</b>' in by(browser, "#machine-state").text
    assert_inert(browser)
    screenshot(browser, fleet, "05-device-refused")

    # Its attestation, then the policy that refused it, then that policy's first version.
    follow(browser, by(browser, "#last-attestation"))
    assert path_of(browser).startswith(f"/dashboard/devices/{fleet.bad}/attestations/")
    assert sorted(c.text for c in all_by(browser, "#rules code.rule")) == ["boot.kernel_cmdline", "pcrs.value"]
    assert "sha256" in browser.page_source and "<script>" in by(browser, "#machine-state").text
    assert_inert(browser)
    screenshot(browser, fleet, "06-attestation-refused")
    follow(browser, by(browser, "table.violations a"))
    assert path_of(browser) == "/dashboard/policies/kiosk"
    assert by(browser, "#policy-version").text == "v2" and "kernel_cmdline" in by(browser, "#document").text
    assert by(browser, "#assigned").text == "tag kiosk"
    screenshot(browser, fleet, "07-policy")
    follow(browser, next(a for a in all_by(browser, "#versions a") if a.text == "v1"))
    assert path_of(browser) == "/dashboard/policies/kiosk?version=1"
    assert by(browser, "#policy-version").text == "v1" and "kernel_cmdline" not in by(browser, "#document").text
    follow(browser, by(browser, "a.brand"))
    assert path_of(browser) == "/dashboard/devices"


def test_passing_and_revoked_devices(fleet: Fleet, browser: Any) -> None:
    login(browser, fleet, start=f"/dashboard/devices/{fleet.good}")
    assert path_of(browser) == f"/dashboard/devices/{fleet.good}"  # back where the login began
    assert all_by(browser, "#refusal") == [] and "trusted" in by(browser, "#facts").text
    assert by(browser, "#policies").text == "no policy" and by(browser, "#tags").text == "lab rack-7"
    assert "<script>" in by(browser, "#cmdline").text
    assert_inert(browser)
    screenshot(browser, fleet, "08-device-trusted")
    follow(browser, by(browser, "#last-attestation"))
    assert "passed" in browser.page_source and all_by(browser, "table.violations") == []
    screenshot(browser, fleet, "09-attestation-passed")
    follow(browser, by(browser, "#device-link"))
    assert path_of(browser) == f"/dashboard/devices/{fleet.good}"

    browser.get(f"{fleet.base}/dashboard/devices/{fleet.gone}")
    assert "revoked" in by(browser, "#facts").text and by(browser, "#no-state").text.startswith("No attestation")
    assert "passed" in by(browser, "#history").text
    screenshot(browser, fleet, "10-device-revoked")
    browser.get(f"{fleet.base}/dashboard/devices/no-such-device")
    assert by(browser, "#error-code").text == "UNKNOWN_DEVICE"
    browser.get(f"{fleet.base}/dashboard/devices/{fleet.good}/attestations/999999")
    assert by(browser, "#error-code").text == "NOT_FOUND"
    screenshot(browser, fleet, "11-not-found")


def test_policies_and_audit_pages(fleet: Fleet, browser: Any) -> None:
    login(browser, fleet)
    follow(browser, by(browser, 'header nav a[href="/dashboard/policies"]'))
    assert [a.text for a in all_by(browser, "#policies a.policy")] == ["kiosk"]
    assert "v2" in by(browser, "#policies").text and "1800" in by(browser, "#policies").text
    assert "tag kiosk" in by(browser, "#assignments").text
    screenshot(browser, fleet, "12-policies")
    follow(browser, by(browser, 'header nav a[href="/dashboard/audit"]'))
    rows = all_by(browser, "#audit > tbody > tr")
    actions = [r.find_element("css selector", "code.action").text for r in rows]
    assert actions[0] == "dashboard.login" and "token:viewer" in rows[0].text
    assert {"device.revoke", "policy.put", "policy.assign", "device.tags", "token.create"} <= set(actions)
    revoke = rows[actions.index("device.revoke")]
    assert fleet.gone in revoke.text and "stolen <laptop>" in revoke.text and "token:root" in revoke.text
    assert_inert(browser)
    screenshot(browser, fleet, "13-audit")


def test_session_cookie_logout_and_revoked_token(fleet: Fleet, browser: Any) -> None:
    token = make_token(fleet.db, "temp", "read")
    login(browser, fleet, token)
    [cookie] = browser.get_cookies()
    assert cookie["name"] == "tpm2_attest_session" and cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict" and cookie["path"] == "/dashboard" and cookie["secure"] is False
    assert cookie["value"] != token and token not in cookie["value"]
    jar = {"Cookie": f"tpm2_attest_session={cookie['value']}"}
    status, headers, body = fetch(fleet.base + "/dashboard/devices", headers=jar)
    assert status == 200 and fleet.good.encode() in body
    # Security headers of a page with data.
    csp = headers["content-security-policy"]
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp and "script-src" not in csp
    assert headers["x-frame-options"] == "DENY" and headers["cache-control"] == "no-store"
    assert headers["x-content-type-options"] == "nosniff" and headers["referrer-policy"] == "same-origin"

    follow(browser, by(browser, "#logout"))
    assert path_of(browser) == "/dashboard/login?out=1" and by(browser, "#notice").text == "You are logged out."
    assert browser.get_cookies() == []
    browser.get(fleet.base + "/dashboard/devices")
    assert path_of(browser).startswith("/dashboard/login")
    status, headers, _ = fetch(fleet.base + "/dashboard/devices", headers=jar)  # the old cookie: ended
    assert status == 303 and headers["location"].startswith("/dashboard/login")

    # A revoked token ends its sessions.
    login(browser, fleet, token)
    assert path_of(browser) == "/dashboard/devices"
    store = Store(fleet.db)
    try:
        with store.session() as s:
            assert auth.store.revoke_token(s, "temp", datetime.now(UTC))
            s.commit()
    finally:
        store.close()
    browser.refresh()
    assert path_of(browser).startswith("/dashboard/login")
    assert by(browser, "#token").get_attribute("type") == "password"


def test_login_refuses_cross_site_posts_and_foreign_redirects(fleet: Fleet) -> None:
    form = urllib.parse.urlencode({"token": fleet.read_token, "next": "/dashboard/audit"}).encode()
    kind = {"Content-Type": "application/x-www-form-urlencoded"}
    status, _, body = fetch(fleet.base + "/dashboard/login", data=form, headers={**kind, "Origin": "http://evil.example"})
    assert status == 403 and b"FORBIDDEN" in body
    status, _, _ = fetch(fleet.base + "/dashboard/login", data=form, headers={**kind, "Sec-Fetch-Site": "cross-site"})
    assert status == 403
    status, headers, _ = fetch(fleet.base + "/dashboard/login", data=form, headers={**kind, "Origin": fleet.base})
    assert status == 303 and headers["location"] == "/dashboard/audit"
    cookie = headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/dashboard" in cookie
    assert "Secure" not in cookie and fleet.read_token not in cookie
    for target in ("https://evil.example/x", "//evil.example/dashboard/", "/v1/admin/tokens", "/dashboard/\\evil"):
        form = urllib.parse.urlencode({"token": fleet.read_token, "next": target}).encode()
        status, headers, _ = fetch(fleet.base + "/dashboard/login", data=form, headers=kind)
        assert status == 303 and headers["location"] == "/dashboard/devices", target
    status, _, _ = fetch(fleet.base + "/dashboard/login", data=b"token=" + b"x" * 10_000, headers=kind)
    assert status == 413


def test_secure_cookie_and_opting_out(fleet: Fleet) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    with TestClient(create_app(fleet.settings.replace(dashboard_secure_cookie=True))) as c:
        r = c.post("/dashboard/login", data={"token": fleet.read_token}, follow_redirects=False)
        assert r.status_code == 303 and "Secure" in r.headers["set-cookie"]
    with TestClient(create_app(fleet.settings.replace(dashboard=False))) as c:
        assert c.get("/dashboard/login").status_code == 404
        assert c.get("/dashboard/static/dashboard.css").status_code == 404


def test_the_api_serves_one_attestation(fleet: Fleet) -> None:
    api = ServiceClient(fleet.base, token=fleet.read_token)
    history = api.get(f"/v1/admin/devices/{fleet.bad}/attestations")["items"]
    one = api.get(f"/v1/admin/devices/{fleet.bad}/attestations/{history[0]['attestation_id']}")
    assert one == history[0] and one["state"]["linux"]["cmdline"].startswith("/vmlinuz")
    with pytest.raises(ServiceError) as info:  # another device's attestation is not this one's
        api.get(f"/v1/admin/devices/{fleet.good}/attestations/{history[0]['attestation_id']}")
    assert info.value.code == "NOT_FOUND" and info.value.status == 404


# -- sessions and helpers, without a browser ---------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(params=BACKENDS)
def local(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Any, Clock, str]]:
    """The application in-process (no devices needed) on SQLite and PostgreSQL, its clock, and
    a read token."""
    with warnings.catch_warnings():  # newest Starlette prefers httpx2 for its TestClient
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    url = f"sqlite:///{tmp_path / 's.db'}"
    if request.param == "postgres":
        assert POSTGRES_URL
        reset_postgres(POSTGRES_URL)
        url = POSTGRES_URL
    settings = Settings(database_url=url, require_ek_certificate=False, sweep_interval=0)
    clock = Clock()
    with TestClient(create_app(settings, clock=clock)) as c:
        yield c, clock, make_token(settings.database_url, "ops", "read")


def _get(c: Any, path: str, secret: str) -> Any:
    """GET ``path`` with only this session cookie (redirects not followed)."""
    c.cookies.clear()
    c.cookies.set("tpm2_attest_session", secret, path="/dashboard")
    try:
        return c.get(path, follow_redirects=False)
    finally:
        c.cookies.clear()


def _login(c: Any, token: str) -> str:
    c.cookies.clear()  # each login here is another browser's (a browser's own new login ends its old session)
    r = c.post("/dashboard/login", data={"token": token}, follow_redirects=False)
    assert r.status_code == 303, r.text
    return str(r.cookies["tpm2_attest_session"])


def test_sessions_expire_are_capped_and_swept(local: tuple[Any, Clock, str]) -> None:
    from datetime import timedelta

    from sqlalchemy import func, select

    from tpm2_attest.service.tables import SessionRecord

    c, clock, token = local
    secret = _login(c, token)
    assert _get(c, "/dashboard/devices", secret).status_code == 200
    clock.now += auth.SESSION_TTL + timedelta(seconds=1)
    r = _get(c, "/dashboard/devices", secret)
    assert r.status_code == 303 and r.headers["location"].startswith("/dashboard/login")

    store = c.app.state.service.store
    secrets = []
    for _ in range(auth.SESSIONS_PER_TOKEN + 3):
        secrets.append(_login(c, token))
        clock.now += timedelta(seconds=1)
    with store.session() as s:  # the expired one is gone, and the oldest beyond the cap
        assert s.scalar(select(func.count()).select_from(SessionRecord)) == auth.SESSIONS_PER_TOKEN
    live = [x for x in secrets if _get(c, "/dashboard/audit", x).status_code == 200]
    assert live == secrets[-auth.SESSIONS_PER_TOKEN:]  # logging in again ended the oldest
    clock.now += auth.SESSION_TTL
    c.app.state.service.sweep()
    with store.session() as s:
        assert s.scalar(select(func.count()).select_from(SessionRecord)) == 0
    # A cookie that is no session, or far too long, is no login (and no error).
    for bogus in ("x", "y" * 5000):
        assert _get(c, "/dashboard/devices", bogus).status_code == 303


def test_stylesheet_and_headers_without_login(local: tuple[Any, Clock, str]) -> None:
    c, _clock, _token = local
    css = c.get("/dashboard/static/dashboard.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert css.headers["x-content-type-options"] == "nosniff"
    login = c.get("/dashboard/login")
    assert login.headers["content-security-policy"].startswith("default-src 'none'")
    assert login.headers["cache-control"] == "no-store" and "<script" not in login.text
    assert c.get("/dashboard", follow_redirects=False).headers["location"] == "/dashboard/devices"


def test_inert_and_the_login_target() -> None:
    from tpm2_attest.service.dashboard import _safe_next, inert

    assert inert("a\u202eb\u200bc\x1b[31m\x00") == "a\\u202eb\\u200bc\\u001b[31m\\u0000"
    assert inert("é ü 漢字 tab\there\r") == "é ü 漢字 tab\there\\u000d"  # tabs and newlines are white space
    assert inert("x" * 10, limit=4) == "xxxx… (6 more characters)"
    assert _safe_next("/dashboard/devices?tag=a") == "/dashboard/devices?tag=a"
    for bad in ("https://evil/dashboard/x", "//evil/dashboard/", "/dashboardx", "/v1/admin/devices",
                "/dashboard/\\x", "/dashboard/x\r\nSet-Cookie: a=b", None, ""):
        assert _safe_next(bad) == "/dashboard/devices", bad
