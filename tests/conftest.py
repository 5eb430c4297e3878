"""Shared pytest fixtures: paths to the DeepFashion2 demo data, and CPU-only determinism.

The 32-image DeepFashion2 demo subset is read in place (never copied) from ``$KGDET_DF2_DEMO``
(the variable the ``kgdet_df2_demo`` config reads too), by default ``../shared/data/
deepfashion2_demo`` next to the repository. Tests that need it skip, saying what to set, when it
is absent; ``python -m pytest tests -q -rs`` lists the reasons.
"""

import os
from pathlib import Path
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
DF2_DEMO_ENV = "KGDET_DF2_DEMO"
DEFAULT_DF2_DEMO_DIR = REPO_ROOT.parent / "shared" / "data" / "deepfashion2_demo"


def df2_demo_path() -> Path:
    """``$KGDET_DF2_DEMO`` if set, else ``../shared/data/deepfashion2_demo`` (may not exist)."""
    return Path(os.environ.get(DF2_DEMO_ENV) or DEFAULT_DF2_DEMO_DIR)


def df2_examples_path() -> Path:
    """The official example result files, ``deepfashion2_examples`` beside the demo folder."""
    return df2_demo_path().parent / "deepfashion2_examples"


def require_df2_demo() -> Path:
    """The demo folder, or skip the calling test with the variable to set."""
    path = df2_demo_path()
    if not (path / "annotations.json").exists():
        pytest.skip(
            f"DeepFashion2 demo data not found at {path}: set {DF2_DEMO_ENV} to the folder "
            "holding annotations.json and image/ (the 32-image demo subset)"
        )
    return path


@pytest.fixture
def df2_demo_dir() -> Path:
    """The 32-image DeepFashion2 demo subset (read in place, never copied)."""
    return require_df2_demo()


@pytest.fixture(autouse=True, scope="session")
def _annotation_cache_dir(tmp_path_factory):
    """Annotation caches of the tests' jsons go to a temporary folder, not ~/.cache/kgdet."""
    old = os.environ.get("KGDET_CACHE")
    os.environ["KGDET_CACHE"] = str(tmp_path_factory.mktemp("kgdet_cache"))
    yield
    if old is None:
        os.environ.pop("KGDET_CACHE", None)
    else:
        os.environ["KGDET_CACHE"] = old


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _loggers_propagate():
    """Let caplog see project and Detectron2 log records in every test.

    ``setup_logger`` (called by ``train_net.setup`` and ``default_setup`` in some tests) turns off
    propagation of the "kgdet", "detectron2", "dfa" and "fvcore" loggers, which would hide their
    records from pytest's root-logger capture in all later tests of the same process.
    """
    import logging

    for name in ("kgdet", "detectron2", "d2", "dfa", "fvcore"):
        logging.getLogger(name).propagate = True
    yield
