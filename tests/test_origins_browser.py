"""Upstream content never runs with the dashboard's origin, in a real browser (headless
Chromium): what issue 25 showed from outside, replayed against a ``fleetbreaker serve``.

- An upstream page served at ``/proxy/files/page.html``, opened in the tab where the
  admin had just used the dashboard, looks for the admin token in the page's storage
  and tries to force a breaker open with it.
- An upstream page registers an upstream script as a service worker with scope ``/``
  (the upstream says ``Service-Worker-Allowed: /``), to take over ``/dashboard`` in a
  later tab.

Both failed while the dashboard and the admin API shared the proxy's origin. Every
wait is bounded: Playwright's own timeouts, at most a few seconds each.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, expect

from tests.support import web
from tests.support.browser import chromium
from tests.support.gateway import AUTH, TOKEN
from tests.support.gateway_process import GatewayProcess
from tests.support.upstream import Reply, Upstream

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.xdist_group("browser")]

HTML = (("Content-Type", "text/html; charset=utf-8"),)
# Reads every storage it can, then acts with what it found, on its own origin (where
# the admin API was) and on the dashboard's (a token would be sent there, if found).
PAGE = b"""<!doctype html><title>upstream page</title><script>
window.attack = (async () => {
  const key = "fleetbreaker.adminToken";
  const token = sessionStorage.getItem(key) || localStorage.getItem(key);
  const stored = [...Object.keys(sessionStorage), ...Object.keys(localStorage)];
  let forced;
  try {
    const answer = await fetch("/admin/breakers/api/open", {
      method: "POST",
      headers: { Authorization: `Bearer ${token}` },
    });
    forced = answer.status;
  } catch (error) {
    forced = String(error);
  }
  return { origin: location.origin, token, stored, forced };
})();
</script>"""
# A worker that answers /dashboard itself: in the issue, it sent what the admin typed
# to the upstream.
WORKER = b"""
self.addEventListener("install", () => self.skipWaiting());
self.addEventListener("activate", (event) => event.waitUntil(self.clients.claim()));
self.addEventListener("fetch", (event) => {
  if (new URL(event.request.url).pathname === "/dashboard") {
    event.respondWith(new Response("<title>hijacked</title>", {
      headers: { "Content-Type": "text/html" },
    }));
  }
});
"""
REGISTER = b"""<!doctype html><title>upstream registers</title><script>
window.registration = navigator.serviceWorker
  .register("/proxy/files/sw.js", { scope: "/" })
  .then(async () => { await navigator.serviceWorker.ready; return "registered"; },
        (error) => `refused: ${error.message}`);
</script>"""


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, _upstream_server: Upstream
) -> Iterator[GatewayProcess]:
    """One ``serve``: upstream ``api`` with a breaker, and ``files``, the upstream's
    pages under ``/files``."""
    url = _upstream_server.url
    process = GatewayProcess(
        tmp_path_factory.mktemp("origins"),
        {"BREAKER_UPSTREAMS": f"api={url},files={url}/files", "BREAKER_ADMIN_TOKEN": TOKEN},
        workers=1,
    )
    process.start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as browser:
        yield browser


def state_of(gateway: GatewayProcess, name: str) -> str:
    response = web.get(f"{gateway.admin_url}/admin/breakers/{name}", headers=AUTH, timeout=5)
    state: str = response.json()["state"]
    return state


def origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def test_an_upstream_page_in_the_dashboards_tab_finds_no_token_and_cannot_act(
    browser: Browser, gateway: GatewayProcess, upstream: Upstream, tmp_path: Path
) -> None:
    upstream.plan("/files/page.html", Reply(body=PAGE, headers=HTML))
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{gateway.admin_url}/dashboard")
    api = page.locator('.card[data-name="api"]')
    api.get_by_role("button", name="Reset").click()
    page.locator("#token").fill(TOKEN)
    page.locator("#confirm-ok").click()
    expect(page.locator("#notice")).to_have_text("api: reset, fleet-wide.")
    # The dashboard keeps the token in the page's memory: no storage holds it.
    assert page.evaluate("sessionStorage.length + localStorage.length") == 0

    page.goto(f"{gateway.url}/proxy/files/page.html")  # the same tab, as in the issue
    seen = page.evaluate("window.attack")
    context.close()

    assert (seen["token"], seen["stored"]) == (None, [])
    assert seen["forced"] == 404  # the proxy's listener has no admin API
    assert state_of(gateway, "api") == "closed"
    assert seen["origin"] == origin(gateway.url) != origin(gateway.admin_url)


def test_an_upstream_service_worker_never_controls_the_dashboard(
    browser: Browser, gateway: GatewayProcess, upstream: Upstream
) -> None:
    upstream.plan("/files/reg.html", Reply(body=REGISTER, headers=HTML))
    upstream.plan(
        "/files/sw.js",
        Reply(
            body=WORKER,
            headers=(("Content-Type", "text/javascript"), ("Service-Worker-Allowed", "/")),
        ),
    )
    context = browser.new_context()
    registering = context.new_page()
    registering.goto(f"{gateway.url}/proxy/files/reg.html")
    outcome = registering.evaluate("window.registration")

    later = context.new_page()  # a later tab, where the admin opens the dashboard
    later.goto(f"{gateway.admin_url}/dashboard")
    title = later.title()
    controlled = later.evaluate("navigator.serviceWorker.controller !== null")
    assert (title, controlled) == ("fleetbreaker", False)
    expect(later.locator("body")).to_have_attribute("data-stream", "open", timeout=5000)
    context.close()

    assert outcome.startswith("refused: ")
    assert upstream.hits_on("/files/sw.js") == []  # the script was never even fetched
