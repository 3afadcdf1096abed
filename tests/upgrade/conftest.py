"""Fixtures of the upgrade tests: tiny image folders (see ``folders.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .folders import tiny_folders


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> dict[str, Path]:
    return tiny_folders(tmp_path_factory.mktemp("tiny"))
