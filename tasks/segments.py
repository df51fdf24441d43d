"""Where sentences begin and end: VAD events of one utterance in, sentence boundaries (ms) out. No I/O.

One rule for every path that cuts sentences, so they agree: a live 2pass/offline session (the gateway's
``app.sentences.SentenceTracker`` cuts the audio it holds at these boundaries) and a file job (the worker cuts the
uploaded audio, ``tasks.filework``). Events are the streaming VAD's (``tasks.vad``): ``(beg, -1)`` speech began,
``(-1, end)`` it ended, ``(beg, end)`` both, in ms from the utterance's first sample.

* A segment runs from its start event to its end event.
* A segment the VAD keeps open past :data:`~tasks.wire.MAX_SENTENCE_SECONDS` is cut there and continues as the
  next sentence (fsmn-vad's own ``max_single_segment_time`` is the same 60 s).
* A segment still open when the utterance ends is closed at the utterance's end (an empty final chunk gives
  FunASR's VAD no flush, so the VAD alone would leave it open).
"""

from __future__ import annotations

from collections.abc import Iterable

from tasks.wire import MAX_SENTENCE_SECONDS

MAX_SENTENCE_MS = MAX_SENTENCE_SECONDS * 1000

#: Sentence-ending and clause marks of the punctuation models (``punc_list`` of the ct-punc configs) and their
#: ASCII forms: each closes a clause (``stamp_sents`` in tasks.offline, subtitle cues and words in app.formats).
PUNCTUATION = frozenset("，。？、！；：,.?!;:")


class Segmenter:
    """Sentence boundaries of one utterance, chunk by chunk (see the module docstring)."""

    def __init__(self) -> None:
        #: Start (ms) of the segment being spoken; None while nobody speaks.
        self.open_ms: int | None = None

    def on_chunk(
        self, events: Iterable[tuple[int, int] | list[int]], position_ms: int, final: bool
    ) -> list[tuple[int, int]]:
        """The sentences a chunk's events finish, as (start_ms, end_ms) with end > start, in order.

        ``position_ms`` is the utterance's length after the chunk; ``final`` says the chunk ended the utterance
        (the segmenter is then ready for the next one, counting from 0 again).
        """
        cuts: list[tuple[int, int]] = []
        for beg, end in events:
            if beg >= 0:
                self.open_ms = beg
            if end >= 0:
                start = self.open_ms if self.open_ms is not None else max(beg, 0)
                cuts.append((start, end))
                self.open_ms = None
        while self.open_ms is not None and position_ms - self.open_ms > MAX_SENTENCE_MS:  # the VAD never ended it
            cuts.append((self.open_ms, self.open_ms + MAX_SENTENCE_MS))
            self.open_ms += MAX_SENTENCE_MS
        if final:
            if self.open_ms is not None:
                cuts.append((self.open_ms, position_ms))
            self.open_ms = None
        return [(start, end) for start, end in cuts if end > start]
