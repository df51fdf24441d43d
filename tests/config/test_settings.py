import pytest

from config.settings import Settings, describe


def test_defaults_and_prefixed_environment_overrides():
    settings = Settings.from_env(
        {
            "ASR_MAX_PENDING": "12",
            "ASR_BATCHING": "off",
            "ASR_DEVICE": "cuda:1",
            "ASR_BATCH_MAX_WAIT_MS": "2.5",
            "UNRELATED": "x",
        }
    )
    assert settings.max_pending == 12 and settings.batching is False and settings.device == "cuda:1"
    assert settings.batch_max_wait_ms == 2.5
    assert settings.broker == settings.redis_url, "the broker defaults to the Redis used for results"
    assert Settings.from_env({}).max_pending == 5000


def test_the_embedded_model_is_used_only_when_none_is_configured():
    assert Settings.from_env({}).model_is_default
    configured = Settings.from_env({"ASR_MODEL": "/models/paraformer"})
    assert not configured.model_is_default and configured.model_path == "/models/paraformer"


def test_a_malformed_value_names_the_variable():
    with pytest.raises(ValueError, match="ASR_MAX_PENDING"):
        Settings.from_env({"ASR_MAX_PENDING": "lots"})


def test_every_setting_is_documented_with_its_variable():
    rows = describe()
    assert all(name.startswith("ASR_") and doc for name, _, _, doc in rows)
    assert len(rows) == len({name for name, *_ in rows})
