"""Service-test fixtures: the store fixtures (``store_url``, ``store``) live in tests/conftest.py."""
