import pytest
from distill_edu.tokenizer import load_tokenizer


@pytest.fixture(scope="session")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("distill_edu_cache")


@pytest.fixture(scope="session")
def tok(cache):
    "每个测试会话只离线构建一次（几秒）"
    return load_tokenizer(offline=True, cache_dir=cache)
