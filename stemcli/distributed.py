"""MPI fan-out (mpi4py over OpenMPI): a long song split across ranks, or a folder spread over ranks."""

from __future__ import annotations

import os


def mpi_world_size() -> int:
    """Size of the MPI world this process was started in, without importing mpi4py (1 if none)."""
    for var in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS"):
        value = os.environ.get(var)
        if value and value.isdigit():
            return int(value)
    return 1
