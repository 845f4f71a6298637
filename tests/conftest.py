import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tiny_models, reference

from tiny_models import tiny_gpt2, tiny_llama  # noqa: E402


@pytest.fixture(scope="session")
def llama():
    return tiny_llama()


@pytest.fixture(scope="session")
def gpt2():
    return tiny_gpt2()
