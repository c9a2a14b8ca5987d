"""Installable package for the DSSM two-tower recall pipeline (TFX 1.16, Python 3.10).

Dependencies are pinned in requirements.lock and installed with uv (scripts/setup_venv.sh);
install_requires names only the direct ones so that `pip install .` in an image works too.
"""
from setuptools import find_packages, setup

setup(
    name="dssm-recall-tfx",
    version="0.1.0",
    description="TFX pipeline that trains and serves a DSSM two-tower recall model",
    python_requires=">=3.9,<3.11",
    packages=find_packages(include=["common*", "schema*", "serving*", "retrieval*", "model*", "components*",
                                    "pipeline*", "datagen*"]),
    py_modules=["run_pipeline"],
    package_data={"schema": ["*.yaml", "*.pbtxt"], "retrieval.service": ["*.proto"]},
    install_requires=[
        "tfx[kfp]==1.16.0",
        "tensorflow-serving-api==2.16.1",
        "tornado>=6.5,<7",
        "pymilvus>=2.5,<2.6",
        "milvus-lite>=2.5,<2.6",
        "dill",
        "setuptools<81",
        "pyyaml",
    ],
    entry_points={
        "console_scripts": [
            "dssm-pipeline=run_pipeline:main",
            "dssm-make-sample=datagen.synthetic:main",
        ],
    },
)
