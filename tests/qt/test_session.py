"""Session: the history's memory budget and the token that marks late work as stale."""

from __future__ import annotations

import numpy as np

from paradiff_gui.qt.session import Session
from paradiff_gui.qt.widgets.inspector import Result


def _result(n: int) -> Result:
    return Result(np.zeros((n, n), np.uint16), None, [], f"r{n}")


def test_the_oldest_full_pictures_go_beyond_the_budget_but_never_the_current_or_newest(qapp):
    s = Session(budget=2 * 64 * 64 * 2)
    a, b, c = _result(64), _result(64), _result(64)
    s.add(a)
    s.set_current(a)
    assert s.add(b) == []
    assert s.add(c) == []  # a is over budget but shown: kept
    s.set_current(c)
    d = _result(64)
    assert s.add(d) == [b, a]  # newest first: b, then a, dropped
    assert a.image is None and b.image is None and c.image is not None and d.image is not None
    assert a.title.endswith("(not in memory)")


def test_the_token_changes_with_the_current_picture(qapp):
    s = Session()
    token = s.token
    assert s.is_current(token)
    s.set_current(_result(8))
    assert not s.is_current(token) and s.is_current(s.token)
    token = s.bump()
    assert s.is_current(token)
