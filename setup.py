"""Package discovery from the tree.

The repository keeps DESIGN's top-level layout (proto/, client/, service/, bench/) while each
directory installs under its own import name. pyproject.toml's static `packages` list cannot
rename and discover at once, so the subpackages are found here by walking each directory: a new
subpackage is picked up by the next build without anyone editing a list.
"""

from setuptools import find_packages, setup

IMPORT_NAMES = {"r2m_proto": "proto", "r2m_client": "client", "r2m_service": "service",
                "r2m_bench": "bench"}


def discover() -> list[str]:
    packages = []
    for name, directory in IMPORT_NAMES.items():
        packages.append(name)
        packages += [f"{name}.{sub}" for sub in find_packages(directory)]
    return packages


setup(package_dir=IMPORT_NAMES, packages=discover())
