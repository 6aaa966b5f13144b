from setuptools import setup

setup(
    name="mcdp-fsar",
    version="0.1.0",
    description="MCDP-FSAR: multi-modal context dynamic prompt learning for few-shot action recognition",
    python_requires=">=3.10",
    # No packages are installed: `datasets`, `models`, `runs` and `utils` are the lineage's top-level folders, and
    # installing them would shadow (or overwrite) other distributions with generic names, such as Hugging Face
    # `datasets`. Entry points put the repository first on sys.path; tests run from the repository root.
    packages=[],
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
        "torchcodec": ["torchcodec"],  # DATA.DECODER torchcodec; needs FFmpeg's shared libraries on the system
    },
)
