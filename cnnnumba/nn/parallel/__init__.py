"""Data parallelism across processes: `DistributedDataParallel` over the MPI process group."""
from .distributed import DistributedDataParallel

__all__ = ["DistributedDataParallel"]
