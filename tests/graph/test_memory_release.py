"""Capture hands the memory its traced forward freed back to the OS instead of keeping it resident."""
import subprocess
import sys

import pytest

FRAGMENTED_HEAP = """
import os
import numpy as np
from cnnnumba.graph.capture import return_freed_memory

def rss_mib():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

large = np.ones(4 << 20, np.float32)
del large  # freeing a 16 MiB array raises glibc's mmap threshold to 16 MiB
arrays = [np.ones(1 << 20, np.float32) for _ in range(100)]  # 400 MiB of 4 MiB arrays, now from the heap
keep = arrays[::10]  # every tenth stays alive, so the heap cannot shrink from its top alone
del arrays
before = rss_mib()
released = return_freed_memory()
print(released, before - rss_mib())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="malloc_trim and /proc are glibc/Linux")
def test_freed_heap_pages_go_back_to_the_os():
    finished = subprocess.run([sys.executable, "-c", FRAGMENTED_HEAP], capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr
    released, dropped_mib = finished.stdout.split()
    assert released == "True"
    assert float(dropped_mib) > 200, dropped_mib  # about 360 MiB of the 400 were freed
