"""Packaging for the FHIR Bulk Data export engine."""

from setuptools import find_packages, setup

BEAM_VERSION = "2.77.0"

setup(
    name="fhir-bulk-export-beam",
    version="0.1.0",
    description="FHIR Bulk Data $export as an Apache Beam batch pipeline",
    # Every Python that Beam 2.77 supports.
    python_requires=">=3.10,<3.14",
    classifiers=[
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3 :: Only",
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
    ],
    packages=find_packages(include=["launcher", "launcher.*", "pipelines", "pipelines.*", "transforms", "transforms.*"]),
    package_data={"transforms.fhir.r4": ["*.json"], "transforms.fhir": ["schemas/*.avsc"]},
    install_requires=[
        f"apache-beam=={BEAM_VERSION}",
        "pydantic>=2.7,<3",
        # Bounded as Beam 2.77 bounds them; the upper bounds keep a new major out until tested.
        "pyarrow>=14.0.1,<26",
        "fastavro>=0.23.6,<2",
        "google-cloud-storage>=2.18.2,<4",
        "orjson>=3.10",
        "numpy>=1.14.3,<2.5",  # as Beam bounds it: the read's vectorised newline count
        "fhirpathpy>=2.2.4,<3",
        "psycopg[binary,pool]>=3.2,<4",
        # `bulk-export serve`: the Bulk Data HTTP server (ASGI) and its client in tests and benchmarks.
        "fastapi>=0.115,<1",
        "uvicorn>=0.30,<1",
        "httptools>=0.6,<1",  # uvicorn's HTTP parser in C (`serve` asks for it)
        "httpx>=0.27,<1",
        # `serve`'s GET /metrics: the Prometheus text format, counters and histograms.
        "prometheus-client>=0.20,<1",
        # SMART Backend Services (`serve --auth smart`): JWS verification and signing, RSA and EC keys.
        "PyJWT[crypto]>=2.10,<3",
        # `export`'s and `resume`'s progress bar on a terminal.
        "tqdm>=4.66,<5",
    ],
    extras_require={
        # `make test`: the suite, in parallel (pytest-xdist), and a local GCS for its GCS tests.
        "test": ["pytest>=8", "pytest-xdist>=3.5,<4", "gcp-storage-emulator~=2026.7.19"],
        # Dataflow submission and Google credentials for Beam's GCS filesystem (the Docker image).
        "gcp": [f"apache-beam[gcp]=={BEAM_VERSION}"],
        # `--runner=DaskRunner` (pipelines/dask_runner.py) on a dask.distributed cluster.
        "dask": [f"apache-beam[dask]=={BEAM_VERSION}"],
        # tests/test_smart_fetch.py: the SMART/Cumulus bulk client run against `serve --auth smart`
        # (it needs Python 3.11+; on 3.10 the test skips).
        "smart-fetch": ['smart-fetch==1.0.3; python_version >= "3.11"'],
    },
    entry_points={"console_scripts": ["bulk-export=launcher.cli.main:main"]},
)
