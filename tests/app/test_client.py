"""The command-line client's pure parts (app.client): arguments, the streamed multipart body, exit statuses."""

from __future__ import annotations

import io
import json
import socket
from pathlib import Path

import pytest
import requests
from requests.structures import CaseInsensitiveDict
from werkzeug.formparser import parse_form_data

from app.client import (
    DEFAULT_URL,
    EXIT_REFUSED,
    EXIT_UNAVAILABLE,
    MultipartBody,
    api_error,
    exit_code,
    file_blocks,
    main,
    parse_args,
)

PAYLOAD = bytes(range(256)) * 40 + b"\r\n--not-the-boundary--\r\n" + b"tail"  # 10 266 bytes


@pytest.fixture
def audio(tmp_path: Path) -> Path:
    path = tmp_path / "会议 录音.wav"
    path.write_bytes(PAYLOAD)
    return path


def parse_multipart(body: MultipartBody, data: bytes):
    environ = {
        "REQUEST_METHOD": "POST",
        "CONTENT_TYPE": body.content_type,
        "CONTENT_LENGTH": str(len(data)),
        "wsgi.input": io.BytesIO(data),
    }
    _stream, form, files = parse_form_data(environ)
    return form, files


def response(status: int, body: bytes, **headers: str) -> requests.Response:
    r = requests.Response()
    r.status_code, r._content, r.reason = status, body, "Reason"
    r.headers = CaseInsensitiveDict({"Content-Type": "application/json", **headers})
    return r


def test_arguments_have_defaults():
    args = parse_args(["a.wav"])
    assert (args.file, args.url, args.format, args.hotwords, args.language) == (
        Path("a.wav"),
        DEFAULT_URL,
        "text",
        "",
        "",
    )
    assert (args.token, args.output, args.poll, args.no_progress) == ("", None, 0.5, False)


def test_every_argument_is_parsed():
    args = parse_args(
        "x.mp3 --url http://h:9/asr/ --format srt --hotwords 阿里巴巴 --language zh --token T -o out.srt --poll 2"
        " --no-progress".split()
    )
    assert (args.url, args.format, args.hotwords, args.language, args.token) == (
        "http://h:9/asr",
        "srt",
        "阿里巴巴",
        "zh",
        "T",
    )
    assert (args.output, args.poll, args.no_progress) == (Path("out.srt"), 2.0, True)


@pytest.mark.parametrize(
    "argv", [[], ["a.wav", "--format", "docx"], ["a.wav", "--poll", "0"], ["a.wav", "--poll", "x"]]
)
def test_bad_arguments_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_args(argv)
    assert exc.value.code == 2 and "usage:" in capsys.readouterr().err


def test_file_blocks_are_read_in_blocks(audio):
    blocks = list(file_blocks(audio, block_size=4096))
    assert [len(b) for b in blocks] == [4096, 4096, len(PAYLOAD) - 8192]
    assert b"".join(blocks) == PAYLOAD


def test_multipart_body_streams_the_file_and_parses_back(audio):
    sent: list[int] = []
    body = MultipartBody(audio, block_size=4096, on_block=sent.append)
    blocks = list(body)
    data = b"".join(blocks)
    assert blocks[0] == body.head and blocks[-1] == body.tail and b"".join(blocks[1:-1]) == PAYLOAD
    assert all(len(b) <= 4096 for b in blocks[1:-1]) and len(blocks) == 5
    assert len(body) == len(data) and sum(sent) == len(data)
    form, files = parse_multipart(body, data)
    upload = files["file"]
    assert not form and upload.filename == "会议 录音.wav" and upload.content_type == "audio/x-wav"
    assert upload.read() == PAYLOAD


def test_multipart_framing(tmp_path):
    path = tmp_path / 'a"b.bin'
    path.write_bytes(b"x")
    body = MultipartBody(path, boundary="BOUNDARY")
    assert body.content_type == "multipart/form-data; boundary=BOUNDARY"
    assert b"".join(body) == (
        b"--BOUNDARY\r\n"
        b'Content-Disposition: form-data; name="file"; filename="a%22b.bin"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n"
        b"x\r\n--BOUNDARY--\r\n"
    )
    assert (
        parse_multipart(body, b"".join(body))[1]["file"].filename == 'a"b.bin'
    )  # werkzeug decodes it as browsers mean it
    assert MultipartBody(path).boundary != MultipartBody(path).boundary


@pytest.mark.parametrize(
    ("status", "code"),
    [(400, 2), (401, 2), (404, 2), (409, 2), (413, 2), (415, 2), (422, 2), (500, 2), (503, 3), (502, 3), (504, 3)],
)
def test_exit_codes(status, code):
    assert exit_code(status) == code


def test_an_error_answer_gives_its_message_code_and_exit_status():
    body = json.dumps({"error": {"code": "too_large", "message": "the upload is over the limit"}}).encode()
    error = api_error(response(413, body))
    assert (str(error), error.exit_code) == ("the upload is over the limit (too_large)", EXIT_REFUSED)
    busy = api_error(
        response(503, b'{"error": {"code": "busy", "message": "all workers busy"}}', **{"Retry-After": "5"})
    )
    assert (str(busy), busy.exit_code) == ("all workers busy; retry after 5 s (busy)", EXIT_UNAVAILABLE)
    proxy = api_error(response(502, b"<html>Bad Gateway</html>", **{"Content-Type": "text/html"}))
    assert (proxy.message, proxy.code, proxy.exit_code) == ("502 Reason", "http_502", EXIT_UNAVAILABLE)


def test_a_missing_file_exits_2(tmp_path, capsys):
    assert main([str(tmp_path / "missing.wav"), "--no-progress"]) == EXIT_REFUSED
    err = capsys.readouterr().err
    assert err.startswith("error: No such file or directory") and "missing.wav" in err


def test_no_service_exits_3(audio, capsys):
    with socket.socket() as s:  # a port nobody listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main([str(audio), "--url", f"http://127.0.0.1:{port}", "--no-progress"]) == EXIT_UNAVAILABLE
    assert "(connection_error)" in capsys.readouterr().err
