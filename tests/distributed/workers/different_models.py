"""Worker: ranks build DistributedDataParallel over models that differ; rank 0 prints the error each rank got."""
import sys

from cnnnumba import distributed as dist
from cnnnumba import nn

dist.init_process_group()
rank = dist.get_rank()
case = sys.argv[1]
if case == "shape":
    model = nn.Sequential(nn.Linear(4, 3 if rank == 0 else 2))
else:
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)) if rank == 0 else nn.Sequential(nn.Linear(4, 3))
try:
    nn.parallel.DistributedDataParallel(model)
    outcome = "built"
except ValueError as error:
    outcome = str(error)
report = dist.all_gather_object(f"rank {rank}: {outcome}")
if rank == 0:  # one process prints: two ranks' lines may interleave in mpiexec's forwarded output
    print("\n".join(report), flush=True)
