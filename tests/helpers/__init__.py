"""Test helpers shared across suites (importable as ``helpers.*``: tests/ is on sys.path)."""
