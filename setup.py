"""Packaging for the FHIR Bulk Data export engine."""

from setuptools import find_packages, setup

BEAM_VERSION = "2.77.0"

setup(
    name="fhir-bulk-export-beam",
    version="0.1.0",
    description="FHIR Bulk Data $export as an Apache Beam batch pipeline",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["launcher", "pipelines", "transforms", "transforms.*"]),
    package_data={"transforms.fhir.r4": ["*.json"]},
    install_requires=[
        f"apache-beam=={BEAM_VERSION}",
        "pydantic>=2.7,<3",
        "pyarrow",
        "fastavro",
        "google-cloud-storage",
        "orjson>=3.10",
    ],
    extras_require={"test": ["pytest>=8"]},
    entry_points={"console_scripts": ["bulk-export=launcher.cli:main"]},
)
