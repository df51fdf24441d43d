"""FunASR's own int8 CPU path as a peer of the model-level benchmark: its ONNX export, run by ``funasr-onnx``.

FunASR deploys streaming Paraformer on CPU without torch: ``AutoModel.export(type="onnx", quantize=True)``
(``funasr/utils/export_utils.py``) writes ``model.onnx`` and ``decoder.onnx`` and their int8 twins
``*_quant.onnx`` (onnxruntime ``quantize_dynamic`` of the MatMuls, per channel), and the ``funasr-onnx`` package
runs them (``funasr_onnx.paraformer_online_bin.Paraformer``). :func:`export_quantized` exports a model folder once
into ``<folder>-onnx`` beside it; :class:`FunASROnnxRecognizer` puts that runner behind the recognizer interface,
enough for ``bench.model_throughput.run_unbatched``. Nothing of FunASR's is copied here; both are called.

    pip install -r requirements-bench.txt && pip install --no-deps funasr-onnx==0.4.3
    python -m bench.model_throughput --size tiny --batches 1,4 --funasr-onnx int8,fp32

Its texts differ from those of FunASR's torch path (the benchmark's reference) for two reasons:

* No look-back. funasr-onnx's exported encoder sees one chunk with its 5 + 5 overlap frames and its decoder keeps
  only the FSMN memory, while the reference attends to cached keys and values of earlier chunks
  (``encoder_chunk_look_back=4``, ``decoder_chunk_look_back=1``). Even the fp32 ONNX model therefore disagrees
  with the reference on many chunks; it matches torch run with both look-backs at 0.
* int8 rounding, on top of that. With random weights no training made the logits confident, so near-ties between
  tokens are common and small rounding flips them far more often than it would in a trained model.
"""

from __future__ import annotations

import contextlib
import functools
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from tasks.errors import RecognitionFailed
from tasks.options import StreamOptions
from tasks.recognizer import ChunkWork, StreamingRecognizer, StreamState, load_automodel

EXPORTED = ("model.onnx", "decoder.onnx", "model_quant.onnx", "decoder_quant.onnx")


def export_quantized(model_dir: Path, ncpu: int = 1) -> Path:
    """Export ``model_dir`` with FunASR's own ONNX export (fp32 and int8) into ``<model_dir>-onnx``; return it.

    The export runs only when that folder lacks an export or holds one of an older ``model.pt`` (the copy keeps
    the source's modification time). It takes minutes for the full-size model.
    """
    target = model_dir.with_name(model_dir.name + "-onnx")
    if _is_current(model_dir, target):
        return target
    print(f"exporting {model_dir} with FunASR's ONNX export (fp32 + int8) into {target} …", flush=True)
    t0 = time.perf_counter()
    shutil.copytree(model_dir, target, dirs_exist_ok=True)
    automodel = load_automodel(str(target), ncpu=ncpu)
    with _torchscript_onnx_exporter():
        automodel.export(type="onnx", quantize=True)
    print(f"exported in {time.perf_counter() - t0:.0f} s", flush=True)
    return target


def _is_current(model_dir: Path, target: Path) -> bool:
    if not all((target / name).exists() for name in EXPORTED):
        return False
    return (target / "model.pt").stat().st_mtime == (model_dir / "model.pt").stat().st_mtime


@contextlib.contextmanager
def _torchscript_onnx_exporter() -> Iterator[None]:
    """Make ``torch.onnx.export`` use the TorchScript exporter (``dynamo=False``) while FunASR's export runs.

    torch 2.9+ defaults to the dynamo exporter, which cannot turn FunASR's ``dynamic_axes`` for the decoder's
    ``*args`` cache inputs into ``dynamic_shapes`` (it fails on decoder.onnx). FunASR's export was written for
    the TorchScript exporter at opset 14, and its quantization excludes nodes by TorchScript's node names.
    """
    import torch

    real = torch.onnx.export
    torch.onnx.export = functools.partial(real, dynamo=False)
    try:
        yield
    finally:
        torch.onnx.export = real


class FunASROnnxRecognizer(StreamingRecognizer):
    """funasr-onnx's streaming Paraformer behind the recognizer interface: one stream at a time, one item a call.

    funasr-onnx keeps the feature front end's state inside the model object (reset by a final chunk), so streams
    cannot interleave: :meth:`open_stream` resets it, and :meth:`process` accepts only the stream opened last.
    Each stream keeps funasr-onnx's cache dict in ``StreamState.cache``, a fresh one after each final chunk as
    FunASR's clients do. Errors propagate: a benchmark should stop on them.
    """

    name = "funasr-onnx"

    def __init__(
        self, model_dir: Path, *, quantize: bool = True, ncpu: int = 1, chunk_size: Sequence[int] = (5, 10, 5)
    ) -> None:
        from funasr_onnx.paraformer_online_bin import Paraformer

        self.chunk_size = tuple(chunk_size)
        self.model = Paraformer(
            str(model_dir),
            batch_size=1,
            chunk_size=list(self.chunk_size),
            quantize=quantize,
            intra_op_num_threads=ncpu,
        )
        self.description = f"{model_dir} {'int8' if quantize else 'fp32'} on onnxruntime CPU, {ncpu} threads"
        self._current: StreamState | None = None

    def open_stream(self, options: StreamOptions) -> StreamState:
        if tuple(options.chunk_size) != self.chunk_size:
            raise ValueError(f"this model runs chunk_size {self.chunk_size}, not {tuple(options.chunk_size)}")
        self.model.frontend.cache_reset()
        self._current = super().open_stream(options)
        return self._current

    def process(self, work: Sequence[ChunkWork]) -> list[str | RecognitionFailed]:
        if len(work) != 1 or work[0].state is not self._current:
            raise ValueError("funasr-onnx runs one chunk of the stream opened last per call")
        item = work[0]
        result = self.model(item.audio, param_dict={"cache": item.state.cache, "is_final": item.is_final})
        if item.is_final:
            item.state.cache = {}
        # preds is sentence_postprocess's (sentence, words), the sentence FunASR's torch path returns as "text"
        return [result[0]["preds"][0] if result else ""]

    def close(self) -> None:
        self.model = None
