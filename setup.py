from setuptools import find_packages, setup

setup(
    name="mcdp-fsar",
    version="0.1.0",
    description="MCDP-FSAR: multi-modal context dynamic prompt learning for few-shot action recognition",
    python_requires=">=3.10",
    packages=find_packages(include=["utils", "utils.*", "models", "models.*", "datasets", "datasets.*",
                                    "runs", "runs.*"]),
    package_data={"models": ["model_configs/*.json"]},
    install_requires=[
        "torch",
        "torchvision",
        "open_clip_torch",
        "decord",
        "pyyaml",
        "simplejson",
        "einops",
        "pandas",
        "tabulate",
        "tqdm",
        "psutil",
        "fvcore",
        "av",
        "tensorboard",
        "matplotlib",
        "trackers",
    ],
    extras_require={
        "test": ["pytest", "ruff", "shapiq"],
        "yolo": ["ultralytics"],
    },
)
