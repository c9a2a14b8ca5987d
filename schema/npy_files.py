"""The header of a .npy file, read without TensorFlow and without touching its data: the shape,
order and dtype numpy declares there (versions 1.0 and 2.0; nothing is unpickled)."""
from __future__ import annotations

import numpy as np


def read_npy_header(f) -> tuple[tuple, bool, np.dtype]:
    """(shape, fortran_order, dtype) of an open binary .npy file, left positioned at its data.
    ValueError (or SyntaxError / EOFError from numpy's parser) for anything else."""
    version = np.lib.format.read_magic(f)
    read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                   (2, 0): np.lib.format.read_array_header_2_0}.get(version)
    if read_header is None:
        raise ValueError(f".npy format version {version} is not supported")
    return read_header(f)
