"""Test helpers shared by several suites (import as ``helpers.<module>``: tests/ is on sys.path)."""
