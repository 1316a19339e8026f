import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
SAMPLE = ROOT / "secondthought" / "data" / "sample.jsonl"

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Ray 2.60 turns token authentication on when ~/.ray/auth_token exists: the tests' own Rays say what they want
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def shared_file(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.is_file():
        pytest.skip(f"real dataset not found at {path} (expected ../shared/data beside the checkout)")
    return path


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray on loopback for the whole test session (a new one: "local" never joins another Ray on the
    machine), shut down at the end with every process it started."""
    import ray

    from secondthought.runtime import shutdown

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    shutdown(started_here=True)


@pytest.fixture(scope="session")
def tokenizer():
    from secondthought.models.lm import load_tokenizer

    return load_tokenizer("smollm2")


@pytest.fixture(scope="session")
def memorized(tokenizer, tmp_path_factory):
    """A tiny model folder that writes the first sample triple's chain and target (tests/memorized.py)."""
    from tests.memorized import memorized_model

    return memorized_model(tokenizer, tmp_path_factory.mktemp("memorized") / "model")


@pytest.fixture(scope="session")
def memorized_words(tokenizer, tmp_path_factory):
    """The same, with its chains written in words (--prepare.edit_format words)."""
    from tests.memorized import memorized_model

    return memorized_model(tokenizer, tmp_path_factory.mktemp("memorized-words") / "model", edit_format="words")


@pytest.fixture(scope="session")
def memorized_direct(tokenizer, tmp_path_factory):
    """The words model that also writes its target straight after the prompt (--sft.direct_targets)."""
    from tests.memorized import memorized_model

    return memorized_model(tokenizer, tmp_path_factory.mktemp("memorized-direct") / "model", edit_format="words",
                           direct="target")


@pytest.fixture(scope="session")
def memorized_copying(tokenizer, tmp_path_factory):
    """A words model whose first choice is to write its text back unchanged straight after the prompt."""
    from tests.memorized import memorized_model

    return memorized_model(tokenizer, tmp_path_factory.mktemp("memorized-copying") / "model", edit_format="words",
                           direct="source", direct_copies=4)


@pytest.fixture(scope="module")
def server(ray_local, memorized):
    """The shipped Serve application on the memorized model, on a free loopback port: (url, its config)."""
    from ray import serve

    from serve.deploy import deploy
    from tests.serving import config_for, free_port

    raw = config_for(memorized, free_port())
    url = deploy(raw)
    yield url, raw
    serve.shutdown()
