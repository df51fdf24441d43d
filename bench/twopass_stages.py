"""What one 2pass stream costs, stage by stage: the four models timed alone in one process, same clip as
bench.twopass (full-size by default).

    python -m bench.twopass_stages [--size tiny] [--threads 2]

Prints the streaming model's time per round at B = 1, 2, 4 (600 ms chunks), the VAD's per chunk, and the offline
model plus punctuation per sentence the VAD finds, each as a share of real time.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from bench.audio import speech
from bench.twopass import SENTENCES, ensure_models


def main(argv: list[str] | None = None) -> None:
    from tasks.batched import BatchedParaformerRecognizer
    from tasks.offline import SentencePipeline, SentenceWork
    from tasks.options import StreamOptions
    from tasks.recognizer import ChunkWork
    from tasks.vad import VadWork, load_vad

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=("tiny", "full"), default="full")
    parser.add_argument("--threads", type=int, default=2)
    for name in ("online", "offline", "punc", "vad"):
        parser.add_argument(f"--{name}")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    models = ensure_models(args)
    pcm = speech(SENTENCES, pause=2.5)
    audio = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768
    step = 9600
    recognizer = BatchedParaformerRecognizer.load(models["online"], device="cpu", ncpu=args.threads)
    recognizer.warm_up((1, 2, 4))
    for batch in (1, 2, 4):
        states = [recognizer.open_stream(StreamOptions()) for _ in range(batch)]
        times = []
        for i in range(0, step * 20, step):
            t0 = time.perf_counter()
            recognizer.process([ChunkWork(s, audio[i : i + step], False) for s in states])
            times.append(time.perf_counter() - t0)
        per_round = float(np.median(times[3:]))
        share = per_round / batch / 0.6
        print(f"streaming B={batch}: {per_round * 1000:.0f} ms a round, {share:.0%} of real time per stream")
    vad = load_vad(models["vad"])
    state, times, events = vad.open_stream(), [], []
    for i in range(0, len(audio), step):
        t0 = time.perf_counter()
        found = vad.process([VadWork(state, audio[i : i + step], i + step >= len(audio))])[0]
        times.append(time.perf_counter() - t0)
        events += found if isinstance(found, list) else []
    print(f"vad: {np.median(times) * 1000:.1f} ms a chunk, {np.median(times) / 0.6:.1%} of real time")
    pipeline = SentencePipeline(models["offline"], models["punc"], ncpu=args.threads)
    start, spent, speech_ms = None, 0.0, 0
    for beg, end in events:
        start = beg if beg >= 0 else start
        if end >= 0 and start is not None:
            t0 = time.perf_counter()
            pipeline.process([SentenceWork(audio[start * 16 : end * 16])])
            spent += time.perf_counter() - t0
            speech_ms += end - start
            print(f"sentence of {(end - start) / 1000:.1f} s: {(time.perf_counter() - t0) * 1000:.0f} ms")
    clip = len(audio) / 16000
    print(f"offline + punctuation: {spent:.2f} s for a {clip:.0f} s clip, {spent / clip:.0%} of real time per stream")


if __name__ == "__main__":
    main()
