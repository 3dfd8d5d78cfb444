"""The web playground in real headless Chromium against the live server: attach an image, ask, see the
streamed answer and the grounding box drawn on the canvas."""
import os

import pytest

from tests.apps.serve import helpers

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian's chromium at /usr/bin/chromium")


def test_playground_streams_answer_and_draws_box(box_server, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    image = tmp_path / "scene.png"
    image.write_bytes(helpers.image_png((200, 40, 40), size=(200, 160), seed=4))
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 800})
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(box_server.url + "/")
            page.wait_for_function("document.getElementById('model-name').textContent === 'box'", timeout=20000)
            page.set_input_files("#file", str(image))
            page.wait_for_selector("#stage:not([hidden])", timeout=20000)
            # count the answer's text writes while it streams (mutation records, not observer callbacks: a fast
            # server's SSE events can arrive in one network chunk, whose writes share a single callback)
            page.evaluate("""() => { window.updates = 0; new MutationObserver((records) => window.updates += records.length)
                .observe(document.getElementById('log'), {subtree: true, childList: true, characterData: true}); }""")
            page.fill("#prompt", helpers.BOX_QUESTION)
            page.click("#send")
            page.wait_for_selector(".msg.assistant[data-done='1']", timeout=60000)
            assert page.inner_text(".msg.assistant .text") == helpers.BOX_ANSWER
            assert page.evaluate("window.updates") > 5  # many pieces, not one final write
            assert page.get_attribute("#overlay", "data-boxes") == "1"
            # the box's left edge (x = 120/1000 of the width) has painted pixels; the image centre does not
            painted = page.evaluate("""() => {
                const c = document.getElementById('overlay'), ctx = c.getContext('2d');
                const alpha = (x, y) => ctx.getImageData(Math.round(x), Math.round(y), 1, 1).data[3];
                const w = c.width, h = c.height;
                return {edge: alpha(0.120 * w, 0.5 * h), inside: alpha(0.21 * w, 0.5 * h), w, h}; }""")
            assert painted["w"] > 50 and painted["h"] > 40
            assert painted["edge"] > 0 and painted["inside"] == 0
            assert page.is_hidden("#gen-panel")  # this model cannot generate images
            assert not errors
        finally:
            browser.close()
