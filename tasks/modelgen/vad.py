"""config.yaml of the fsmn-vad kind and its sizes."""

from __future__ import annotations

from dataclasses import dataclass

from tasks.modelgen.paraformer import N_MELS, _frontend_conf

VAD_LFR_M = 5
VAD_FEATURE_DIM = N_MELS * VAD_LFR_M  # 400: fsmn-vad stacks 5 frames and keeps every one (lfr_n 1)


@dataclass(frozen=True)
class VadSize:
    """Dimensions of one FSMN VAD variant; input (400) and output (248 pdfs) are fixed by frontend and VAD logic."""

    name: str
    fsmn_layers: int
    linear_dim: int
    proj_dim: int
    affine_dim: int
    vocab: None = None  # no tokenizer


VAD_SIZES = {
    "full": VadSize("full", fsmn_layers=4, linear_dim=250, proj_dim=128, affine_dim=140),
    "tiny": VadSize("tiny", fsmn_layers=2, linear_dim=32, proj_dim=16, affine_dim=16),
}


#: The tiny VAD's ``decibel_thres``. With random weights its scores call every frame speech, so with the published
#: -100 dB it finds one segment from the first frame to the last. At -40 dB frames quieter than that count as silence
#: whatever the scores say: the embedded default (``make run``) then endpoints on energy, pauses in speech end
#: sentences, and 2pass can be tried without real weights. The full size keeps the published value.
TINY_DECIBEL_THRES = -40.0


def build_vad_config(size: VadSize) -> dict:
    """The config.yaml of fsmn-vad, scaled to ``size``; the post-processing options are the published ones (but
    the tiny size's ``decibel_thres``, see :data:`TINY_DECIBEL_THRES`)."""
    config = _vad_config(size)
    if size.name == "tiny":
        config["model_conf"]["decibel_thres"] = TINY_DECIBEL_THRES
    return config


def _vad_config(size: VadSize) -> dict:
    return {
        "model": "FsmnVADStreaming",
        "model_conf": {
            "sample_rate": 16000,
            "detect_mode": 1,
            "snr_mode": 0,
            "max_end_silence_time": 800,
            "max_start_silence_time": 3000,
            "do_start_point_detection": True,
            "do_end_point_detection": True,
            "window_size_ms": 200,
            "sil_to_speech_time_thres": 150,
            "speech_to_sil_time_thres": 150,
            "speech_2_noise_ratio": 1.0,
            "do_extend": 1,
            "lookback_time_start_point": 200,
            "lookahead_time_end_point": 100,
            "max_single_segment_time": 60000,
            "snr_thres": -100.0,
            "noise_frame_num_used_for_snr": 100,
            "decibel_thres": -100.0,
            "speech_noise_thres": 0.6,
            "fe_prior_thres": 0.0001,
            "silence_pdf_num": 1,
            "sil_pdf_ids": [0],
            "speech_noise_thresh_low": -0.1,
            "speech_noise_thresh_high": 0.3,
            "output_frame_probs": False,
            "frame_in_ms": 10,
            "frame_length_ms": 25,
        },
        "encoder": "FSMN",
        "encoder_conf": {
            "input_dim": VAD_FEATURE_DIM,
            "input_affine_dim": size.affine_dim,
            "fsmn_layers": size.fsmn_layers,
            "linear_dim": size.linear_dim,
            "proj_dim": size.proj_dim,
            "lorder": 20,
            "rorder": 0,
            "lstride": 1,
            "rstride": 0,
            "output_affine_dim": size.affine_dim,
            "output_dim": 248,
        },
        "frontend": "WavFrontendOnline",
        "frontend_conf": _frontend_conf(VAD_LFR_M, 1),
    }
