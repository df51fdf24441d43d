"""Run FunASR's own Python WebSocket server, from a clone of FunASR, on local model folders: the benchmarks' peer.

FunASR's ``runtime/python/websocket/funasr_wss_server.py`` loads its models by hub name (some hard-coded: the
offline ``paraformer-zh`` and a CAM++ speaker model), and no hub is reachable here. This wrapper runs that file
unchanged (``runpy``) with ``funasr.AutoModel`` wrapped so that each name it asks for maps to the folder given
on our command line — the same folders this service is benchmarked with. The speaker model has no folder: its
stand-in raises, which the server catches per sentence ("声纹识别失败") and goes on, so the peer does *less* work
than it would with a real CAM++ model. Nothing of FunASR's is copied here.

    python -m bench.funasr_peer --clone ~/FunASR --port 10095 --online models/full --offline models/offline-full \\
        --vad "$(python -c 'import tests.speech as s; print(s.real_vad_dir())')" --punc models/punc-full
"""

from __future__ import annotations

import argparse
import runpy
import sys
from pathlib import Path

SERVER = Path("runtime") / "python" / "websocket" / "funasr_wss_server.py"


class _NoSpeakerModel:
    """Stands in for the hard-coded CAM++ speaker model: the server catches this per sentence."""

    def generate(self, *args, **kwargs):
        raise RuntimeError("no speaker model in this benchmark")


def install(mapping: dict[str, str]) -> None:
    """Wrap funasr.AutoModel so hub names resolve to local folders (by substring, first match)."""
    import funasr

    real = funasr.AutoModel

    def auto_model(*args, **kwargs):
        name = str(kwargs.get("model") or (args[0] if args else ""))
        if "campplus" in name:
            return _NoSpeakerModel()
        for key, folder in mapping.items():
            if key in name:
                kwargs["model"] = folder
                break
        kwargs.pop("model_revision", None)
        kwargs["disable_update"] = True
        return real(*args[1:], **kwargs) if args else real(**kwargs)

    funasr.AutoModel = auto_model  # type: ignore[misc]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clone", required=True, help="a clone of github.com/modelscope/FunASR")
    parser.add_argument("--port", type=int, default=10095)
    parser.add_argument("--online", required=True, help="streaming model folder")
    parser.add_argument("--offline", required=True, help="offline model folder (2pass second pass)")
    parser.add_argument("--vad", required=True, help="fsmn-vad folder")
    parser.add_argument("--punc", required=True, help="punctuation model folder")
    parser.add_argument("--ncpu", type=int, default=2)
    args = parser.parse_args(argv)
    server = Path(args.clone).expanduser() / SERVER
    if not server.exists():
        raise SystemExit(f"{server} not found: --clone must be a FunASR checkout")
    install(
        {
            "online": args.online,  # the streaming model's hub name ends in -online
            "paraformer-zh": args.offline,
            "paraformer-large": args.offline,
            "punc": args.punc,  # before "vad": the punctuation model's name contains "vad_realtime"
            "fsmn": args.vad,
        }
    )
    sys.argv = [
        str(server),
        "--host",
        "127.0.0.1",
        "--port",
        str(args.port),
        "--asr_model_online",
        "iic/speech_paraformer-large_asr_nat-zh-cn-16k-common-vocab8404-online",
        "--device",
        "cpu",
        "--ngpu",
        "0",
        "--ncpu",
        str(args.ncpu),
        "--certfile",
        "",
    ]
    runpy.run_path(str(server), run_name="__main__")


if __name__ == "__main__":
    main()
