"""The browser page in real Chromium: a fake microphone fed from a WAV, live transcript, queue banner, refusal."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (scripts/browser-deps.sh)")


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory) -> Path:
    """Real synthetic speech: espeak-ng, padded with 0.5 s of silence (the first ms play before capture starts)."""
    if not (shutil.which("espeak-ng") and shutil.which("sox")):
        pytest.skip("needs espeak-ng and sox")
    folder = tmp_path_factory.mktemp("wav")
    raw, padded = folder / "raw.wav", folder / "speech.wav"
    subprocess.run(
        ["espeak-ng", "-w", str(raw), "testing the live transcription page with a fake microphone"], check=True
    )
    subprocess.run(["sox", str(raw), "-r", "16000", "-c", "1", str(padded), "pad", "0.5", "0.5"], check=True)
    return padded


@pytest.fixture
def browser(speech_wav):
    from playwright.sync_api import sync_playwright

    args = [
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={speech_wav}%noloop",
        "--autoplay-policy=no-user-gesture-required",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ]
    with sync_playwright() as p:
        instance = p.chromium.launch(executable_path=CHROMIUM, args=args)
        try:
            yield instance
        finally:
            instance.close()


def test_speaking_into_the_page_shows_partials_the_queue_banner_and_a_final(browser, stack):
    page = browser.new_page()
    page.goto(stack.http + "/")  # http://127.0.0.1 is a secure context: the microphone is allowed
    page.click("#start")

    page.wait_for_function("document.querySelector('#partial').textContent.length > 0", timeout=20000)
    page.wait_for_selector("#queue:not([hidden])", timeout=10000)
    assert "Queue:" in page.text_content("#queue")
    page.click("#stop")
    page.wait_for_selector("#finals li", timeout=20000)

    assert page.text_content("#finals li").strip()
    assert page.text_content("#state") == "idle"
    assert not page.is_visible("#error")


def test_a_refused_session_shows_why_in_the_banner(browser, make_stack):
    s = make_stack("pageless")  # a gateway with no worker behind it
    s.start_gateway(wait_healthy=False)
    page = browser.new_page()
    page.goto(s.http + "/")
    page.click("#start")

    page.wait_for_selector("#queue.refused", timeout=10000)
    assert "no recognition worker" in page.text_content("#queue")
    assert page.is_enabled("#start"), "the user can try again"
