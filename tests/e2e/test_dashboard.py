"""The dashboard in headless Chromium (Debian's, driven by Playwright), against `ferry dev`:
draw a digit and see its label, follow a long-running model live, fall back to polling."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import API_KEY
from tests.processes import wait_for

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")

# Strokes in the pad's 280x280 pixels; the digits model reads each as its digit.
FOUR = [[(170, 230), (170, 50), (80, 170), (210, 170)]]
SEVEN = [[(80, 60), (200, 60), (130, 230)], [(110, 140), (180, 140)]]
ZERO = [[(140 + 60 * math.sin(t / 20 * 2 * math.pi), 140 - 90 * math.cos(t / 20 * 2 * math.pi)) for t in range(21)]]


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed; `make test` installs it")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # --no-sandbox: Chromium refuses its sandbox when run as root, as in CI containers.
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser, stack):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(60_000)
    problems = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    # A 503 is an answer the client handles (it polls); any other failed load is a problem.
    page.on("console", lambda message: problems.append(message.text)
            if message.type == "error" and "status of 503" not in message.text else None)
    page.goto(stack["api"] + "/")
    page.fill("#api-key", API_KEY)
    page.click("#save-key")
    page.wait_for_selector("#models button[data-model='digits']")
    yield page
    context.close()
    assert problems == []


def draw(page, strokes) -> None:
    page.click("#clear-pad")
    box = page.locator("#pad").bounding_box()
    scale = box["width"] / 280
    for stroke in strokes:
        x, y = stroke[0]
        page.mouse.move(box["x"] + x * scale, box["y"] + y * scale)
        page.mouse.down()
        for x, y in stroke[1:]:
            page.mouse.move(box["x"] + x * scale, box["y"] + y * scale, steps=6)
        page.mouse.up()


def wait_done(page) -> str:
    # Selectors, not wait_for_function: the page's Content-Security-Policy forbids eval.
    page.wait_for_selector("#status:is([data-status=succeeded], [data-status=failed], [data-status=canceled])")
    return page.text_content("#status")


SNAPSHOT = """() => ({
    status: document.getElementById('status').textContent,
    position: document.getElementById('queue-position').textContent,
    progress: document.getElementById('progress').hidden ? null : document.getElementById('progress').value,
    partial: document.getElementById('partial').hidden ? '' : document.getElementById('partial').textContent,
})"""


def watch(page, timeout_s: float = 60) -> list[dict]:
    """What the page shows, sampled until the prediction is done."""
    deadline = time.monotonic() + timeout_s
    seen = []
    while time.monotonic() < deadline:
        seen.append(page.evaluate(SNAPSHOT))
        if seen[-1]["status"] in ("succeeded", "failed", "canceled"):
            return seen
        page.wait_for_timeout(30)
    raise TimeoutError(seen[-5:])


def test_draw_digits_and_see_the_right_labels_live(page):
    page.click("#models button[data-model='digits']")
    for strokes, label in ((FOUR, "4"), (SEVEN, "7")):
        draw(page, strokes)
        page.click("#predict-pad")
        assert wait_done(page) == "succeeded", page.text_content("#output")
        assert page.text_content("#label") == label
        assert "live" in page.text_content("#transport")  # followed over server-sent events
        bars = page.locator("#bars .bar")
        assert bars.count() == 10
        assert page.get_attribute("#bars .bar.top", "data-digit") == label
        probabilities = [float(bars.nth(i).get_attribute("data-probability")) for i in range(10)]
        assert max(probabilities) == probabilities[int(label)] and abs(sum(probabilities) - 1) < 1e-3
        assert f"label {label}" in page.text_content("#recent li:first-child")


def test_polling_takes_over_when_streams_are_refused(page):
    page.route("**/predictions/*/events", lambda route: route.fulfill(
        status=503, headers={"Retry-After": "1"}, content_type="application/json",
        body=json.dumps({"code": 503, "status": "Service Unavailable", "message": "busy", "errors": {}})))
    page.click("#models button[data-model='digits']")
    draw(page, ZERO)
    page.click("#predict-pad")
    assert wait_done(page) == "succeeded"
    assert page.text_content("#label") == "0"
    assert "polling" in page.text_content("#transport")


def test_a_long_model_shows_its_queue_position_progress_and_partial_output(page, stack):
    page.click("#models button[data-model='pi']")
    page.fill("#field-rounds", "6")
    page.fill("#field-pause_s", "0.3")
    page.fill("#field-points_per_round", "20000")
    page.fill("#field-seed", "2")
    # Another pi prediction keeps the stack's one worker process busy for about 5 s, so the
    # page's prediction waits first in line.
    http, api = stack["http"], stack["api"]
    ahead = http.post(f"{api}/models/pi/predictions", timeout=10,
                      json={"input": {"rounds": 10, "pause_s": 0.5, "points_per_round": 1000, "seed": 1}})
    assert ahead.status_code == 202
    wait_for(lambda: http.get(api + ahead.headers["Location"], timeout=5).json()["status"] == "running", 120,
             "the prediction ahead")
    page.click("#submit-form")
    seen = watch(page)
    assert any(shot["status"] == "queued" and "position 1" in shot["position"] for shot in seen), seen
    assert any(shot["status"] == "running" and 0 < (shot["progress"] or 0) < 1 and "estimate" in shot["partial"]
               for shot in seen), seen
    assert seen[-1]["status"] == "succeeded"
    output = json.loads(page.text_content("#output"))
    assert output["points"] == 120000 and abs(output["estimate"] - math.pi) < 0.1
    assert page.evaluate("document.getElementById('progress').value") == 1


def test_the_js_client_retries_after_retry_after_and_parses_split_events(page):
    result = page.evaluate("""async () => {
        const { FerryClient, parseEvents } = await import('/static/ferry.js');
        const answers = [
            new Response('{}', { status: 429, headers: { 'Retry-After': '0', 'Content-Type': 'application/json' } }),
            new Response('{}', { status: 503, headers: { 'Retry-After': '0', 'Content-Type': 'application/json' } }),
            new Response('{"id": "x", "status": "queued"}', { status: 202, headers: { 'Content-Type': 'application/json' } }),
        ];
        const sent = [];
        const client = new FerryClient({ apiKey: 'k', fetchImpl: async (url, init) => {
            sent.push([url, init.headers.Authorization]); return answers.shift(); } });
        const submitted = await client.submit('digits', { pixels: [] });
        const state = {};
        const events = [...parseEvents(state, 'event: status\\ndata: {"a"'), ...parseEvents(state, ':1}\\n\\n: hb\\n\\n')];
        return { submitted, sent, events };
    }""")
    assert result["submitted"] == {"id": "x", "status": "queued"}
    assert result["sent"] == [["/models/digits/predictions", "Bearer k"]] * 3
    assert result["events"] == [{"event": "status", "data": '{"a":1}'}]


def test_the_page_keeps_to_its_own_origin(stack):
    import requests

    response = requests.get(stack["api"] + "/", timeout=10)
    assert response.status_code == 200 and "text/html" in response.headers["Content-Type"]
    assert "default-src 'self'" in response.headers["Content-Security-Policy"]
    assert "http" not in response.text.replace('href="/', "")  # nothing loaded from elsewhere
