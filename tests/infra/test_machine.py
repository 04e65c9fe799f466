import platform
import textwrap

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


def test_large_allocations_mapped_hands_a_freed_tensor_back_at_once():
    """Checked in a fresh interpreter: in a test worker that ran other tests first, the RSS once did not drop
    (what those tests left in the allocator decides it), while the setting itself is what is under test."""
    import subprocess
    import sys

    from prunekit.infra.machine import MMAP_THRESHOLD_AFTER

    code = textwrap.dedent("""
        import platform, psutil, torch
        from prunekit.infra.machine import large_allocations_mapped
        proc = psutil.Process()
        with large_allocations_mapped(1 << 20) as done:
            assert done is (platform.libc_ver()[0] == "glibc")
            if done:
                x = torch.ones(4 << 20)  # 16 MB, under glibc's own 32 MB threshold: a heap chunk without the setting
                before = proc.memory_info().rss
                del x
                # its own memory map: unmapped on free (16 MB, less whatever the interpreter allocated meanwhile)
                print(before - proc.memory_info().rss)
            else:
                print("skipped")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    last = out.stdout.split()[-1]
    assert last == "skipped" or int(last) > 12e6
    assert MMAP_THRESHOLD_AFTER == 32 << 20


def test_free_cores_subtracts_the_busy_cores_and_keeps_one():
    from prunekit.infra.machine import free_cores

    assert free_cores(cores=2, load=0.0) == 2
    assert free_cores(cores=2, load=0.4) == 2  # rounding: a core 40% busy still counts as free
    assert free_cores(cores=2, load=1.1) == 1  # another process holds a core
    assert free_cores(cores=2, load=7.0) == 1  # at least one
    assert free_cores(cores=16, load=3.6) == 12
    assert 1 <= free_cores() <= max(1, __import__("os").cpu_count())


def _fresh(code: str, **env: str) -> str:
    import os
    import subprocess
    import sys

    environ = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120,
                         env={**environ, **env})
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.split()[-1]


def test_enable_huge_pages_turns_torchs_huge_pages_on_before_the_first_tensor_and_leaves_no_variable():
    if platform.system() != "Linux":
        return
    code = """
        import os, torch
        from prunekit.infra.machine import enable_huge_pages
        on = enable_huge_pages()
        x = torch.empty(1 << 22)  # 16 MB
        print(f"{on},{x.data_ptr() % 4096 == 0},{'THP_MEM_ALLOC_ENABLE' in os.environ}")
    """
    assert _fresh(code) == "True,True,False"  # on, page-aligned as torch aligns huge-page tensors, nothing inherited
    assert _fresh(code, THP_MEM_ALLOC_ENABLE="0") == "False,False,True"  # the user's explicit 0 is kept


def test_enable_huge_pages_after_a_tensor_exists_changes_nothing_and_says_so():
    if platform.system() != "Linux":
        return
    code = """
        import torch
        from prunekit.infra.machine import enable_huge_pages
        first = torch.empty(1 << 20)
        print(enable_huge_pages())
    """
    assert _fresh(code) == "False"


def test_the_prunekit_command_turns_huge_pages_on_first():
    if platform.system() != "Linux":
        return
    code = """
        import torch, prunekit.cli as cli
        cli.build_parser = lambda: (_ for _ in ()).throw(KeyboardInterrupt)  # stop right after the first step
        cli.main([])
        print(torch.empty(1 << 20).data_ptr() % 4096 == 0)
    """
    assert _fresh(code) == "True"
