#!/usr/bin/env python
"""Installs the pure-Python packages ``kgdet`` and ``dfa`` (Detectron2 must be installed first)."""

from setuptools import find_packages, setup

PACKAGE_DIRS = {"kgdet": "projects/KGDet/kgdet", "dfa": "projects/DFA/dfa"}


def _packages():
    packages = []
    for name, path in PACKAGE_DIRS.items():
        packages.append(name)
        packages += [f"{name}.{sub}" for sub in find_packages(path)]
    return packages


def _package_dir():
    mapping = {}
    for name, path in PACKAGE_DIRS.items():
        mapping[name] = path
        for sub in find_packages(path):
            mapping[f"{name}.{sub}"] = f"{path}/{sub.replace('.', '/')}"
    return mapping


setup(
    name="kgdet",
    version="0.1.0",
    description="KGDet (keypoint-guided clothing detection) and DFA for Detectron2",
    python_requires=">=3.9",
    packages=_packages(),
    package_dir=_package_dir(),
    install_requires=[
        # torch / torchvision: the tested versions are pinned in requirements.txt;
        # Detectron2 itself is a prerequisite installed as Detectron2 documents it.
        "fvcore>=0.1.5,<0.1.6",
        "pycocotools>=2.0.2",
        "orjson",  # fast decoding of annotation json records (kgdet.data.json_stream)
        # C++ COCOeval of the compact DeepFashion2 evaluation (kgdet.evaluation.compact_cocoeval)
        "faster-coco-eval>=1.8,<2",
        "numpy",
        "opencv-python-headless",
        "Pillow",
        "tqdm",
        "scikit-learn",
        "matplotlib",
        "tensorboard",
        "setuptools<81",
    ],
    extras_require={
        # Tests and the code style checks of .pre-commit-config.yaml / .ci/run.
        "dev": ["pytest", "black==26.10.1", "isort==9.0.2", "flake8==7.5.0", "pre-commit"],
        # Export to ONNX and serving with ONNX Runtime (kgdet.export, tools/deploy/export_model.py).
        # ONNX opset 19 (DeformConv) needs onnx 1.14; ONNX Runtime runs DeformConv from 1.25.0
        # on (1.24.4 fails with NOT_IMPLEMENTED; docs/gpu.md). Install one of the two extras:
        # onnxruntime and onnxruntime-gpu provide the same module and conflict.
        "deploy": ["onnx>=1.14", "onnxruntime>=1.25"],
        "deploy-gpu": ["onnx>=1.14", "onnxruntime-gpu>=1.25"],
    },
)
