"""Evaluation: DeepFashion2 box/keypoint AP and FLD NE/PDL."""
