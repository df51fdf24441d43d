"""config.yaml of the CT-Transformer punctuation kind (the realtime variant FunASR's servers use) and its sizes."""

from __future__ import annotations

from dataclasses import dataclass

PUNC_LIST = ["<unk>", "_", "，", "。", "？", "、"]  # "_" is "no punctuation"; index 3 ends a sentence


@dataclass(frozen=True)
class PuncSize:
    """Dimensions of one CT-Transformer punctuation variant."""

    name: str
    blocks: int
    d_model: int
    heads: int
    ffn: int
    vocab: int


PUNC_SIZES = {
    "full": PuncSize("full", blocks=4, d_model=256, heads=8, ffn=1024, vocab=272727),
    "tiny": PuncSize("tiny", blocks=2, d_model=64, heads=4, ffn=128, vocab=256),
}


def build_punc_config(size: PuncSize) -> dict:
    """The config.yaml of the realtime CT-Transformer punctuation model, scaled to ``size``."""
    return {
        "model": "CTTransformerStreaming",
        "model_conf": {
            "ignore_id": 0,
            "embed_unit": size.d_model,
            "att_unit": size.d_model,
            "dropout_rate": 0.1,
            "punc_list": PUNC_LIST,
            "punc_weight": [1.0] * len(PUNC_LIST),
            "sentence_end_id": 3,
        },
        "encoder": "SANMVadEncoder",
        "encoder_conf": {
            "input_size": size.d_model,
            "output_size": size.d_model,
            "attention_heads": size.heads,
            "linear_units": size.ffn,
            "num_blocks": size.blocks,
            "dropout_rate": 0.1,
            "positional_dropout_rate": 0.1,
            "attention_dropout_rate": 0.0,
            "input_layer": "pe",
            "pos_enc_class": "SinusoidalPositionEncoder",
            "normalize_before": True,
            "kernel_size": 11,
            "sanm_shfit": 0,
            "selfattention_layer_type": "sanm",
            "padding_idx": 0,
        },
        "tokenizer": "CharTokenizer",
        "tokenizer_conf": {"unk_symbol": "<unk>"},
    }
