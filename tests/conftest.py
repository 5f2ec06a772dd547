"""Shared pytest configuration: the virtual phone's fixtures (``adb_server``, ``virtual_phone``) and the shared
compiled run (``compiled_digits``).

``tests/`` is not a package, so pytest puts this folder on ``sys.path`` and the double imports as
``virtual_phone``.
"""

import pytest

pytest_plugins = ["virtual_phone.fixtures", "run_fixtures"]



@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models: more threads only add contention (and 10x slowdowns when another job shares the cores)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
