"""The web chat page at `/`, in headless Chromium (Debian's `chromium`, driven by Playwright):
pick an image, ask, watch the answer stream in, ask a follow-up; a screenshot is kept as a test
artifact (test-artifacts/, or $MINICPMV_TEST_ARTIFACTS)."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
playwright_api = pytest.importorskip("playwright.sync_api")

from conftest import TINY  # noqa: E402
from live_server import EXAMPLE, running  # noqa: E402
from PIL import Image  # noqa: E402

import minicpmv  # noqa: E402
from minicpmv.serving import ServerSettings  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(os.environ.get("MINICPMV_TEST_ARTIFACTS") or Path(__file__).resolve().parents[1] / "test-artifacts")

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it)")

COUNT_UPDATES = """() => {
  window.textUpdates = 0;
  new MutationObserver(() => { window.textUpdates += 1; })
    .observe(document.getElementById("log"), {subtree: true, characterData: true, childList: true});
}"""


@pytest.fixture(scope="module")
def chat():
    return minicpmv.load(TINY["2.6"] / "checkpoint")


class PacedStream:
    """A TextStream whose pieces come at most every 20 ms: a tiny model on a fast machine can
    finish within one animation frame, and the browser then shows the answer in one update."""

    def __init__(self, stream):
        self._stream = stream

    def __getattr__(self, name):
        return getattr(self._stream, name)

    def __iter__(self):
        for piece in self._stream:
            time.sleep(0.02)
            yield piece


class PacedChat:
    def __init__(self, chat):
        self._chat = chat

    def __getattr__(self, name):
        return getattr(self._chat, name)

    def stream(self, *args, **kwargs):
        return PacedStream(self._chat.stream(*args, **kwargs))


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


def answer_texts(page) -> list[str]:
    """The answers as generated (the page shows them rendered as markdown)."""
    return page.eval_on_selector_all(".assistant", "nodes => nodes.map(n => n.dataset.raw)")


def test_upload_ask_stream_and_follow_up(chat, browser):
    first = [Image.open(EXAMPLE), "What is in the image?"]
    expected = chat.generate([{"role": "user", "content": first}], max_new_tokens=40)
    follow_up = chat.generate(
        [
            {"role": "user", "content": first},
            {"role": "assistant", "content": expected.text},
            {"role": "user", "content": "And the colours?"},
        ],
        max_new_tokens=40,
    )
    with running(PacedChat(chat), ServerSettings(model_name="tiny-2.6")) as url:
        page = browser.new_page(viewport={"width": 900, "height": 700})
        bodies = []
        page.on("request", lambda r: bodies.append(json.loads(r.post_data)) if r.method == "POST" else None)
        page.goto(url + "/")
        page.wait_for_function("document.getElementById('model').textContent === 'tiny-2.6'")
        page.evaluate(COUNT_UPDATES)
        page.set_input_files("#image", str(EXAMPLE))
        page.wait_for_selector("#preview img")
        page.fill("#max-tokens", "40")
        page.fill("#question", "What is in the image?")
        page.click("#send")
        page.wait_for_selector(".assistant .timing", timeout=60_000)
        assert answer_texts(page) == [expected.text]
        assert page.evaluate("window.textUpdates") > 3  # the answer arrived in pieces
        assert "decode" in page.inner_text(".assistant .timing")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "web-chat.png"), full_page=True)

        page.fill("#question", "And the colours?")
        page.press("#question", "Enter")
        page.wait_for_function("document.querySelectorAll('.assistant .timing').length === 2", timeout=60_000)
        assert answer_texts(page) == [expected.text, follow_up.text]
        history = bodies[-1]["messages"]
        assert [m["role"] for m in history] == ["user", "assistant", "user"]
        assert history[0]["content"][0]["image_url"]["url"].startswith("data:image/png;base64,")
        assert bodies[-1]["stream"] is True
        assert page.locator(".error").count() == 0
        page.close()


def test_errors_are_shown_on_the_page(chat, browser):
    with running(chat, ServerSettings(api_key="s3cret")) as url:
        page = browser.new_page()
        page.goto(url + "/")
        page.fill("#question", "hi")
        page.click("#send")
        page.wait_for_selector(".assistant.error")
        assert "API key" in page.inner_text(".assistant.error")
        page.fill("#api-key", "s3cret")
        page.dispatch_event("#api-key", "change")
        page.fill("#question", "hi")
        page.click("#send")
        page.wait_for_selector(".assistant .timing", timeout=60_000)
        assert page.locator(".assistant.error").count() == 1  # the first failed turn only
        page.close()


class SlowChat(PacedChat):
    """Pieces every 150 ms: time to press Enter again, or Stop, while an answer streams."""

    def stream(self, *args, **kwargs):
        stream = self._chat.stream(*args, **kwargs)

        class Slow(PacedStream):
            def __iter__(self):
                for piece in self._stream:
                    time.sleep(0.15)
                    yield piece

        return Slow(stream)


def test_enter_during_streaming_and_stop(chat, browser):
    """Enter while an answer streams sends nothing (the old page sent a second request and the
    history became user, user, assistant, assistant); Stop ends the answer, keeps what came, and
    the next question's history alternates user / assistant."""
    with running(SlowChat(chat), ServerSettings(model_name="tiny-2.6")) as url:
        page = browser.new_page()
        posts = []
        page.on("request", lambda r: posts.append(json.loads(r.post_data)) if r.method == "POST" else None)
        page.goto(url + "/")
        page.fill("#max-tokens", "60")
        page.fill("#question", "Tell me a story.")
        page.press("#question", "Enter")
        page.wait_for_function(
            "document.querySelector('.assistant') && document.querySelector('.assistant').dataset.raw.length > 0"
        )
        page.fill("#question", "Again?")
        page.press("#question", "Enter")  # ignored: an answer is streaming
        assert page.is_visible("#stop")
        page.click("#stop")
        page.wait_for_selector(".assistant .timing")
        assert page.inner_text(".assistant .timing") == "stopped" and not page.is_visible("#stop")
        stopped = answer_texts(page)[0]
        assert stopped and len(posts) == 1
        page.fill("#question", "And now?")
        page.press("#question", "Enter")
        page.wait_for_function("document.querySelectorAll('.assistant .timing').length === 2", timeout=60_000)
        history = posts[-1]["messages"]
        assert [m["role"] for m in history] == ["user", "assistant", "user"]
        assert history[1]["content"] == stopped and history[2]["content"][-1]["text"] == "And now?"
        page.close()


def test_answers_render_markdown_safely(browser, chat):
    """Markdown (code, bold, lists) is rendered from escaped text: markup in an answer stays text."""
    with running(chat, ServerSettings(model_name="tiny-2.6")) as url:
        page = browser.new_page()
        page.goto(url + "/")
        html = page.evaluate("renderMarkdown('**bold** and `code`\\n- one\\n- two\\n<img src=x onerror=alert(1)>')")
        assert "<strong>bold</strong>" in html and "<code>code</code>" in html and "<li>one</li>" in html
        assert "<img" not in html and "&lt;img" in html
        page.close()
