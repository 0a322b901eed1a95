"""Shared test fixtures: the location of ../shared/data and a skip marker for tests that need it."""

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
SAMPLE_DATA = REPO / "sample_data"


def require_shared_data(*parts: str) -> Path:
    """Path under ../shared/data, or skip the test with a clear reason when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs {path} (the project's shared data set), which is absent here")
    return path


@pytest.fixture
def shared_data():
    return require_shared_data()


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny ops: one intra-op thread avoids spin contention on small, busy CI machines
    (used by modules through `pytestmark = pytest.mark.usefixtures("one_torch_thread")`)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
