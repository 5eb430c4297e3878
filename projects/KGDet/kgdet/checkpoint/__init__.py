"""Import of official (mmdetection v1) KGDet checkpoints."""

from .convert import (
    OfficialCheckpointError,
    convert_official_state_dict,
    load_official_state_dict,
    official_to_project_name,
    save_converted_checkpoint,
)
from .official_layout import official_kgdet_shapes
