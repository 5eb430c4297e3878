"""Datasets (DeepFashion2, FLD, synthetic garments) and the keypoint-aware mapper."""
