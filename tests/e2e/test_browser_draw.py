"""The draw-a-digit page in headless Chromium against the live service.

A digit is drawn stroke by stroke with the mouse (pointer events, as a user would), the live
prediction and the ten probability bars must appear, "that's wrong, it was …" feedback must reach
the prediction log, and a screenshot is saved to artifacts/screenshots/draw.png.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from helpers.processes import wait_until as wait_for
from mnistops.settings import Settings

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, Response

pytestmark = [pytest.mark.browser, pytest.mark.slow]

Point = tuple[float, float]  # canvas coordinates on the 280x280 drawing pad
# A "7" in two strokes: the top bar, then the diagonal down to the bottom left-centre.
SEVEN: list[list[Point]] = [[(70, 60), (210, 60)], [(210, 60), (180, 130), (150, 200), (130, 240)]]
# A "1": one thick vertical stroke (unambiguous after the MNIST crop/scale/centre).
ONE: list[list[Point]] = [[(140, 40), (140, 240)]]


def draw(page: Page, strokes: Sequence[Sequence[Point]], step_px: float = 6.0) -> None:
    """Draw polylines on #canvas with mouse down / small moves / up, one stroke at a time."""
    box = page.locator("#canvas").bounding_box()
    assert box is not None, "#canvas is not visible"
    sx, sy = box["width"] / 280, box["height"] / 280  # CSS size may differ from the backing store

    def at(p: Point) -> tuple[float, float]:
        return box["x"] + p[0] * sx, box["y"] + p[1] * sy

    for stroke in strokes:
        page.mouse.move(*at(stroke[0]))
        page.mouse.down()
        for a, b in itertools.pairwise(stroke):
            n = max(1, int(max(abs(b[0] - a[0]), abs(b[1] - a[1])) / step_px))
            for i in range(1, n + 1):
                t = i / n
                page.mouse.move(*at((a[0] + t * (b[0] - a[0]), a[1] + t * (b[1] - a[1]))))
        page.mouse.up()


def is_final_predict(r: Response) -> bool:
    """The prediction the page sends when a stroke ends (client tag "web", not "web-draft")."""
    if not r.url.endswith("/v1/predict") or r.request.method != "POST":
        return False
    body = json.loads(r.request.post_data or "{}")
    return bool(body.get("client") == "web")


def draw_and_predict(page: Page, strokes: Sequence[Sequence[Point]]) -> dict[str, Any]:
    """Draw the strokes; returns the JSON of the final prediction once the page has rendered it."""
    for stroke in strokes[:-1]:
        with page.expect_response(is_final_predict, timeout=30_000):
            draw(page, [stroke])
    with page.expect_response(is_final_predict, timeout=30_000) as resp:
        draw(page, [strokes[-1]])
    response = resp.value
    assert response.ok, response.text()
    pred: dict[str, Any] = response.json()
    # the final response is the last one sent: the page shows it once every bar carries its probability
    page.wait_for_function(
        """id => {
            const bars = document.querySelectorAll('#bars .bar[data-digit]');
            return /^[0-9]$/.test(document.querySelector('#label').textContent.trim())
                && bars.length === 10 && [...bars].every(b => b.dataset.prob !== undefined)
                && !document.querySelector('#feedback button[data-digit="0"]').disabled;
        }""",
        arg=pred["prediction_id"],
        timeout=15_000,
    )
    return pred


def bar_probs(page: Page) -> dict[int, float]:
    """Digit -> probability shown by the bars."""
    out: dict[int, float] = {}
    for bar in page.locator("#bars .bar[data-digit]").all():
        out[int(bar.get_attribute("data-digit") or -1)] = float(bar.get_attribute("data-prob") or "nan")
    return out


def test_draw_digit_predict_and_feedback(
    browser: Browser,
    live_server: Callable[..., Any],  # conftest.LiveServer factory
    settings: Settings,  # clears MNISTOPS_* from the environment for the session
    tmp_path: Path,
    screenshot_path: Callable[[str], Path],
) -> None:
    live = live_server(Settings(home=tmp_path, shadow_requests=0))
    context = browser.new_context(viewport={"width": 1100, "height": 800}, device_scale_factor=1)
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on(
        "console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None
    )
    try:
        page.goto(live.url + "/", wait_until="load")
        assert page.locator("#label").inner_text().strip() == "–"
        assert page.locator("#feedback button[data-digit]").count() == 10
        assert page.locator("#feedback button[data-digit]:disabled").count() == 10  # nothing to correct yet

        # 1) a thick vertical stroke is a "1"
        pred_one = draw_and_predict(page, ONE)
        assert pred_one["label"] == 1, f"vertical stroke read as {pred_one['label']}: {pred_one}"
        assert page.locator("#label").inner_text().strip() == "1"

        # 2) clear, then a "7" drawn stroke by stroke
        page.click("#clear")
        page.wait_for_function("document.querySelector('#label').textContent.trim() === '–'")
        assert page.locator("#bars .bar[data-prob]").count() == 0
        pred = draw_and_predict(page, SEVEN)
        label = int(page.locator("#label").inner_text().strip())
        assert label == pred["label"] == 7, f"drawn 7 read as {label}: {pred}"

        probs = bar_probs(page)
        assert sorted(probs) == list(range(10))
        assert sum(probs.values()) == pytest.approx(1.0, abs=0.01)
        assert max(probs, key=lambda d: probs[d]) == label
        for d, p in enumerate(pred["probabilities"]):
            assert probs[d] == pytest.approx(p, abs=1e-4)
        assert page.locator("#bars .bar.top").get_attribute("data-digit") == str(label)
        assert re.fullmatch(r"\d+(\.\d)?%", page.locator("#confidence").inner_text().strip())
        assert page.locator("#version").inner_text().strip() == pred["model_version"] == "1"

        # 3) "that's wrong, it was a 4": the feedback reaches the prediction log
        wrong = 4
        page.click(f'#feedback button[data-digit="{wrong}"]')
        status = page.locator("#feedback-status")
        status.filter(has_text=f"it was a {wrong}").wait_for(timeout=15_000)
        assert "Recorded" in status.inner_text()
        assert page.locator(f'#feedback button[data-digit="{wrong}"]').get_attribute("aria-pressed") == "true"
        assert page.locator("#error").inner_text().strip() == ""

        store = live.state.store
        assert wait_for(lambda: store.get(pred["prediction_id"]).true_label == wrong, timeout=10)
        rec = store.get(pred["prediction_id"])
        assert (rec.label, rec.client, rec.model_version) == (7, "web", "1")
        assert store.get(pred_one["prediction_id"]).true_label is None
        # the same correction again is idempotent, through the API the page uses
        again = page.request.post(
            live.url + "/v1/feedback", data={"prediction_id": pred["prediction_id"], "true_label": wrong}
        )
        assert again.ok and again.json()["status"] == "unchanged"

        page.screenshot(path=str(screenshot_path("draw.png")), full_page=True)
        assert problems == []
    finally:
        context.close()
