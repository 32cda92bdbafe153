"""On Linux, a CPU run keeps freed tensor memory for reuse: the next step's tensors fault no new pages."""

from __future__ import annotations

import sys

import pytest
import torch

from lmforge.runtime import RuntimeConfig, setup_runtime
from lmforge.runtime_auto import keep_freed_memory


def _page_faults_of_a_fresh_tensor(n: int) -> int:
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.ones(n)  # written whole: every page is touched
    del x
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc thresholds are Linux-only")
def test_a_cpu_runtime_reuses_freed_pages():
    n = 8 * 2 ** 20  # 32 MiB of fp32: above glibc's largest default mmap threshold, so an mmap of its own
    setup_runtime(RuntimeConfig(device="cpu"))
    assert keep_freed_memory()
    pages = n * 4 // 4096
    faults = []
    for _ in range(5):
        x = torch.ones(n)
        del x
        # a slightly smaller tensor fits the block just freed: with the fix it lands there (no new page);
        # under glibc's defaults the freed block went back to the kernel and most rounds fault all pages.
        # (The same size again may not fit: torch asks for 64-byte alignment, which needs a few bytes more
        # than the freed block, so that test would depend on the heap's layout.)
        faults.append(_page_faults_of_a_fresh_tensor(n - 2 ** 14))
    assert max(faults) < pages // 10, faults


def test_glibc_tunables_in_the_environment_decide(monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert keep_freed_memory() is False
