import os

import pytest

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")


@pytest.fixture(scope="session")
def ray_local():
    """One embedded 2-CPU Ray for the whole test session (shared by every Ray test)."""
    import ray

    from segotce_ray.cluster.runtime import init_ray

    init_ray(num_cpus=2)
    yield ray
    ray.shutdown()
