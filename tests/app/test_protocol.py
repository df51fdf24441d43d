import json

import pytest

from app.protocol import parse_config, parse_control
from tasks.errors import ProtocolError


def test_funasr_python_client_first_message_is_accepted_with_its_values():
    message = json.dumps(
        {
            "mode": "online",
            "chunk_size": [5, 10, 5],
            "chunk_interval": 10,
            "encoder_chunk_look_back": 4,
            "decoder_chunk_look_back": 0,
            "audio_fs": 16000,
            "wav_name": "demo",
            "wav_format": "pcm",
            "is_speaking": True,
            "hotwords": '{"阿里巴巴": 20}',
            "itn": False,
        }
    )
    config = parse_config(message)
    assert config.chunk_size == (5, 10, 5)
    assert config.decoder_chunk_look_back == 0 and config.encoder_chunk_look_back == 4
    assert config.hotwords == '{"阿里巴巴": 20}' and config.itn is False
    assert config.chunk_bytes == 9600 * 2


def test_chunk_size_as_comma_string_and_server_defaults_for_look_back():
    config = parse_config('{"mode": "online", "chunk_size": "8,8,4"}', encoder_look_back=2, decoder_look_back=3)
    assert config.chunk_size == (8, 8, 4)
    assert (config.encoder_chunk_look_back, config.decoder_chunk_look_back) == (2, 3)


def test_hotwords_sent_as_an_object_are_kept_as_json_text():
    config = parse_config(json.dumps({"hotwords": {"达摩院": 30}}))
    assert json.loads(config.hotwords) == {"达摩院": 30}


@pytest.mark.parametrize(
    "message, code, close",
    [
        ("[1, 2]", "bad_json", 1008),
        ('{"mode": "online", "chunk_size": [5, 10]}', "bad_config", 1008),
        ('{"chunk_size": "a,b,c"}', "bad_config", 1008),
        ('{"chunk_interval": true}', "bad_config", 1008),
        ('{"itn": "maybe"}', "bad_config", 1008),
        ('{"wav_format": "mp3"}', "unsupported_format", 1003),
        ('{"audio_fs": "fast"}', "bad_config", 1008),
        ('{"wav_name": 5}', "bad_config", 1008),
        ('{"mode": "online", "bogus": 1, "other": 2}', "unknown_field", 1008),
    ],
)
def test_invalid_first_messages_are_refused_with_a_code(message, code, close):
    with pytest.raises(ProtocolError) as info:
        parse_config(message)
    assert (info.value.code, info.value.close_code) == (code, close)


def test_unknown_fields_are_named_in_the_error():
    with pytest.raises(ProtocolError, match="bogus, other"):
        parse_config('{"other": 1, "bogus": 2}')


def test_end_of_utterance_and_browser_client_repeating_its_config():
    assert parse_control('{"is_speaking": false}') == (False, None)
    assert parse_control('{"is_speaking": false, "is_end": true}') == (False, None)
    repeated = (
        '{"chunk_size": [5,10,5], "wav_name": "h5", "is_speaking": false, "chunk_interval": 10, "mode": "online"}'
    )
    assert parse_control(repeated) == (False, None)


def test_a_second_configuration_is_a_warning_not_an_end():
    is_speaking, warning = parse_control('{"mode": "online", "chunk_size": [8, 8, 4]}')
    assert is_speaking is None and warning.code == "already_configured" and warning.close_code is None


def test_unknown_mid_stream_fields_warn_but_the_flag_is_honoured():
    is_speaking, warning = parse_control('{"is_speaking": false, "colour": "blue"}')
    assert is_speaking is False and warning.code == "unknown_field"


def test_garbage_mid_stream_raises_for_the_caller_to_report():
    with pytest.raises(ProtocolError, match="not JSON"):
        parse_control("hello")
