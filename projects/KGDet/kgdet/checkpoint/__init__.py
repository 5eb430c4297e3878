"""Checkpoints: reading them safely, and import of official (mmdetection v1) KGDet ones."""

from .checkpointer import CheckpointReadError, KGDetCheckpointer

from .convert import (
    OfficialCheckpointError,
    convert_official_state_dict,
    load_official_state_dict,
    official_to_project_name,
    save_converted_checkpoint,
)
from .official_layout import official_kgdet_shapes
