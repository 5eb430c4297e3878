"""KGDetCheckpointer: an unreadable checkpoint is one error naming the file; --resume falls back
to the newest readable checkpoint in the output folder."""

import logging
import os
import time
import pytest
import torch
from torch import nn

from detectron2.checkpoint import DetectionCheckpointer

from kgdet.checkpoint import CheckpointReadError, KGDetCheckpointer


def _save(folder):
    model = nn.Linear(3, 2)
    checkpointer = DetectionCheckpointer(model, save_dir=str(folder))
    for i, name in enumerate(("model_0000001", "model_0000003", "model_final")):
        with torch.no_grad():
            model.weight.fill_(float(i))
        checkpointer.save(name)
        os.utime(folder / f"{name}.pth", (time.time() + i, time.time() + i))
    final = folder / "model_final.pth"
    final.write_bytes(final.read_bytes()[: final.stat().st_size // 2])
    return final


def test_truncated_file_is_named_in_one_line(tmp_path):
    final = _save(tmp_path)
    with pytest.raises(CheckpointReadError) as err:
        KGDetCheckpointer(nn.Linear(3, 2)).load(str(final))
    assert str(err.value).startswith(f"checkpoint {final} is truncated or corrupt")
    assert "\n" not in str(err.value)
    with pytest.raises(CheckpointReadError):
        KGDetCheckpointer(nn.Linear(3, 2), save_dir=str(tmp_path)).resume_or_load(
            str(final), resume=False
        )


def test_resume_falls_back_to_newest_readable(tmp_path, caplog):
    _save(tmp_path)
    model = nn.Linear(3, 2)
    with caplog.at_level(logging.WARNING):
        KGDetCheckpointer(model, save_dir=str(tmp_path)).resume_or_load("", resume=True)
    assert float(model.weight[0, 0].detach()) == 1.0  # model_0000003.pth, not model_0000001.pth
    assert any(
        "Resuming from" in r.getMessage() and "model_0000003.pth" in r.getMessage()
        for r in caplog.records
    )


def test_resume_without_readable_checkpoint_says_so(tmp_path):
    _save(tmp_path)
    for name in ("model_0000001.pth", "model_0000003.pth"):
        (tmp_path / name).write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointReadError, match="no readable checkpoint in"):
        KGDetCheckpointer(nn.Linear(3, 2), save_dir=str(tmp_path)).resume_or_load("", resume=True)
