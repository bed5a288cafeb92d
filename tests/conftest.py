import os

import pytest

import cogvideo_c

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
VAE_FIXTURES = os.path.join(FIXTURES, "vae")


@pytest.fixture
def cpu_memory_checked():
    """Fails the test if it leaves memory-manager allocations behind (a test's leak is a failed test)."""
    before = cogvideo_c.memory_stats("cpu")["allocated_bytes.all.current"]
    yield
    import gc

    gc.collect()
    after = cogvideo_c.memory_stats("cpu")["allocated_bytes.all.current"]
    assert after == before, f"leaked {after - before} bytes of memory-manager memory"
