"""Telling the user's code from library code in stack frames."""

from __future__ import annotations

import os
from pathlib import Path

import torch

# with the separator: torchvision's files are not torch's
LIBRARY_DIRS = (str(Path(torch.__file__).parent) + os.sep, str(Path(__file__).parent) + os.sep)


def is_library_file(filename: str) -> bool:
    """Whether `filename` is part of torch or prunekit (not the model's own code)."""
    return filename.startswith(LIBRARY_DIRS)
