"""KGDet: keypoint-guided clothing detection for Detectron2. Importing it registers everything.

Importing it also hides the known warnings that third-party packages emit on import
(:data:`kgdet.cli.THIRD_PARTY_WARNINGS`, e.g. fvcore's use of ``torch.jit.script``); every other
warning raised while importing is issued as usual. Scripts import ``kgdet`` before Detectron2.
"""

import warnings as _warnings

with _warnings.catch_warnings(record=True) as _import_warnings:
    _warnings.simplefilter("always")
    from .config import ConfigError, add_kgdet_config, build_config, get_kgdet_cfg
    from . import data  # registers the built-in datasets (lazily)
    from . import modeling  # registers the KGDet meta-architecture
    from . import evaluation
    from .cli import filter_third_party_warnings as _filter_third_party_warnings

_filter_third_party_warnings(replay=_import_warnings)
