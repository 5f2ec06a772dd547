"""Shared pytest configuration: the virtual phone's fixtures (``adb_server``, ``virtual_phone``) and the shared
compiled run (``compiled_digits``).

``tests/`` is not a package, so pytest puts this folder on ``sys.path`` and the double imports as
``virtual_phone``.
"""

pytest_plugins = ["virtual_phone.fixtures", "run_fixtures"]
