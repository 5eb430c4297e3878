"""KGDet model: meta-architecture, head, assignment, losses, backbone."""

from .deform_conv import KGDeformConv
from .head import KGDetHead
from .backbone import KGDetFPN, build_kgdet_resnet_fpn_backbone  # registers the backbone
from .meta_arch import KGDet  # registers the meta-architecture

__all__ = ["KGDet", "KGDetHead", "KGDeformConv", "KGDetFPN", "build_kgdet_resnet_fpn_backbone"]
