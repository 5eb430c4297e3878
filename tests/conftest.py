"""Shared pytest fixtures: paths to the shared demo data, and CPU-only determinism."""

from pathlib import Path
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared"
DF2_DEMO_DIR = SHARED_DIR / "data" / "deepfashion2_demo"


@pytest.fixture
def df2_demo_dir() -> Path:
    """The 32-image DeepFashion2 demo subset (read in place from ../shared, never copied)."""
    if not (DF2_DEMO_DIR / "annotations.json").exists():
        pytest.skip(f"DeepFashion2 demo data not found at {DF2_DEMO_DIR}")
    return DF2_DEMO_DIR


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
