"""The browser page in real Chromium: a fake microphone fed from a WAV, live transcript, queue banner, refusal;
the mode and hotwords it sends, and how it shows FunASR's 2pass and offline results."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (scripts/browser-deps.sh)")

# Runs before the page's own scripts: records the text messages the page sends (window.__sent), the WebSockets it
# opens (window.__sockets) and the URLs it fetches (window.__fetched), so a test sees what the page would send.
RECORDER = """
window.__sent = [];
window.__sockets = 0;
window.__fetched = [];
const NativeWebSocket = window.WebSocket;
window.WebSocket = class extends NativeWebSocket {
  constructor(...args) { super(...args); window.__sockets += 1; }
};
const nativeSend = NativeWebSocket.prototype.send;
NativeWebSocket.prototype.send = function (data) {
  if (typeof data === "string") window.__sent.push(data);
  return nativeSend.call(this, data);
};
const nativeFetch = window.fetch;
window.fetch = (url, ...rest) => { window.__fetched.push(String(url)); return nativeFetch(url, ...rest); };
"""


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


def chromium_speaking(wav: Path):
    """Chromium whose fake microphone plays ``wav`` once (a generator: a fixture yields from it)."""
    from playwright.sync_api import sync_playwright

    args = [
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={wav}%noloop",
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


@pytest.fixture
def browser(speech_wav):
    yield from chromium_speaking(speech_wav)


def recording_page(browser, stack):
    page = browser.new_page()
    page.add_init_script(RECORDER)
    page.goto(stack.http + "/")
    return page


def first_message(page) -> dict:
    page.wait_for_function("window.__sent.length > 0", timeout=10000)
    return json.loads(page.evaluate("window.__sent[0]"))


def feed(page, message: dict) -> None:
    """Hands the page's message handler one server message, as the socket would."""
    page.evaluate("m => window.__asrTest.onMessage({ data: JSON.stringify(m) })", message)


def transcript(page) -> list[tuple[str | None, str]]:
    """The finished list as (times or None, text) per item."""
    return [
        tuple(item)
        for item in page.eval_on_selector_all(
            "#finals li",
            "items => items.map(i => [i.querySelector('.times')?.textContent ?? null,"
            " i.querySelector('.text').textContent])",
        )
    ]


def test_speaking_into_the_page_shows_partials_the_queue_banner_and_a_final(browser, stack):
    page = browser.new_page()
    page.goto(stack.http + "/")  # http://127.0.0.1 is a secure context: the microphone is allowed
    page.select_option("#mode", "online")  # the only mode the server supports so far
    page.click("#start")

    page.wait_for_function("document.querySelector('#partial').textContent.length > 0", timeout=20000)
    assert page.is_disabled("#mode") and page.is_disabled("#hotwords"), "settings are fixed while a session runs"
    page.wait_for_selector("#queue:not([hidden])", timeout=10000)
    assert "Queue:" in page.text_content("#queue")
    page.click("#stop")
    page.wait_for_selector("#finals li", timeout=20000)

    assert page.text_content("#finals li").strip()
    assert page.text_content("#state") == "idle"
    assert not page.is_visible("#error")
    assert page.is_enabled("#mode") and page.is_enabled("#hotwords")


def test_a_refused_session_shows_why_in_the_banner(browser, make_stack):
    s = make_stack("pageless")  # a gateway with no worker behind it
    s.start_gateway(wait_healthy=False)
    page = browser.new_page()
    page.goto(s.http + "/")
    page.click("#start")

    page.wait_for_selector("#queue.refused", timeout=10000)
    assert "no recognition worker" in page.text_content("#queue")
    assert page.is_enabled("#start"), "the user can try again"


@pytest.mark.parametrize("mode", ["online", "2pass", "offline"])
def test_the_chosen_mode_is_sent_in_the_first_message(browser, stack, mode):
    page = recording_page(browser, stack)
    assert page.input_value("#mode") == "2pass", "FunASR's default"
    page.select_option("#mode", mode)
    page.click("#start")

    first = first_message(page)
    assert first["mode"] == mode
    assert "hotwords" not in first, "FunASR's clients omit the field when there are none"


@pytest.mark.parametrize(
    ("typed", "expected"),
    [
        ("阿里巴巴 20\n达摩院\n\n  魔搭 社区  55 \n", {"阿里巴巴": 20, "达摩院": 20, "魔搭 社区": 55}),
        ('{"阿里巴巴": 30, "FunASR": 100}', {"阿里巴巴": 30, "FunASR": 100}),
    ],
    ids=["lines", "json"],
)
def test_hotwords_are_sent_as_funasrs_json_string(browser, stack, typed, expected):
    page = recording_page(browser, stack)
    page.select_option("#mode", "online")
    page.fill("#hotwords", typed)
    page.click("#start")

    hotwords = first_message(page)["hotwords"]
    assert isinstance(hotwords, str), "FunASR sends the object as a JSON string"
    assert json.loads(hotwords) == expected


@pytest.mark.parametrize(
    ("typed", "error"),
    [
        ("阿里巴巴 0", "line 1: the weight must be a whole number from 1 to 100"),
        ("达摩院 20\n阿里巴巴 101", "line 2:"),
        ("阿里巴巴 2.5", "line 1: the weight must be a whole number"),
        ('{"阿里巴巴": "20"}', '"阿里巴巴": the weight must be a whole number'),
        ('{"阿里巴巴": 20,}', "not valid JSON"),
        ("\n".join(f"w{i}" for i in range(129)), "129 hotwords; the limit is 128"),
        ("\n".join(f"{'词' * 30}{i}" for i in range(100)), "the limit is 4096"),
    ],
    ids=["weight-0", "weight-101", "fraction", "json-string-weight", "bad-json", "too-many", "too-long"],
)
def test_invalid_hotwords_show_an_error_and_send_nothing(browser, stack, typed, error):
    page = recording_page(browser, stack)
    page.fill("#hotwords", typed)
    page.click("#start")  # the page checks before its first await, so by now it would have asked for admission

    page.wait_for_selector("#hotwords-error:not([hidden])", timeout=5000)
    assert error in page.text_content("#hotwords-error")
    assert not [url for url in page.evaluate("window.__fetched") if "/api/admission" in url]
    assert page.evaluate("[window.__sockets, window.__sent]") == [0, []]
    assert page.text_content("#state") == "idle" and page.is_enabled("#start")

    page.fill("#hotwords", "阿里巴巴 20")
    assert not page.is_visible("#hotwords-error"), "editing the field clears the error"


def test_2pass_shows_a_live_line_then_corrected_sentences_with_times(browser, stack):
    page = browser.new_page()
    page.goto(stack.http + "/")

    feed(page, {"mode": "2pass-online", "text": "今天", "is_final": False})
    feed(page, {"mode": "2pass-online", "text": "天气", "is_final": False})
    assert page.text_content("#partial") == "今天天气"
    assert transcript(page) == []

    sentence = {
        "mode": "2pass-offline",
        "text": "今天天气很好。",
        "timestamp": "[[1200,1500],[1500,1800]]",
        "stamp_sents": [{"text_seg": "今 天 天 气 很 好", "punc": "。", "start": 1200, "end": 83450, "ts_list": []}],
        "start_time": 1200,
        "end_time": 83450,
        "index": 0,
        "is_final": False,
    }
    feed(page, sentence)
    assert page.text_content("#partial") == "", "the corrected sentence replaces the live line"
    assert transcript(page) == [("[0:01.2 – 1:23.5]", "今天天气很好。")]

    # Server text is shown as text, never parsed as HTML.
    feed(page, {"mode": "2pass-online", "text": "<b>明天</b>", "is_final": False})
    assert page.text_content("#partial") == "<b>明天</b>"
    feed(page, dict(sentence, text="<b>明天</b>见。", start_time=83450, end_time=605000, index=1))
    assert page.text_content("#partial") == ""
    assert transcript(page)[1] == ("[1:23.5 – 10:05.0]", "<b>明天</b>见。")
    assert page.locator("#finals b, #partial b").count() == 0

    # Partials that no sentence replaced before the end are kept, without times.
    feed(page, {"mode": "2pass-online", "text": "尾巴", "is_final": False})
    feed(page, {"mode": "2pass", "text": "", "is_final": True, "is_end": True})
    assert page.text_content("#partial") == ""
    assert transcript(page)[2:] == [(None, "尾巴")]


def test_offline_lists_each_sentence_with_its_times(browser, stack):
    page = browser.new_page()
    page.goto(stack.http + "/")

    feed(
        page,
        {
            "mode": "offline",
            "text": "一句话。",
            "timestamp": "[[0,600],[600,2340]]",
            "stamp_sents": [],
            "start_time": 0,
            "end_time": 2340,
            "index": 0,
            "is_final": False,
        },
    )
    feed(page, {"mode": "offline", "text": "", "is_final": True, "is_end": True})
    assert transcript(page) == [("[0:00.0 – 0:02.3]", "一句话。")]
    assert page.text_content("#partial") == ""


@pytest.fixture(scope="module")
def twopass_stack(make_module_stack, tmp_path_factory):
    """A stack whose worker serves 2pass with tiny models of all four kinds (the tiny VAD endpoints on energy)."""
    from tasks import modelgen

    root = tmp_path_factory.mktemp("page-models")
    kinds = {"vad_model": "vad", "offline_model": "offline", "punc_model": "punc"}
    settings = {key: str(modelgen.generate(root / kind, "tiny", seed=0, kind=kind)) for key, kind in kinds.items()}
    stack = make_module_stack("page2pass", **settings)
    stack.start_worker("w1")
    stack.start_gateway()
    return stack


@pytest.fixture
def two_sentence_browser(tmp_path):
    """Chromium whose fake microphone speaks two sentences with a pause between them."""
    from tests.speech import speech_pcm, wav_bytes

    pcm = speech_pcm(("the first sentence of the page test", "and here is the second one"), pause=2.5, lead=1.0)
    path = tmp_path / "two.wav"
    path.write_bytes(wav_bytes(pcm))
    yield from chromium_speaking(path)


def test_speaking_in_2pass_shows_partials_then_corrected_sentences_with_times(two_sentence_browser, twopass_stack):
    page = two_sentence_browser.new_page()
    page.goto(twopass_stack.http + "/")
    assert page.input_value("#mode") == "2pass"
    page.click("#start")

    page.wait_for_function("document.querySelector('#partial').textContent.length > 0", timeout=20000)
    page.wait_for_selector("#finals li .times", timeout=30000)  # the first sentence, corrected, before the end
    assert page.text_content("#state") != "idle", "a sentence is corrected while the session is still live"
    page.wait_for_timeout(6000)  # the second sentence and the trailing silence
    page.click("#stop")
    page.wait_for_function("document.querySelector('#state').textContent === 'idle'", timeout=30000)

    timed = [(times, text) for times, text in transcript(page) if times]
    assert len(timed) >= 2, transcript(page)
    assert all(text.strip() for _, text in timed)
    assert timed[0][0].startswith("[0:0"), timed  # the first sentence starts within the first seconds
    assert not page.is_visible("#error")


def test_a_file_picked_on_the_page_is_transcribed_with_progress_and_subtitle_links(browser, twopass_stack, tmp_path):
    import urllib.request

    from tests.speech import speech_pcm, wav_bytes

    pcm = speech_pcm(("the first sentence of the file", "and here is the second one"), pause=2.5, lead=1.0)
    path = tmp_path / "recording.wav"
    path.write_bytes(wav_bytes(pcm))
    page = browser.new_page()
    page.goto(twopass_stack.http + "/")
    assert page.is_disabled("#upload")

    page.set_input_files("#file", str(path))
    page.click("#upload")

    page.wait_for_selector("#file-links:not([hidden])", timeout=60000)
    items = page.eval_on_selector_all(
        "#file-sentences li", "items => items.map(i => [i.querySelector('.times').textContent,"
        " i.querySelector('.text').textContent])",
    )  # fmt: skip
    assert len(items) >= 2 and all(text for _, text in items), items
    assert items[0][0].startswith("[0:0")
    assert page.text_content("#file-state").startswith("done")
    assert not page.is_visible("#file-error") and page.is_enabled("#upload")
    srt_url = page.get_attribute("#file-srt", "href")
    with urllib.request.urlopen(twopass_stack.http + srt_url, timeout=10) as response:
        body = response.read().decode()
    assert body.startswith("1\n") and " --> " in body
