import pytest

from tasks.errors import ModelLoadError
from tasks.recognizer import FunASRStreamingRecognizer, load_automodel


def test_a_hub_name_without_the_hub_client_fails_with_what_to_do():
    pytest.importorskip("funasr")
    try:
        import modelscope  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("the hub client is installed here")
    with pytest.raises(ModelLoadError, match="requirements-hub.txt"):
        load_automodel("paraformer-zh-streaming")


def test_a_folder_that_is_not_a_model_fails_as_a_model_load_error(tmp_path):
    (tmp_path / "config.yaml").write_text("model: NoSuchModel\n")
    with pytest.raises(ModelLoadError, match=str(tmp_path)):
        FunASRStreamingRecognizer.load(str(tmp_path))
