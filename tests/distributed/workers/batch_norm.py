"""Worker: one SGD step of a float64 model with batch norm, data-parallel over halves of a batch, eager or
captured; saves each rank's state to OUT_DIR/rank{r}.npz.

Usage: batch_norm.py eager|captured OUT_DIR
"""
import sys

import numpy as np

import cnnnumba as cn
from cnnnumba import distributed as dist
from cnnnumba import functional as F
from cnnnumba import nn, optim

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from model import BATCHES, batch_norm_model  # noqa: E402

mode, out_dir = sys.argv[1], sys.argv[2]
dist.init_process_group()
rank = dist.get_rank()
ddp = nn.parallel.DistributedDataParallel(batch_norm_model())
optimizer = optim.SGD(ddp.parameters(), lr=0.1)
images, labels = BATCHES[0]
x, y = images[rank * 4:(rank + 1) * 4], labels[rank * 4:(rank + 1) * 4]
if mode == "captured":
    cn.graph.capture(ddp, F.cross_entropy, optimizer)(x, y)
else:
    optimizer.zero_grad()
    F.cross_entropy(ddp(cn.Tensor(x)), y).backward()
    optimizer.step()
np.savez(f"{out_dir}/rank{rank}.npz", **ddp.module.state_dict())
