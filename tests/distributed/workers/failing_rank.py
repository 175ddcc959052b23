"""Worker: rank 1 raises while rank 0 waits for it in an all-reduce; the whole job must end, not hang."""
import numpy as np

from cnnnumba import distributed as dist

dist.init_process_group()
if dist.get_rank() == 1:
    raise RuntimeError("rank 1 broke on purpose")
dist.all_reduce(np.zeros(4))
print("rank 0 finished the all-reduce", flush=True)
