import platform

import torch

from prunekit.infra.machine import available_memory, release_freed_memory


def test_available_memory_is_a_positive_byte_count():
    free = available_memory()
    assert free is None or free > 0


def test_release_freed_memory_trims_the_heap_where_glibc_has_malloc_trim():
    junk = [torch.empty(1 << 18) for _ in range(64)]  # 64 MB in 1 MB pieces, then freed
    del junk
    done = release_freed_memory()
    assert done is (platform.libc_ver()[0] == "glibc")
    assert release_freed_memory() is done  # the lookup is cached and repeatable
