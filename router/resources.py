"""Files shipped inside the package: dated data, the example config, the demo roster and studies.

A wheel carries them under ``router/data/`` (in the repository ``router/data/config`` and
``router/data/sample_dicom`` are links to the top-level ``config/`` and ``sample_dicom/``), so an
installed router finds its IMLC membership file and CPT map wherever it runs from. They are
located with :mod:`importlib.resources`; a path in the config file still overrides each one.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from router.errors import DataFileError


def packaged_path(*parts: str) -> Path:
    """The file-system path of ``router/data/<parts...>`` in the installed package.

    Raises
    ------
    DataFileError
        If the package is not installed as plain files (imported from a zip archive), so the
        data has no path of its own; install the wheel with pip instead.
    """
    resource = resources.files("router").joinpath("data", *parts)
    if not isinstance(resource, Path):
        raise DataFileError(
            f"router/data/{'/'.join(parts)} is not a file on disk ({resource}): install the router with pip"
        )
    return resource


#: ``config/`` as shipped: ``imlc_membership.csv``, ``cpt_map_<year>.csv``, ``router.example.toml``, ``demo/``.
PACKAGED_CONFIG_DIR = packaged_path("config")
#: ``sample_dicom/`` as shipped: ``<calling AE>/<case>/<n>.dcm``, sent by ``router demo``.
PACKAGED_SAMPLES_DIR = packaged_path("sample_dicom")
