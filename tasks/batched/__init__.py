"""Cross-stream batched streaming Paraformer: many streams' chunks per forward pass, FunASR's texts.

Start at :mod:`tasks.batched.recognizer`; :mod:`tasks.batched.paraformer` explains the step pipeline and points to
one module per component (frontend, encoder, predictor, decoder), each of which explains how it batches and why
the result equals FunASR's per-stream computation. :mod:`tasks.batched.rowexact` explains exact GEMM routing.
"""

from tasks.batched.recognizer import BatchedParaformerRecognizer

__all__ = ["BatchedParaformerRecognizer"]
