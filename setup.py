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
        # >= 17.0: VideoReformatter.reformat(threads=...), which datasets/video.py:rgb24 uses to keep frame conversion
        # safe across fork (PyAV 18.1.1's shared converter hung forked loader workers). Tested: 18.1.1 (the suite),
        # 17.1.0 and 18.0.0 (the decoder, loader-worker and prepare tests), 18.1.0 (the fork check by hand).
        "av>=17.0",
        "tensorboard",
        "matplotlib",
        "trackers",
    ],
    extras_require={
        # pytest-timeout bounds every test (pytest.ini): a hung test fails with every thread's stack.
        "test": ["pytest", "pytest-timeout", "ruff", "shapiq"],
        "yolo": ["ultralytics"],
        "torchcodec": ["torchcodec"],  # DATA.DECODER torchcodec; needs FFmpeg's shared libraries on the system
    },
)
