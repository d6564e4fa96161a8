"""The web console (`GET /console`) in a real headless Chromium, against a real gateway and worker.

Debian's `chromium` is driven through `chromium-driver` by Selenium (scripts/test.sh installs both when
missing). The page reads the gateway's JSON APIs every few seconds: the tests wait for what it shows
with `wait_until`, act through its buttons and forms, and check the outcome through the API.
"""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import httpx
import orjson
import pytest
import redis
import yaml
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException, StaleElementReferenceException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement

from runtime import keys
from runtime.functions.package import pack_folder

from .helpers import TEST_FUNCTIONS, Gateway, Role, fresh_redis_url, start_gateway, start_worker, wait_until

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SCREENSHOT_COPY = Path("/tmp/lambent-console.png")
FAST = {"async": {"lease_s": 1, "queued_check_s": 2, "throttle_delay_s": 0.2, "poll_s": 0.05},
        "streams": {"state_interval_s": 60}}         # partition state written by the test stays fresh
# A function with a schedule, a Kafka mapping and an SQS one, so that the Schedules and Streams sections have rows.
TICKER = {"handler": "handler.handler", "description": "fires hourly; reads orders",
          "events": [{"schedule": {"expression": "rate(1 hour)"}},
                     {"kafka": {"topic": "orders", "batch_size": 10}},
                     {"sqs": {"queue": "payments"}}]}
# Deployed twice by a test (versions 1 and 2), each saying which it is.
GREETER = "def handler(event, context):\n    return {{'says': '{word}', 'version': context.function_version}}\n"


# -- fixtures --------------------------------------------------------------------------------------

def functions_folder(root: Path) -> Path:
    """The test functions the console needs, and `ticker` (schedule + Kafka mapping)."""
    folder = root / "functions"
    for name in ("echo", "fail", "asyncfail", "sink"):
        shutil.copytree(TEST_FUNCTIONS / name, folder / name)
    (folder / "ticker").mkdir(parents=True)
    (folder / "ticker" / "function.yaml").write_text(yaml.safe_dump(TICKER))
    (folder / "ticker" / "handler.py").write_text("def handler(event, context):\n    return event\n")
    return folder


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, redis_base_url: str) -> Iterator[Gateway]:
    workdir = tmp_path_factory.mktemp("console")
    gw = start_gateway(workdir, fresh_redis_url(redis_base_url), functions_dir=functions_folder(workdir),
                       config=FAST)
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def worker(gateway: Gateway) -> Iterator[Role]:
    process = start_worker(gateway)
    yield process
    process.stop()


class Browser:
    """One headless Chromium; `errors()` drains its console log and returns the SEVERE entries."""

    def __init__(self, driver: webdriver.Chrome) -> None:
        self.driver = driver
        self.log: list[dict[str, Any]] = []

    def drain(self) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = self.driver.get_log("browser")
        self.log.extend(entries)
        return entries

    def errors(self) -> list[dict[str, Any]]:
        return [entry for entry in self.drain() if entry.get("level") == "SEVERE"]

    def by_id(self, element_id: str) -> WebElement:
        return self.driver.find_element(By.ID, element_id)

    def all(self, css: str) -> list[WebElement]:
        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def text(self, element_id: str) -> str:
        return str(self.by_id(element_id).text)

    def content(self, element_id: str) -> str:
        """All the text of an element, also the part scrolled out of view (textContent)."""
        return self.by_id(element_id).get_attribute("textContent") or ""

    def texts(self, css: str) -> list[str]:
        """The text of each element `css` finds, read in one script call (a poll may re-render them meanwhile)."""
        found: list[str] = self.driver.execute_script(
            "return [...document.querySelectorAll(arguments[0])].map((e) => e.textContent)", css)
        return found

    def options(self, select_id: str) -> list[tuple[str, str]]:
        """A <select>'s options as (value, text), read in one script call."""
        found = self.driver.execute_script(
            "return [...document.getElementById(arguments[0]).options].map((o) => [o.value, o.text])", select_id)
        return [(value, text) for value, text in found]

    def choose(self, select_id: str, value: str) -> None:
        """Pick `value` in a <select> as a user would (its change event fires), once the page offers it."""
        wait_until(lambda: self.driver.execute_script(
            "const choice = document.getElementById(arguments[0]);"
            "if (![...choice.options].some((o) => o.value === arguments[1])) return false;"
            "choice.value = arguments[1]; choice.dispatchEvent(new Event('change', {bubbles: true})); return true;",
            select_id, value), interval=0.1, message=f"{value!r} among the choices of #{select_id}")

    def wait_for(self, css: str, *, timeout: float = 15, message: str | None = None) -> list[WebElement]:
        return wait_until(lambda: self.all(css), timeout=timeout, interval=0.1, message=message or css)

    def click(self, css: str, *, message: str | None = None) -> None:
        """Click the element `css` finds, again if a poll re-rendered it between finding and clicking."""
        def clicked() -> bool:
            try:
                self.driver.find_element(By.CSS_SELECTOR, css).click()
                return True
            except StaleElementReferenceException:
                return False

        wait_until(clicked, interval=0.1, message=message or f"a click on {css}")

    def invoke(self, name: str, payload: str, *, qualifier: str = "", kind: str = "RequestResponse") -> None:
        """Fill the invoke form, submit it, and wait until the page has shown all of the outcome."""
        self.choose("invoke-function", name)
        self.choose("invoke-qualifier", qualifier)
        self.choose("invoke-type", kind)
        field = self.by_id("invoke-payload")
        field.clear()
        field.send_keys(payload)
        self.driver.execute_script("document.getElementById('invoke-output').dataset.done = ''")   # not the last one's
        self.by_id("invoke-button").click()
        wait_until(lambda: self.by_id("invoke-output").get_attribute("data-done") == "true", timeout=30,
                   interval=0.1, message=f"the {kind} invocation of {name} and its logs")

    def select_function(self, name: str) -> None:
        self.click(f'#functions-body tr[data-function="{name}"] button')
        wait_until(lambda: self.text("detail-name") == name and self.by_id("detail-state").text,
                   interval=0.1, message=f"{name}'s details")

    def open_console(self, url: str) -> None:
        self.driver.get(url)
        wait_until(lambda: int(self.driver.execute_script("return Number(document.body.dataset.polled || 0)")) >= 1,
                   timeout=15, interval=0.1, message="the console's first poll of the APIs")

    def screenshot(self, path: Path) -> None:
        """The whole page, beyond the window's height (Chromium's DevTools protocol)."""
        width, height = self.driver.execute_script(
            "const d = document.documentElement; return [d.scrollWidth, d.scrollHeight]")
        shot = self.driver.execute_cdp_cmd("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}})
        path.write_bytes(base64.b64decode(shot["data"]))


def chromium() -> Browser:
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    if missing:
        pytest.fail(f"{', '.join(missing)} missing: install Debian's chromium and chromium-driver "
                    "(scripts/test.sh does this as root: apt-get install chromium chromium-driver)")
    options = Options()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1440,1000",
                     "--no-first-run", "--disable-extensions", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--lang=en-US"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    return Browser(driver)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    chrome = chromium()
    yield chrome
    chrome.driver.quit()


@pytest.fixture(scope="module")
def console(browser: Browser, gateway: Gateway, worker: Role) -> Browser:
    """The console opened once for the module's tests, which go on from the state the last one left: at the
    address `lambent console` prints on the server's host, with the generated admin key in it."""
    from .test_cli import lambent

    link = lambent("console", "--url", gateway.url, env=gateway.cli_env())
    assert link.returncode == 0 and link.stdout.startswith(f"{gateway.url}/console?secret="), link.stderr
    browser.open_console(link.stdout.strip())
    assert "secret" not in browser.driver.current_url
    return browser


# -- API helpers -------------------------------------------------------------------------------------

def enqueue(gateway: Gateway, name: str, payload: Any) -> str:
    response = gateway.invoke(name, payload, headers={"X-Invocation-Type": "Event"})
    assert response.status_code == 202, response.text
    return str(response.json()["requestId"])


def status(gateway: Gateway, request_id: str) -> dict[str, Any]:
    with gateway.client() as client:
        response = client.get(f"/invocations/{request_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def dlq_total(gateway: Gateway, name: str) -> int:
    with gateway.client() as client:
        return int(client.get(f"/functions/{name}/dlq").json()["total"])


def deploy_greeter(gateway: Gateway, tmp_path: Path, word: str, **params: str) -> int:
    folder = tmp_path / word / "greeter"
    folder.mkdir(parents=True)
    (folder / "handler.py").write_text(GREETER.format(word=word))
    answer = gateway.request("PUT", "/functions/greeter/code", content=pack_folder(folder), params=params,
                             headers={"Content-Type": "application/zip"}, timeout=120)
    assert answer.status_code in (200, 201), answer.text
    return int(answer.json()["version"])


def point_alias(gateway: Gateway, alias: str, version: int) -> None:
    answer = gateway.request("PUT", f"/functions/greeter/aliases/{alias}", json={"version": version})
    assert answer.status_code in (200, 201), answer.text


def time_labels(console: Browser) -> list[dict[str, Any]]:
    """The chart's time labels as drawn: text, minute, and their boxes in the page (left to right)."""
    labels: list[dict[str, Any]] = console.driver.execute_script(
        "return [...document.querySelectorAll('#chart svg [data-testid=\"time-label\"]')].map((t) => {"
        "  const box = t.getBoundingClientRect();"
        "  return {text: t.textContent, minute: t.dataset.minute, left: box.left, right: box.right,"
        "          top: box.top, bottom: box.bottom}; })")
    return sorted(labels, key=lambda label: label["left"])


def assert_apart(labels: list[dict[str, Any]]) -> None:
    assert labels, "no time labels"
    for before, after in itertools.pairwise(labels):
        assert before["right"] <= after["left"], f"{before['text']} overlaps {after['text']}: {labels}"


def chart_totals(console: Browser) -> dict[str, float]:
    """Each series' values summed over the data points drawn in the chart (read in one script call)."""
    points = console.driver.execute_script(
        "return [...document.querySelectorAll('#chart svg[data-testid=\"stats-chart\"] [data-testid=\"chart-point\"]')]"
        ".map((p) => [p.dataset.series, Number(p.dataset.value)])")
    totals = {"invocations": 0.0, "errors": 0.0, "throttles": 0.0, "p50_ms": 0.0, "p99_ms": 0.0}
    for series, value in points:
        totals[series] += value
    return totals


# -- tests -------------------------------------------------------------------------------------------

def test_the_console_loads_without_console_errors_and_lists_the_functions(console: Browser, gateway: Gateway) -> None:
    rows = console.wait_for('#functions-body tr[data-testid="function-row"]', message="the functions table")
    names = [row.get_attribute("data-function") for row in rows]
    assert {"echo", "asyncfail", "fail", "sink", "ticker"} <= set(names), names
    assert console.text("functions-count") == f"({len(names)})"
    echo = console.by_id("functions-body").find_element(By.CSS_SELECTOR, 'tr[data-function="echo"]')
    assert "256 MB" in echo.text and "5 s" in echo.text
    ticker = console.by_id("functions-body").find_element(By.CSS_SELECTOR, 'tr[data-function="ticker"]')
    assert "kafka" in ticker.text and "schedule" in ticker.text and "fires hourly" in ticker.text
    # The invoke form offers every function; a function is selected and its details are shown.
    choices = [value for value, _ in console.options("invoke-function")]
    assert choices == names
    wait_until(lambda: console.text("detail-state") == "Active", interval=0.1, message="the selected function")
    detail = console.wait_for("#detail-body dl.facts", message="the selected function's details")[0]
    assert "ARN" in detail.text and "arn:aws:lambda:" in detail.text
    assert "[object " not in console.driver.find_element(By.TAG_NAME, "body").text    # nothing rendered as a string
    assert console.by_id("errors").get_attribute("hidden") is not None          # no API errors shown
    # The header names the isolation in force, as /healthz does.
    badge = console.wait_for('[data-testid="isolation-mode"]', message="the isolation badge")[0]
    assert badge.text.startswith("jailed")
    assert console.errors() == [], console.log


def test_invoking_echo_from_the_form_shows_the_result_the_request_id_and_the_logs(console: Browser) -> None:
    console.choose("invoke-function", "echo")
    payload = console.by_id("invoke-payload")
    payload.clear()
    payload.send_keys('{"hello": "console"}')
    console.by_id("invoke-button").click()
    wait_until(lambda: console.by_id("invoke-output").get_attribute("data-done") == "true", timeout=20,
               interval=0.1, message="the invocation and its logs")
    assert console.text("invoke-status").startswith("200") and console.text("invoke-target") == "echo"
    request_id = console.text("invoke-request-id")
    uuid.UUID(request_id)
    result = json.loads(console.content("invoke-result"))
    assert result["event"] == {"hello": "console"}
    assert result["context"]["aws_request_id"] == request_id
    logs = console.content("invoke-logs")
    assert f"START RequestId: {request_id}" in logs
    assert "echo got {'hello': 'console'}" in logs
    assert f"END RequestId: {request_id}" in logs and f"REPORT RequestId: {request_id}" in logs
    assert console.errors() == [], console.log


def test_a_payload_that_is_not_json_is_said_so_with_no_empty_logs_box(console: Browser) -> None:
    # Not JSON at all: the page does not send it.
    console.invoke("echo", '{"hello": ')
    assert console.text("invoke-status") == "not sent" and console.text("invoke-target") == "echo"
    assert "not valid JSON" in console.text("invoke-result")
    assert console.by_id("invoke-result").get_attribute("class") == "error"
    assert not console.by_id("invoke-logs-box").is_displayed() and not console.by_id("invoke-logs").is_displayed()
    assert not console.by_id("invoke-rid").is_displayed()                          # no request, no request id
    # JSON to the browser, not to the gateway (a number past a double): the gateway's 400 is shown.
    console.invoke("echo", '{"big": 1e400}')
    assert console.text("invoke-status").startswith("400")
    refusal = json.loads(console.content("invoke-result"))
    assert refusal["error"] == "InvalidRequestContent" and "not valid JSON" in refusal["message"], refusal
    assert not console.by_id("invoke-logs-box").is_displayed()
    console.wait_for('#errors-list [data-key="POST /functions/echo/invoke"]', message="the 400 among the API errors")
    refused = console.errors()                                          # Chromium logs the 400 itself
    assert refused and all("400" in entry["message"] for entry in refused), refused
    # The next invocation that works shows its logs again, and the 400 is over.
    console.invoke("echo", '{"hello": "again"}')
    assert console.text("invoke-status").startswith("200") and console.by_id("invoke-logs-box").is_displayed()
    assert "echo got {'hello': 'again'}" in console.content("invoke-logs")
    assert not console.all('#errors-list [data-key="POST /functions/echo/invoke"]')
    assert console.errors() == [], console.log


def test_an_event_invocation_answers_202_and_the_form_follows_it_until_it_succeeds(
        console: Browser, gateway: Gateway) -> None:
    tag = uuid.uuid4().hex
    try:
        console.invoke("echo", json.dumps({"queued": tag}), kind="Event")
    finally:
        console.choose("invoke-type", "RequestResponse")
    assert console.text("invoke-status").startswith("202")
    request_id = console.text("invoke-request-id")
    uuid.UUID(request_id)
    assert console.by_id("invoke-async-status").get_attribute("data-status") == "succeeded"
    assert console.text("invoke-async-status") == "succeeded" and "1 attempt" in console.text("invoke-async-detail")
    result = json.loads(console.content("invoke-result"))
    assert result["event"] == {"queued": tag} and result["context"]["aws_request_id"] == request_id
    assert status(gateway, request_id)["status"] == "succeeded"              # what the page followed
    logs = console.content("invoke-logs")
    assert f"START RequestId: {request_id}" in logs and f"echo got {{'queued': '{tag}'}}" in logs
    assert console.errors() == [], console.log


def test_the_table_shows_aliases_and_the_form_invokes_a_version_or_an_alias(
        console: Browser, gateway: Gateway, tmp_path: Path) -> None:
    assert deploy_greeter(gateway, tmp_path, "one", alias="prod") == 1
    assert deploy_greeter(gateway, tmp_path, "two") == 2
    point_alias(gateway, "next", 2)
    listed = {fn["name"]: fn for fn in gateway.request("GET", "/functions").json()["functions"]}
    assert listed["greeter"]["aliases"] == {"next": 2, "prod": 1} and listed["echo"]["aliases"] == {}
    badges_css = '#functions-body tr[data-function="greeter"] [data-testid="function-aliases"] .badge'
    wait_until(lambda: console.texts(badges_css) == ["next → 2", "prod → 1"], timeout=15, interval=0.1,
               message="greeter's aliases in the functions table")

    console.select_function("greeter")
    choices = wait_until(lambda: len(options := console.options("invoke-qualifier")) == 5 and options, interval=0.1,
                         message="greeter's versions and aliases in the form")
    assert choices == [("", "$LATEST"), ("2", "version 2"), ("1", "version 1"), ("next", "next → 2"),
                       ("prod", "prod → 1")], choices
    for qualifier, says, version in (("prod", "one", "1"), ("2", "two", "2"), ("", "two", "$LATEST")):
        console.invoke("greeter", "{}", qualifier=qualifier)
        assert console.text("invoke-status").startswith("200"), console.text("invoke-result")
        assert console.text("invoke-target") == (f"greeter:{qualifier}" if qualifier else "greeter")
        assert json.loads(console.content("invoke-result")) == {"says": says, "version": version}
        assert console.text("invoke-version") == f"executed version {version}"
        assert f"Version: {version}" in console.content("invoke-logs")

    # Rolled forward through the API, the table and the form follow on their next poll.
    point_alias(gateway, "prod", 2)
    wait_until(lambda: console.texts(badges_css) == ["next → 2", "prod → 2"], timeout=15,
               interval=0.1, message="prod → 2 in the functions table")
    wait_until(lambda: ("prod", "prod → 2") in console.options("invoke-qualifier"),
               interval=0.1, message="prod → 2 in the form")
    console.invoke("greeter", "{}", qualifier="prod")
    assert json.loads(console.content("invoke-result")) == {"says": "two", "version": "2"}
    assert console.errors() == [], console.log


def test_the_chart_draws_the_last_hour_of_an_invoked_function(console: Browser, gateway: Gateway) -> None:
    for _ in range(3):
        assert gateway.invoke("echo", {"n": 1}).status_code == 200
    assert gateway.invoke("fail", {}).status_code == 500          # an error, for the errors series
    console.select_function("echo")
    echo = wait_until(lambda: (totals := chart_totals(console))["invocations"] >= 3 and totals or None,
                      timeout=20, interval=0.2, message="echo's invocations drawn in the chart")
    # duration points too
    assert echo is not None and echo["p50_ms"] > 0 and echo["p99_ms"] > 0 and echo["errors"] == 0, echo
    assert "invocation" in console.text("stats-summary")
    texts = console.driver.execute_script(
        "return [...document.querySelectorAll('#chart svg text')].map((t) => t.textContent)")
    assert "per minute" in texts and "duration (log)" in texts and "minute (local time)" in texts
    assert any(":" in text and len(text) == 5 for text in texts), texts       # HH:MM ticks on the x axis

    # The time labels: none overlaps another, the newest minute's is the rightmost, inside the chart.
    labels = time_labels(console)
    assert_apart(labels)
    newest = console.driver.execute_script("return document.querySelector('#chart svg').dataset.newest")
    assert labels[-1]["minute"] == newest, labels
    chart = console.by_id("chart").find_element(By.CSS_SELECTOR, "svg").rect
    assert labels[-1]["right"] <= chart["x"] + chart["width"], (labels, chart)

    console.select_function("fail")
    failing = wait_until(lambda: (totals := chart_totals(console))["errors"] >= 1 and totals or None,
                         timeout=20, interval=0.2, message="fail's error drawn in the chart")
    assert failing is not None and failing["invocations"] >= 1
    assert console.errors() == [], console.log


def test_the_time_labels_are_spaced_as_they_are_drawn_whatever_their_size(console: Browser) -> None:
    # Labels five times as wide as the stylesheet's: the ten-minute ones would overlap each other and the newest.
    console.driver.execute_script(
        "const sheet = document.styleSheets[0];"       # CSSOM: the page's CSP refuses a <style> element
        "sheet.insertRule('#chart svg text.tick { font-size: 80px; }', sheet.cssRules.length)")
    try:
        console.select_function("fail")
        console.select_function("echo")
        console.wait_for('#chart svg[data-testid="stats-chart"]', message="echo's chart drawn again")
        labels = time_labels(console)
        assert_apart(labels)
        newest = console.driver.execute_script("return document.querySelector('#chart svg').dataset.newest")
        assert labels[-1]["minute"] == newest and 1 < len(labels) < 6, labels        # some were dropped
        chart = console.by_id("chart").find_element(By.CSS_SELECTOR, "svg").rect
        assert labels[-1]["right"] <= chart["x"] + chart["width"] and labels[0]["left"] >= chart["x"], (labels, chart)
    finally:
        console.driver.execute_script(
            "const sheet = document.styleSheets[0]; sheet.deleteRule(sheet.cssRules.length - 1)")
        console.select_function("fail")
        console.select_function("echo")
    assert console.errors() == [], console.log


def test_a_dead_letter_is_shown_redriven_and_purged_from_the_dlq_section(
        console: Browser, gateway: Gateway, tmp_path: Path) -> None:
    with gateway.client() as client:
        client.delete("/functions/asyncfail/dlq")
    tag = uuid.uuid4().hex
    request_id = enqueue(gateway, "asyncfail", {"tag": tag})
    wait_until(lambda: status(gateway, request_id)["status"] == "dead-lettered", timeout=20,
               message="the event to be dead-lettered")

    console.select_function("asyncfail")
    row_css = f'#dlq-body tr[data-testid="dlq-row"][data-request-id="{request_id}"]'
    row = console.wait_for(row_css, message="the dead letter in the DLQ section")[0]
    assert "RetriesExhausted" in row.text and "3" in row.text and f"always fails ({tag})" in row.text
    assert console.by_id("dlq-total").get_attribute("data-total") == "1"

    console.click(f'{row_css} [data-testid="dlq-show"]')
    shown = console.wait_for(f'#dlq-body tr.json-row[data-request-id="{request_id}"] pre', message="the JSON")
    entry = json.loads(shown[0].get_attribute("textContent") or "null")
    assert entry["requestId"] == request_id
    assert entry["record"]["requestContext"]["condition"] == "RetriesExhausted"
    assert entry["record"]["requestPayload"] == {"tag": tag}
    assert [attempt["outcome"] for attempt in entry["attempts"]] == ["error", "error", "error"]

    console.click(f'{row_css} [data-testid="dlq-redrive"]')
    wait_until(lambda: status(gateway, request_id)["trigger"] == "redrive", message="the event to be redriven")
    wait_until(lambda: f"Redriven {request_id}" in console.text("dlq-message"), interval=0.1,
               message="the page to say it was redriven")
    # It fails again (fresh attempts) and is back in the DLQ, which the page shows on its next poll.
    again = wait_until(lambda: (s := status(gateway, request_id))["status"] == "dead-lettered" and s, timeout=20,
                       message="the redriven event to fail again")
    assert again["attemptCount"] == 3 and again["trigger"] == "redrive"
    console.wait_for(row_css, message="the dead letter back in the DLQ section")
    console.wait_for('#chart [data-series="errors"]', timeout=20, message="asyncfail's errors in its chart")

    # Keep a picture of the console as it is now (outside the repository).
    console.choose("invoke-function", "echo")
    console.by_id("invoke-payload").clear()
    console.by_id("invoke-payload").send_keys('{"hello": "console"}')
    console.by_id("invoke-button").click()
    wait_until(lambda: console.by_id("invoke-output").get_attribute("data-done") == "true", timeout=20,
               interval=0.1, message="the invocation shown for the screenshot")
    console.click(f'{row_css} [data-testid="dlq-show"]')
    console.wait_for(f'#dlq-body tr.json-row[data-request-id="{request_id}"] pre', message="the JSON again")
    screenshot = tmp_path / "console.png"
    console.screenshot(screenshot)
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    shutil.copyfile(screenshot, SCREENSHOT_COPY)

    # Purge asks first: dismissed, nothing happens; accepted, the DLQ is empty.
    console.by_id("dlq-purge").click()
    alert = wait_until(lambda: _alert(console), interval=0.1, message="the confirm() before a purge")
    assert "Purge all 1 dead letter of asyncfail" in alert.text
    alert.dismiss()
    assert dlq_total(gateway, "asyncfail") == 1
    console.by_id("dlq-purge").click()
    wait_until(lambda: _alert(console), interval=0.1, message="the confirm() before a purge").accept()
    wait_until(lambda: dlq_total(gateway, "asyncfail") == 0, message="the purge")
    wait_until(lambda: console.by_id("dlq-total").get_attribute("data-total") == "0" and
               "Purged 1 dead letter" in console.text("dlq-message"), interval=0.1, message="the page to show it")
    assert console.errors() == [], console.log


def _alert(console: Browser) -> Any:
    try:
        alert = console.driver.switch_to.alert
        _ = alert.text        # raises while there is none
        return alert
    except NoAlertPresentException:
        return None


def test_schedules_and_the_lag_of_each_stream_partition(console: Browser, gateway: Gateway, tmp_path: Path) -> None:
    # No Kafka here: the partition state a `lambent streams` process writes is written directly
    # (tests/test_streams.py covers the real consumers); the console shows what the API returns.
    now_ms = int(time.time() * 1000)
    state = {f"orders-{p}": orjson.dumps({
        "topic": "orders", "partition": p, "owner": f"streams-host-{p % 2}", "committed": 100 * p,
        "highWatermark": 100 * p + lag, "lag": lag, "buffered": 0, "inFlight": False,
        "lastPoll": now_ms, "updated": now_ms - (3_600_000 if p == 2 else 0)}) for p, lag in ((0, 0), (1, 42), (2, 7))}
    client = redis.Redis.from_url(gateway.redis_url)
    client.hset(keys.stream_state("ticker", 1), mapping=state)   # type: ignore[arg-type]
    # ... and an `sqs` mapping's, as its pollers write it (tests/test_sqs.py covers the real pollers).
    client.hset(keys.sqs_state("ticker", "payments"), mapping={
        "received": 12, "deleted": 9, "failed": 3, "last_result": "PROBLEM: the function failed (error)",
        "owner:streams-host-0:77:abc": orjson.dumps({"in_flight": 2, "at": now_ms, "pollers": 2}).decode()})
    client.close()

    console.select_function("ticker")
    console.wait_for('#streams-body [data-testid="partition-row"]', message="ticker's partitions")
    mapping = console.all('#streams-body [data-testid="stream-mapping"]')
    assert len(mapping) == 1 and "orders" in mapping[0].text and "lambent-ticker-1-orders" in mapping[0].text
    assert console.all('#streams-body [data-testid="stream-lag"]')[0].text == "lag 42"    # the stale one not counted
    lags = {row.get_attribute("data-partition"): row.find_element(By.CSS_SELECTOR, '[data-testid="partition-lag"]').text
            for row in console.all('#streams-body [data-testid="partition-row"]')}
    assert lags["0"] == "0" and lags["1"] == "42" and lags["2"].startswith("7") and "stale" in lags["2"]
    queue = console.all('#streams-body [data-testid="sqs-mapping"]')
    assert len(queue) == 1 and "payments" in queue[0].text
    assert console.all('#streams-body [data-testid="sqs-in-flight"]')[0].text == "in flight 2"
    assert console.all('#streams-body [data-testid="sqs-failed"]')[0].text == "3"
    assert "PROBLEM" in console.all('#streams-body [data-testid="sqs-result"]')[0].text

    schedule = console.wait_for('#schedules-body tr.selected[data-function="ticker"]',
                                message="ticker's schedule, marked as the selected function's")[0]
    assert "rate(1 hour)" in schedule.text and "UTC" in schedule.text and "never fired" in schedule.text
    assert len(schedule.find_elements(By.CSS_SELECTOR, "td:nth-child(6) div")) == 3       # the next three fires

    console.select_function("echo")
    assert console.wait_for('#streams-body [data-testid="streams-empty"]', message="echo has no mappings")
    console.select_function("ticker")
    console.wait_for('#streams-body [data-testid="partition-row"]', message="ticker's partitions again")
    console.screenshot(tmp_path / "console-streams.png")
    shutil.copyfile(tmp_path / "console-streams.png", SCREENSHOT_COPY.with_name("lambent-console-streams.png"))
    assert console.errors() == [], console.log


# -- keys ----------------------------------------------------------------------------------------------

INVOKE_ONLY = {"auth": {"require_invoke_key": True,
                        "keys": [{"id": "app", "secret_env": "TEST_APP_SECRET", "role": "invoke"}]}}
ADMIN_KEYS = {"auth": {"require_invoke_key": False, "keys": [
    {"id": "ops", "secret_env": "TEST_OPS_SECRET", "role": "admin"},
    {"id": "app", "secret_env": "TEST_APP_SECRET", "role": "invoke"}]}}
SECRETS = {"TEST_OPS_SECRET": "ops-secret-value", "TEST_APP_SECRET": "app-secret-value"}


def test_the_console_page_opens_but_its_data_needs_the_admin_key_once_one_is_configured(
        tmp_path: Path, redis_url: str) -> None:
    gateway = start_gateway(tmp_path / "secured", redis_url, config=ADMIN_KEYS, env=SECRETS)
    try:
        for path in ("/console", "/console/static/console.js", "/console/static/console.css"):
            page = httpx.get(gateway.url + path, timeout=5)                    # no data in these
            assert page.status_code == 200 and page.headers["x-content-type-options"] == "nosniff"
        dlq = gateway.url + "/functions/echo/dlq"                               # what the page reads
        assert httpx.get(dlq, timeout=5).status_code == 401                    # no key, no data
        assert httpx.get(dlq, headers={"Authorization": "Bearer app-secret-value"}, timeout=5).status_code == 403
        assert httpx.get(dlq, headers={"Authorization": "Bearer ops-secret-value"}, timeout=5).status_code == 200
    finally:
        gateway.stop()


def test_the_page_and_its_assets_come_from_the_gateway_alone(tmp_path: Path, redis_url: str) -> None:
    gateway = start_gateway(tmp_path / "open", redis_url)
    try:
        with gateway.client() as client:
            page = client.get("/console")
            assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
            assert "script-src 'self'" in page.headers["content-security-policy"]
            for asset, kind in (("console.js", "text/javascript"), ("console.css", "text/css")):
                assert f'"/console/static/{asset}"' in page.text
                answer = client.get(f"/console/static/{asset}")
                assert answer.status_code == 200 and answer.headers["content-type"].startswith(kind)
                assert "https://" not in answer.text and "//cdn" not in answer.text
            assert "https://" not in page.text and "http://" not in page.text
            assert client.get("/console/static/router.py").status_code == 404
            assert client.get("/console/static/index.html").status_code == 404
    finally:
        gateway.stop()


def test_a_secret_from_the_url_or_the_field_is_sent_and_refusals_are_shown_in_the_page(
        browser: Browser, tmp_path: Path, redis_url: str) -> None:
    # Invoke keys only (and the generated admin key): the page loads, its reads need a key.
    gateway = start_gateway(tmp_path / "keys", redis_url, config=INVOKE_ONLY, env=SECRETS)
    try:
        browser.driver.get(f"{gateway.url}/console")
        browser.driver.execute_script("sessionStorage.clear()")
        browser.open_console(f"{gateway.url}/console")
        item = browser.wait_for('#errors-list [data-testid="error-item"][data-key="GET /functions"]',
                                message="the refusal shown in the page")[0]
        assert "GET /functions" in item.text and "401" in item.text
        assert "MissingAuthenticationTokenException" in item.text
        assert browser.all('#errors-list [data-testid="error-item"][data-key="GET /schedules"]')
        assert browser.by_id("errors").is_displayed()
        refused = browser.errors()                           # Chromium logs the 401 itself
        assert refused and all("401" in entry["message"] for entry in refused), refused

        browser.by_id("secret-input").send_keys("app-secret-value")
        browser.by_id("secret-save").click()
        browser.wait_for('#functions-body tr[data-function="echo"]', message="the functions, with the key")
        wait_until(lambda: not browser.all('#errors-list [data-key="GET /functions"]'), interval=0.1,
                   message="the error of GET /functions to go once it works")
        assert "a secret is set" in browser.text("secret-state")
        assert browser.by_id("secret-input").get_attribute("value") == ""    # not left in the field

        # ?secret= works too, and is taken out of the address bar.
        browser.by_id("secret-clear").click()
        browser.open_console(f"{gateway.url}/console?secret=app-secret-value")
        browser.wait_for('#functions-body tr[data-function="echo"]', message="the functions, key from the URL")
        assert "secret" not in browser.driver.current_url
        assert browser.driver.execute_script("return sessionStorage.getItem('lambent.console.secret')") \
            == "app-secret-value"
        browser.drain()
    finally:
        browser.driver.execute_script("sessionStorage.clear()")
        gateway.stop()
