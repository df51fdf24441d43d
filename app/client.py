"""Command-line client of the file transcription API: ``python -m app.client FILE`` (console script ``asr-transcribe``).

It uploads FILE to ``POST {url}/api/transcribe?async=1`` as a multipart body streamed from disk in
:data:`BLOCK_SIZE` blocks (with a known Content-Length, never read whole), polls the job every ``--poll`` seconds,
then fetches the result rendered in ``--format`` and writes it, UTF-8, to ``-o OUT`` or stdout. Upload and
recognition progress go to stderr (tqdm; off with ``--no-progress`` or when stderr is not a terminal). Ctrl-C while
the job runs cancels it (``DELETE`` on the job). Errors are printed as ``error: <message> (<code>)``.

Exit status: :data:`EXIT_OK` done; :data:`EXIT_FAILED` the job failed or was cancelled; :data:`EXIT_REFUSED` the
request was refused (a 4xx or other error answer) or the file cannot be read (argparse's own errors exit 2 too);
:data:`EXIT_UNAVAILABLE` try again later (503, 502, 504, no connection, a timeout); :data:`EXIT_INTERRUPTED` Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import mimetypes
import os
import secrets
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from urllib.parse import urljoin

import requests
from tqdm import tqdm

EXIT_OK, EXIT_FAILED, EXIT_REFUSED, EXIT_UNAVAILABLE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
FORMATS = ("json", "text", "srt", "vtt")
DEFAULT_URL = "http://127.0.0.1:8000"
BLOCK_SIZE = 256 * 1024  #: bytes read from the file at a time
UPLOAD_TIMEOUT = (10.0, 300.0)  #: s: to connect, then at most between two socket operations (the upload's answer)
POLL_TIMEOUT = (10.0, 30.0)  #: s: the same for each status, result and cancel request
UNAVAILABLE = frozenset({502, 503, 504})
FINISHED = {"done": EXIT_OK, "failed": EXIT_FAILED, "cancelled": EXIT_FAILED}


class ApiError(Exception):
    """An error answer of the service (or no answer): what to print and the exit status it maps to."""

    def __init__(self, message: str, code: str, exit_code: int) -> None:
        super().__init__(f"{message} ({code})")
        self.message, self.code, self.exit_code = message, code, exit_code


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="asr-transcribe", description="Transcribe an audio or video file.")
    parser.add_argument("file", type=Path, metavar="FILE", help="the file to transcribe")
    parser.add_argument("--url", default=DEFAULT_URL, help=f"the gateway (default {DEFAULT_URL})")
    parser.add_argument("--format", choices=FORMATS, default="text", help="output format (default text)")
    parser.add_argument("--hotwords", default="", help='words to favour, e.g. "阿里巴巴 达摩院"')
    parser.add_argument("--language", default="", help="language of the audio, e.g. zh")
    parser.add_argument(
        "--token",
        default=os.environ.get("ASR_API_TOKEN", ""),
        help="API token, sent as Authorization: Bearer TOKEN (default: $ASR_API_TOKEN, which stays out of ps)",
    )
    parser.add_argument("-o", "--output", type=Path, metavar="OUT", help="write the result here (default stdout)")
    parser.add_argument("--poll", type=_positive, default=0.5, metavar="SECONDS", help="status poll interval")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")
    args = parser.parse_args(argv)
    args.url = args.url.rstrip("/")
    return args


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0: {text}")
    return value


def file_blocks(path: Path, block_size: int = BLOCK_SIZE) -> Iterator[bytes]:
    """The file's bytes, ``block_size`` at a time, read as they are asked for."""
    with path.open("rb") as f:
        while block := f.read(block_size):
            yield block


class MultipartBody:
    """A ``multipart/form-data`` body of one file field, streamed: iterate it to get its bytes in blocks.

    Its length is known before any is read (``len()``), so requests sends a Content-Length instead of chunking.
    ``on_block`` is called with each block's size as it goes out. The filename is quoted as browsers do (HTML's
    form encoding): UTF-8 as is, with ``"``, CR and LF percent-encoded.
    """

    def __init__(
        self,
        path: Path,
        *,
        field: str = "file",
        boundary: str | None = None,
        block_size: int = BLOCK_SIZE,
        on_block: Callable[[int], None] | None = None,
    ) -> None:
        self.path, self.block_size, self.on_block = path, block_size, on_block
        self.boundary = boundary or "asr-" + secrets.token_hex(16)
        filename = path.name.replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")
        ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        self.head = (
            f"--{self.boundary}\r\n"
            f'Content-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
            f"Content-Type: {ctype}\r\n\r\n"
        ).encode()
        self.tail = f"\r\n--{self.boundary}--\r\n".encode()
        self.size = path.stat().st_size

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    def __len__(self) -> int:
        return len(self.head) + self.size + len(self.tail)

    def __iter__(self) -> Iterator[bytes]:
        yield self._sent(self.head)
        for block in file_blocks(self.path, self.block_size):
            yield self._sent(block)
        yield self._sent(self.tail)

    def _sent(self, block: bytes) -> bytes:
        if self.on_block is not None:
            self.on_block(len(block))
        return block


def exit_code(status: int) -> int:
    """The exit status of an error answer with this HTTP status."""
    return EXIT_UNAVAILABLE if status in UNAVAILABLE else EXIT_REFUSED


def api_error(response: requests.Response) -> ApiError:
    """The service's ``{"error": {"code", "message"}}``, or the HTTP status where the body is not that."""
    try:
        error = response.json()["error"]
        message, code = str(error["message"]), str(error["code"])
    except (ValueError, KeyError, TypeError):
        message, code = f"{response.status_code} {response.reason}".strip(), f"http_{response.status_code}"
    if response.status_code == 503 and response.headers.get("Retry-After"):
        message += f"; retry after {response.headers['Retry-After']} s"
    return ApiError(message, code, exit_code(response.status_code))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    session = requests.Session()
    if args.token:
        session.headers["Authorization"] = f"Bearer {args.token}"
    try:
        return _transcribe(args, session)
    except ApiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # the file, or the output
        print(f"error: {exc.strerror or exc}: {exc.filename or ''} (io_error)", file=sys.stderr)
        return EXIT_REFUSED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _transcribe(args: argparse.Namespace, session: requests.Session) -> int:
    job_url = _submit(args, session)
    try:
        status = _wait(args, session, job_url)
    except KeyboardInterrupt:
        _cancel(session, job_url)
        return EXIT_INTERRUPTED
    if status["state"] != "done":
        error = status.get("error") or {}
        message = error.get("message") or f"the job was {status['state']}"
        print(f"error: {message} ({error.get('code') or status['state']})", file=sys.stderr)
        return FINISHED[status["state"]]
    response = _request(session, "GET", job_url, params={"format": args.format}, timeout=POLL_TIMEOUT)
    if args.format == "json":
        text = json.dumps(_json(response), ensure_ascii=False, indent=2) + "\n"
    else:
        text = response.content.decode("utf-8")
    if args.output is not None:
        args.output.write_bytes(text.encode("utf-8"))
    else:
        sys.stdout.buffer.write(text.encode("utf-8"))
        sys.stdout.flush()
    return EXIT_OK


def _submit(args: argparse.Namespace, session: requests.Session) -> str:
    """Uploads the file; returns the job's status URL."""
    params = {"async": "1", "format": args.format}
    params.update({k: v for k, v in (("hotwords", args.hotwords), ("language", args.language)) if v})
    body = MultipartBody(args.file)
    bar = tqdm(total=len(body), desc="upload", unit="B", unit_scale=True, unit_divisor=1024, disable=_no_bars(args))
    with bar:
        body.on_block = bar.update
        response = _request(
            session,
            "POST",
            f"{args.url}/api/transcribe",
            params=params,
            data=body,
            headers={"Content-Type": body.content_type},
            timeout=UPLOAD_TIMEOUT,
        )
    job = _json(response)
    status_url = job.get("status_url") or response.headers.get("Location") or f"/api/transcribe/{job.get('id')}"
    return urljoin(args.url + "/", status_url)


def _wait(args: argparse.Namespace, session: requests.Session, job_url: str) -> dict:
    """Polls the job until it is done, failed or cancelled; returns its last status."""
    with tqdm(desc="queued", unit="s", disable=_no_bars(args)) as bar:
        while True:
            status = _json(_request(session, "GET", job_url, timeout=POLL_TIMEOUT))
            state = str(status.setdefault("state", ""))  # a state this client does not know is shown, not refused
            progress = status.get("progress") or {}
            total = progress.get("audio_seconds_total") or None
            bar.total = round(total, 1) if total else None
            done = float(progress.get("audio_seconds_done") or 0.0)
            bar.n = bar.total if state == "done" and bar.total else round(done, 1)
            bar.set_description(state, refresh=False)
            bar.refresh()
            if state in FINISHED:
                return status
            time.sleep(args.poll)


def _cancel(session: requests.Session, job_url: str) -> None:
    print("interrupted: cancelling the job", file=sys.stderr)
    try:
        session.delete(job_url, timeout=POLL_TIMEOUT)
    except requests.RequestException as exc:
        print(f"error: the job could not be cancelled: {exc} (cancel_failed)", file=sys.stderr)


def _request(session: requests.Session, method: str, url: str, **kwargs) -> requests.Response:
    """One request; an error answer or no answer raised as :class:`ApiError`."""
    try:
        response = session.request(method, url, **kwargs)
    except requests.Timeout as exc:
        raise ApiError(f"no answer from {url} in time: {exc}", "timeout", EXIT_UNAVAILABLE) from exc
    except requests.ConnectionError as exc:
        raise ApiError(f"cannot reach {url}: {exc}", "connection_error", EXIT_UNAVAILABLE) from exc
    if response.status_code >= 400:
        raise api_error(response)
    return response


def _json(response: requests.Response) -> dict:
    try:
        data = response.json()
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise ApiError(
            f"{response.url} answered {response.status_code} without a JSON object", "bad_response", EXIT_REFUSED
        )
    return data


def _no_bars(args: argparse.Namespace) -> bool | None:
    return True if args.no_progress else None  # None: tqdm shows bars only on a terminal


if __name__ == "__main__":
    sys.exit(main())
