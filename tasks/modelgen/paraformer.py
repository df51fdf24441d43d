"""config.yaml of the two Paraformer kinds, streaming and offline (SeACo), and their sizes."""

from __future__ import annotations

from dataclasses import dataclass

N_MELS = 80
LFR_M = 7
LFR_N = 6
FEATURE_DIM = N_MELS * LFR_M  # 560: what the Paraformer encoders see after low frame rate stacking


@dataclass(frozen=True)
class Size:
    """Dimensions of one Paraformer variant (streaming and offline)."""

    name: str
    encoder_blocks: int
    decoder_blocks: int
    d_model: int
    heads: int
    ffn: int
    vocab: int
    seaco_blocks: int = 0  # offline only: the SeACo hotword decoder
    seaco_ffn: int = 0


SIZES = {
    "full": Size(
        "full", encoder_blocks=50, decoder_blocks=16, d_model=512, heads=4, ffn=2048, vocab=8404,
        seaco_blocks=6, seaco_ffn=1024,
    ),
    "tiny": Size(
        "tiny", encoder_blocks=2, decoder_blocks=2, d_model=64, heads=4, ffn=128, vocab=256,
        seaco_blocks=2, seaco_ffn=64,
    ),
}  # fmt: skip


def _sanm_encoder_conf(size: Size, input_layer: str) -> dict:
    """The SANM encoder settings both Paraformers share (streaming adds its chunking on top)."""
    return {
        "output_size": size.d_model,
        "attention_heads": size.heads,
        "linear_units": size.ffn,
        "num_blocks": size.encoder_blocks,
        "dropout_rate": 0.1,
        "positional_dropout_rate": 0.1,
        "attention_dropout_rate": 0.1,
        "input_layer": input_layer,
        "pos_enc_class": "SinusoidalPositionEncoder",
        "normalize_before": True,
        "kernel_size": 11,
        "sanm_shfit": 0,
        "selfattention_layer_type": "sanm",
    }


def build_config(size: Size) -> dict:
    """The config.yaml of paraformer-zh-streaming, scaled to ``size``."""
    return {
        "model": "ParaformerStreaming",
        "model_conf": {
            "ctc_weight": 0.0,
            "lsm_weight": 0.1,
            "length_normalized_loss": True,
            "predictor_weight": 1.0,
            "predictor_bias": 1,
            "sampling_ratio": 0.75,
        },
        "encoder": "SANMEncoderChunkOpt",
        "encoder_conf": {
            **_sanm_encoder_conf(size, "pe_online"),
            "chunk_size": [12, 15],
            "stride": [8, 10],
            "pad_left": [0, 0],
            "encoder_att_look_back_factor": [4, 4],
            "decoder_att_look_back_factor": [1, 1],
        },
        "decoder": "ParaformerSANMDecoder",
        "decoder_conf": {
            "attention_heads": size.heads,
            "linear_units": size.ffn,
            "num_blocks": size.decoder_blocks,
            "dropout_rate": 0.1,
            "positional_dropout_rate": 0.1,
            "self_attention_dropout_rate": 0.1,
            "src_attention_dropout_rate": 0.1,
            "att_layer_num": size.decoder_blocks,
            "kernel_size": 11,
            "sanm_shfit": 5,
        },
        "predictor": "CifPredictorV2",
        "predictor_conf": {
            "idim": size.d_model,
            "threshold": 1.0,
            "l_order": 1,
            "r_order": 1,
            "tail_threshold": 0.45,
        },
        "frontend": "WavFrontendOnline",
        "frontend_conf": {
            "fs": 16000,
            "window": "hamming",
            "n_mels": N_MELS,
            "frame_length": 25,
            "frame_shift": 10,
            "lfr_m": LFR_M,
            "lfr_n": LFR_N,
            "dither": 0.0,  # inference must be deterministic; FunASR's default of 1.0 adds noise
        },
        "specaug": None,
        "normalize": None,
        "tokenizer": "CharTokenizer",
        "tokenizer_conf": {"unk_symbol": "<unk>", "split_with_space": True},
    }


def _frontend_conf(lfr_m: int, lfr_n: int) -> dict:
    return {
        "fs": 16000,
        "window": "hamming",
        "n_mels": N_MELS,
        "frame_length": 25,
        "frame_shift": 10,
        "lfr_m": lfr_m,
        "lfr_n": lfr_n,
        "dither": 0.0,  # inference must be deterministic; FunASR's default of 1.0 adds noise
    }


def build_offline_config(size: Size) -> dict:
    """The config.yaml of SeACo-Paraformer (hub ``paraformer-zh``), scaled to ``size``."""
    decoder_common = {
        "attention_heads": size.heads,
        "dropout_rate": 0.1,
        "positional_dropout_rate": 0.1,
        "self_attention_dropout_rate": 0.1,
        "src_attention_dropout_rate": 0.1,
    }
    return {
        "model": "SeacoParaformer",
        "model_conf": {
            "ctc_weight": 0.0,
            "lsm_weight": 0.1,
            "length_normalized_loss": True,
            "predictor_weight": 1.0,
            "predictor_bias": 1,
            "sampling_ratio": 0.75,
            "inner_dim": size.d_model,  # hotwords go through decoder.embed (d_model) into an LSTM of inner_dim
            "bias_encoder_type": "lstm",
            "bias_encoder_bid": False,
            "seaco_lsm_weight": 0.1,
            "seaco_length_normalized_loss": True,
            "NO_BIAS": size.vocab - 27,  # 8377 of 8404 on the hub; must index the vocabulary
            "seaco_decoder": "ParaformerSANMDecoder",
            "seaco_decoder_conf": {
                **decoder_common,
                "linear_units": size.seaco_ffn,
                "num_blocks": size.seaco_blocks,
                "att_layer_num": size.seaco_blocks,
                "kernel_size": 21,
                "sanm_shfit": 0,
                "use_output_layer": False,  # hotword_output_layer maps to the vocabulary instead
                "wo_input_layer": True,  # it attends over hotword embeddings, not token ids
            },
        },
        "encoder": "SANMEncoder",
        "encoder_conf": _sanm_encoder_conf(size, "pe"),
        "decoder": "ParaformerSANMDecoder",
        "decoder_conf": {
            **decoder_common,
            "linear_units": size.ffn,
            "num_blocks": size.decoder_blocks,
            "att_layer_num": size.decoder_blocks,
            "kernel_size": 11,
            "sanm_shfit": 0,
        },
        "predictor": "CifPredictorV3",
        "predictor_conf": {
            "idim": size.d_model,
            "threshold": 1.0,
            "l_order": 1,
            "r_order": 1,
            "tail_threshold": 0.45,
            "smooth_factor2": 0.25,
            "noise_threshold2": 0.01,
            "upsample_times": 3,  # ts_prediction_lfr6_standard assumes 3 alphas per encoder frame
            "use_cif1_cnn": False,
            "upsample_type": "cnn_blstm",
        },
        "frontend": "WavFrontend",
        "frontend_conf": _frontend_conf(LFR_M, LFR_N),
        "specaug": None,
        "normalize": None,
        "tokenizer": "CharTokenizer",
        "tokenizer_conf": {"unk_symbol": "<unk>", "split_with_space": True},
    }


def build_contextual_config(size: Size) -> dict:
    """The contextual Paraformer FunASR's Python server defaults to for its second pass
    (``speech_paraformer-large-contextual``): the offline encoder and decoder with an LSTM hotword encoder and a
    ``ContextualParaformerDecoder`` attending over it; ``CifPredictorV2``, so no timestamps."""
    config = build_offline_config(size)
    model_conf = {k: v for k, v in config["model_conf"].items() if not k.startswith(("seaco", "NO_BIAS"))}
    model_conf.pop("bias_encoder_bid", None)
    model_conf.update(inner_dim=size.d_model, bias_encoder_type="lstm", use_decoder_embedding=False)
    config.update(
        model="ContextualParaformer",
        model_conf=model_conf,
        decoder="ContextualParaformerDecoder",
        predictor="CifPredictorV2",
        predictor_conf={"idim": size.d_model, "threshold": 1.0, "l_order": 1, "r_order": 1, "tail_threshold": 0.45},
    )
    return config
