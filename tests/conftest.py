import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"  # before any TensorFlow import, as at every entry point
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

from schema.spec import load_spec  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE_DIR = os.path.join(REPO, "data", "sample")


@pytest.fixture(scope="session")
def spec():
    return load_spec()
