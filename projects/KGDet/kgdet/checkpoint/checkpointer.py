"""``KGDetCheckpointer``: Detectron2's ``DetectionCheckpointer`` that fails early and clearly.

- An unreadable checkpoint (cut short by a full disk or an interrupted copy, or not a checkpoint
  at all) raises :class:`CheckpointReadError`, one line naming the file ("checkpoint FILE is
  truncated or corrupt"), instead of torch's message without the file name. The scripts print
  it as one line with exit status 2 (:func:`kgdet.cli.run_main`).
- ``resume_or_load(..., resume=True)`` whose ``last_checkpoint`` names an unreadable file falls
  back to the newest readable ``*.pth`` checkpoint in the same folder (newest by modification
  time), and says so in a warning; only when none is readable does it raise.
"""

import logging
import os
import pickle
import zipfile
from typing import Any, Dict, List

from detectron2.checkpoint import DetectionCheckpointer

from ..cli import UsageError

__all__ = ["CheckpointReadError", "KGDetCheckpointer"]

logger = logging.getLogger(__name__)

# What torch.load / pickle raise for a file cut short or not a checkpoint.
_READ_ERRORS = (
    pickle.UnpicklingError,
    EOFError,
    RuntimeError,
    zipfile.BadZipFile,
    UnicodeDecodeError,
    AssertionError,
)


class CheckpointReadError(UsageError):
    """A checkpoint file that cannot be read; the message names the file."""


class KGDetCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` with the behaviour of the module docstring (same arguments)."""

    def _load_file(self, filename: str) -> Dict[str, Any]:
        try:
            return super()._load_file(filename)
        except _READ_ERRORS as e:
            reason = " ".join(str(e).split())
            first = reason.split(". ")[0][:160]
            raise CheckpointReadError(
                f"checkpoint {filename} is truncated or corrupt ({type(e).__name__}: {first})"
            ) from e

    def _newest_checkpoints(self) -> List[str]:
        """``last_checkpoint``'s file, then every other ``*.pth`` in save_dir, newest first."""
        last = self.get_checkpoint_file()
        others = [f for f in self.get_all_checkpoint_files() if f != last]
        others.sort(key=lambda f: (os.path.getmtime(f), f), reverse=True)
        return ([last] if last else []) + others

    def resume_or_load(self, path: str, *, resume: bool = True) -> Dict[str, Any]:
        """As Detectron2's, but an unreadable last checkpoint falls back to the newest readable
        one in ``save_dir`` (warning naming both); raises :class:`CheckpointReadError` if none
        is readable, or if ``path`` (without resume) is unreadable."""
        if not (resume and self.has_checkpoint()):
            return super().resume_or_load(path, resume=resume)
        unreadable = []
        for candidate in self._newest_checkpoints():
            try:
                loaded = self.load(candidate)
            except CheckpointReadError as e:
                self._parsed_url_during_load = None  # left set by the failed load
                unreadable.append(candidate)
                logger.warning(str(e))
                continue
            if unreadable:
                logger.warning(
                    f"Resuming from {candidate}, the newest readable checkpoint in "
                    f"{self.save_dir}, instead of {', '.join(unreadable)} (truncated or corrupt)"
                )
            return loaded
        raise CheckpointReadError(
            f"no readable checkpoint in {self.save_dir} to resume from: "
            f"{', '.join(unreadable)} truncated or corrupt; remove them, or train without --resume"
        )
