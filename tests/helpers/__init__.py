"""Test helpers shared across suites (import as ``helpers.<module>``; tests/ is on sys.path)."""
