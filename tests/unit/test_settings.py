"""Settings from the environment, as a role process receives them."""

from __future__ import annotations

import pytest

from mnistops.settings import Settings


@pytest.mark.parametrize(
    ("raw", "urls"),
    [
        ("http://a/hook", ["http://a/hook"]),
        ("http://a/hook, http://b/hook", ["http://a/hook", "http://b/hook"]),
        ('["http://a/hook", "http://b/hook"]', ["http://a/hook", "http://b/hook"]),
        ("", []),
    ],
)
def test_webhook_urls_from_env(monkeypatch: pytest.MonkeyPatch, raw: str, urls: list[str]) -> None:
    monkeypatch.setenv("MNISTOPS_WEBHOOK_URLS", raw)
    assert Settings().webhook_urls == urls


def test_in_serve_switches_are_gone(monkeypatch: pytest.MonkeyPatch) -> None:
    # serve is an API replica only: the old switches are ignored, not honoured
    monkeypatch.setenv("MNISTOPS_LOOP_IN_SERVE", "true")
    monkeypatch.setenv("MNISTOPS_MONITOR_IN_SERVE", "true")
    s = Settings()
    assert not hasattr(s, "loop_in_serve") and not hasattr(s, "monitor_in_serve")
