"""The quick suite (``-m "not slow"``) starts no service: the collection hook refuses a test that
uses a service fixture without the ``slow`` mark."""

from __future__ import annotations

import pytest

from conftest import SERVICE_FIXTURES, unmarked_service_tests


class _Item:
    def __init__(self, nodeid: str, fixtures: tuple[str, ...], slow: bool) -> None:
        self.nodeid, self.fixturenames, self._slow = nodeid, list(fixtures), slow

    def get_closest_marker(self, name: str) -> object | None:
        return object() if name == "slow" and self._slow else None


@pytest.mark.parametrize("fixture", sorted(SERVICE_FIXTURES))
def test_an_unmarked_test_using_a_service_is_reported(fixture: str) -> None:
    items = [_Item("t.py::marked", (fixture, "tmp_path"), slow=True), _Item("t.py::bare", (fixture,), slow=False)]
    assert unmarked_service_tests(items) == ["t.py::bare"]  # type: ignore[arg-type]


def test_tests_without_services_need_no_mark() -> None:
    assert unmarked_service_tests([_Item("t.py::pure", ("tmp_path", "monkeypatch"), slow=False)]) == []  # type: ignore[list-item]
