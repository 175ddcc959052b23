"""Worker: the process group's collectives and their errors on every rank; rank 0 prints `ok rank R` for each."""
import numpy as np

from cnnnumba import distributed as dist

assert not dist.is_initialized()
dist.init_process_group()
dist.init_process_group()  # idempotent
assert dist.is_initialized()
rank, world = dist.get_rank(), dist.get_world_size()
assert world == 2 and rank in (0, 1)
assert dist.get_local_world_size() == 2

summed = np.arange(5, dtype=np.float64) * (rank + 1)
dist.all_reduce(summed)
assert np.array_equal(summed, np.arange(5) * 3.0), summed
largest = np.array([rank, -rank], dtype=np.int64)
dist.all_reduce(largest, op="max")
assert largest.tolist() == [1, 0]

weights = np.full((2, 3), float(rank), dtype=np.float32)
dist.broadcast(weights, src=1)
assert np.all(weights == 1.0)
assert dist.all_gather_object({"rank": rank}) == [{"rank": 0}, {"rank": 1}]
dist.barrier()

for call, error, words in [
    (lambda: dist.all_reduce(np.zeros(3), op="mean"), ValueError, "op must be one of"),
    (lambda: dist.all_reduce(np.zeros((3, 2))[:, 0]), ValueError, "C-contiguous"),
    (lambda: dist.all_reduce([1.0, 2.0]), TypeError, "expected a NumPy array"),
    (lambda: dist.broadcast(np.zeros(2), src=2), ValueError, "src must be a rank between 0 and 1"),
    (lambda: dist.init_process_group("gloo"), ValueError, "'mpi' backend only"),
]:
    try:
        call()
    except error as caught:
        assert words in str(caught), caught
    else:
        raise AssertionError(f"no {error.__name__} for {words}")

report = dist.all_gather_object(f"ok rank {rank}")
dist.destroy_process_group()
assert not dist.is_initialized()
if rank == 0:  # one process prints: two ranks' lines may interleave in mpiexec's forwarded output
    print("\n".join(report), flush=True)
