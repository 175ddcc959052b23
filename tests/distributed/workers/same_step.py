"""Worker: train a small float64 model without batch norm data-parallel (each rank half of every batch), eager or
captured, and save each rank's final weights to OUT_DIR/rank{r}.npz.

Usage: same_step.py eager|captured OUT_DIR
"""
import sys

import numpy as np

import cnnnumba as cn
from cnnnumba import distributed as dist
from cnnnumba import functional as F
from cnnnumba import nn, optim

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from model import BATCHES, STEPS, small_model  # noqa: E402

mode, out_dir = sys.argv[1], sys.argv[2]
dist.init_process_group()
rank, world = dist.get_rank(), dist.get_world_size()
cn.manual_seed(rank)  # different initial weights: DDP must replace them with rank 0's
ddp = nn.parallel.DistributedDataParallel(small_model(), bucket_cap_mb=0.0005)  # several buckets for ~1 k weights
optimizer = optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
step = cn.graph.capture(ddp, F.cross_entropy, optimizer) if mode == "captured" else None
for images, labels in BATCHES[:STEPS]:
    share = len(labels) // world
    x, y = images[rank * share:(rank + 1) * share], labels[rank * share:(rank + 1) * share]
    if step is None:
        optimizer.zero_grad()
        loss = F.cross_entropy(ddp(cn.Tensor(x)), y)
        loss.backward()
        optimizer.step()
    else:
        step(x, y)
np.savez(f"{out_dir}/rank{rank}.npz", **ddp.module.state_dict())
if step is not None:  # the step ran as a graph whose gradients went in several overlapped buckets
    sync = step.last.gradient_sync
    assert sync is not None and len(sync.buckets) > 1, sync
    last_node = len(step.last.schedule.backward_nodes) - 1
    assert sync.buckets[0].ready_after < last_node, "no bucket starts before the backward has ended"
    arena = step.last.update.groups[0][3]
    assert sum(b.array.size for b in sync.buckets) == arena.size  # the buckets tile the gradient arena
    assert all(np.shares_memory(b.array, arena) for b in sync.buckets)  # in place: no copies
dist.destroy_process_group()
