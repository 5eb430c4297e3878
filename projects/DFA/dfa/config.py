"""Config keys of DFA, all under ``MODEL.DFA`` (design choices: projects/DFA/DESIGN.md)."""

from detectron2.config import CfgNode as CN

__all__ = ["add_dfa_config"]


def add_dfa_config(cfg: CN) -> None:
    """Add the ``MODEL.DFA`` keys to ``cfg`` in place (idempotent)."""
    if "DFA" in cfg.MODEL:
        return
    cfg.MODEL.DFA = CN()
    d = cfg.MODEL.DFA

    # ---- problem size ------------------------------------------------------------------------
    # FLD: 8 shared landmark slots, 3 clothing types (docs/DESIGN.md §16.1).
    d.NUM_LANDMARKS = 8
    d.NUM_CLASSES = 3
    # Number of cascade stages built and run (1..3); stage 3 has two routed branches.
    d.NUM_STAGES = 3
    # Stage trained by the next training run (set by tools/train_dfa.py per stage).
    d.TRAIN_STAGE = 1

    # ---- networks ----------------------------------------------------------------------------
    # "VGG16" (the paper: one VGG-16 per network) or "SmallCNN" (CPU experiments).
    d.BACKBONE = "VGG16"
    # Hidden width of the fully connected layers (VGG-16: fc6/fc7 = 4096).
    d.FC_DIM = 4096
    # SmallCNN: output channels of its conv blocks (each block halves the resolution).
    d.SMALL_CNN_CHANNELS = [32, 64, 128, 128]
    # Optional torchvision VGG-16 ImageNet state dict (a local .pth), copied into every network.
    d.PRETRAINED_VGG16 = ""
    # Training VGG-16 networks without PRETRAINED_VGG16 is refused (the paper fine-tunes
    # ImageNet-pretrained VGG-16s, §3 "Training") unless this is True (then a warning).
    d.ALLOW_RANDOM_INIT_VGG16 = False
    # One cascade for all clothing types (False) or one per type (True, the authors' setup:
    # upper / lower / full body, each regressing only its own landmarks). The type is the
    # ground-truth type in training and in the GT-box protocol, the detector's class in the
    # KGDet -> DFA pipeline (DESIGN.md §10).
    d.PER_TYPE_CASCADES = False
    # Initialise each refiner (stage 2, both stage-3 branches) from the previous stage's network
    # instead of from scratch / ImageNet (DESIGN.md §8); useful without pretrained weights.
    d.INIT_FROM_PREVIOUS_STAGE = False
    # Dropout in the fully connected layers (VGG-16 uses 0.5).
    d.DROPOUT = 0.5

    # ---- input -------------------------------------------------------------------------------
    # Square crop side in pixels (paper: 224).
    d.CROP_SIZE = 224
    # "stretch": the box is resized to CROP_SIZE^2 (aspect ratio lost), landmarks normalised per
    # axis by the box width and height; "pad": the authors' crop, the long side is resized to
    # CROP_SIZE and the short side zero-padded to a square, landmarks normalised by the long
    # side on both axes (DESIGN.md §1).
    d.CROP_MODE = "stretch"
    # Crop = box scaled by this factor about its centre (1.0: exactly the box, as the paper).
    d.BOX_EXPAND = 1.0
    # How earlier-stage landmarks enter stages 2 and 3: any of "heatmap" (8 Gaussian channels
    # stacked with the image) and "coords" (the 16 normalised coordinates appended to the input
    # of the first fully connected layer).
    d.PREV_INPUT = ["heatmap", "coords"]
    # Gaussian heatmap sigma, as a fraction of the crop side.
    d.HEATMAP_SIGMA = 0.04
    # Training-time augmentation: horizontal flip (landmark slots swapped by the flip map),
    # box jitter (centre shift and log-scale, as fractions of the box size; 0 = off, paper).
    d.RANDOM_FLIP = True
    d.BOX_JITTER = 0.0
    # Gaussian noise (normalised box units) added to earlier-stage landmarks while training a
    # later stage, so the refiners see errors as large as on unseen data (0 = off, paper).
    d.PREV_JITTER = 0.0
    # Boxes narrower/shorter than this (pixels) are skipped in training (logged count).
    d.MIN_BOX_SIZE = 2.0
    # Keep decoded training images in memory (small datasets only).
    d.CACHE_IMAGES = False

    # ---- pseudo-labels -------------------------------------------------------------------------
    d.NUM_CLUSTERS = 20
    # Eq. 1 temperature, in units of DISTANCE_SCALE pixels (paper: T = 20 on 224 px crops).
    d.TEMPERATURE = 20.0
    # Cluster spaces are measured in pixels of a DISTANCE_SCALE x DISTANCE_SCALE crop, whatever
    # CROP_SIZE is, so that T keeps the paper's meaning for small crops.
    d.DISTANCE_SCALE = 224.0
    # k-means (scikit-learn): restarts and seed.
    d.KMEANS_N_INIT = 4
    d.KMEANS_SEED = 0

    # ---- routing (stage 3, DESIGN.md §6) ---------------------------------------------------------
    # r = 1[G(f2) < eps]; G in normalised landmark units (L2 norm of the 8x2 offset vector).
    d.ROUTING_THRESHOLD = 0.3
    # Temperature of the stage-2 label that G is computed from, in TEMPERATURE's units: -1 = the
    # predicted soft label itself (T), 0 = hard label (most likely cluster), > 0 re-tempered.
    d.ROUTING_TEMPERATURE = -1.0
    # True: eps = the quantile of G over the training garments at the share of training garments
    # whose true stage-1 error is below ROUTING_THRESHOLD (the soft G ranks garments well but
    # its range is compressed, so a fixed eps does not split). Computed when stage 3 starts and
    # stored with its centres.
    d.ROUTING_CALIBRATE = True
    # If in (0, 1): eps is instead this quantile of G over the training set (overrides both).
    d.ROUTING_THRESHOLD_QUANTILE = -1.0
    # Each branch must receive at least this share of the training garments, else stage 3
    # refuses to train (a branch would stay untrained) unless ROUTING_ALLOW_DEGENERATE.
    d.ROUTING_MIN_SHARE = 0.05
    d.ROUTING_ALLOW_DEGENERATE = False

    # ---- losses (Eq. 3, 4) -----------------------------------------------------------------------
    # L = L_positions + alpha(t) L_visibility + beta(t) L_labels.
    d.VISIBILITY_WEIGHT = 0.1
    d.LABEL_WEIGHT = 1.0
    # alpha(t), beta(t): full weight for t < t1, linear decay to 0 on [t1, t2), 0 after;
    # t1, t2 are these fractions of SOLVER.MAX_ITER (paper: 2000 and 4000 iterations).
    d.AUX_DECAY_START = 0.25
    d.AUX_DECAY_END = 0.5

    # ---- optimisation ----------------------------------------------------------------------------
    # "SGD" (Detectron2's SOLVER.* settings, the paper) or "ADAM" (same LR/weight decay keys).
    d.OPTIMIZER = "SGD"
