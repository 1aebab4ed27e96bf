"""The app's persisted settings (QSettings): window geometry and docks, the last request, view
and performance preferences, and the speed learnt from earlier runs.

Keys live here and nowhere else, so a renamed key cannot leave a reader and a writer apart.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

from PySide6.QtCore import QByteArray, QSettings, QSize
from PySide6.QtWidgets import QMainWindow

from ..engine.core import request as rq

log = logging.getLogger(__name__)

DEFAULT_SIZE = (1400, 900)  # px, a first start


class AppSettings:
    """Typed access to the app's QSettings (tests pass their own file)."""

    def __init__(self, qsettings: QSettings | None = None) -> None:
        self.q = qsettings or QSettings()

    # -- window --------------------------------------------------------------------------------

    def restore_window(self, window: QMainWindow, minimum: QSize) -> None:
        """Geometry and dock layout as last saved, never smaller than ``minimum``: a window
        saved tiny (or on a smaller screen) would otherwise open with its panel squeezed."""
        geometry = self.q.value("window/geometry")
        if isinstance(geometry, QByteArray):
            window.restoreGeometry(geometry)
        else:
            window.resize(*DEFAULT_SIZE)
        state = self.q.value("window/state")
        if isinstance(state, QByteArray):
            window.restoreState(state)
        size = window.size()
        if size.width() < minimum.width() or size.height() < minimum.height():
            window.resize(max(size.width(), minimum.width()), max(size.height(), minimum.height()))

    def save_window(self, window: QMainWindow) -> None:
        self.q.setValue("window/geometry", window.saveGeometry())
        self.q.setValue("window/state", window.saveState())

    # -- request and models --------------------------------------------------------------------

    def added_models(self) -> list[str]:
        """Models the person added (folders, files) that still exist."""
        return [m for m in self.q.value("models/added", []) or [] if isinstance(m, str) and Path(m).exists()]

    def set_added_models(self, models: list[str]) -> None:
        self.q.setValue("models/added", models)

    def last_request(self) -> rq.GenerationRequest | None:
        text = self.q.value("request/last")
        if not isinstance(text, str):
            return None
        from ..engine.api.requests import check_options

        try:
            return check_options(rq.GenerationRequest.from_json(text))
        except rq.RequestError as exc:
            log.warning("saved settings ignored: %s", exc)
            return None

    def set_last_request(self, request: rq.GenerationRequest) -> None:
        self.q.setValue("request/last", request.to_json(indent=None))

    def flag(self, key: str, default: bool) -> bool:
        """A yes/no preference: ``view/borders``, ``view/relief``, ``performance/spare_core``…"""
        return bool(self.q.value(key, default, type=bool))

    def set_flag(self, key: str, on: bool) -> None:
        self.q.setValue(key, bool(on))

    # -- speed priors --------------------------------------------------------------------------

    @staticmethod
    def _speed_key(model: str, device: str) -> str:
        return f"speed/{model.replace('/', '|')}/{device}"

    def seconds_per_view(self, model: str, device: str) -> float | None:
        """The steady time of one model call measured on the last run of ``model`` on ``device``."""
        v = self.q.value(self._speed_key(model, device))
        try:
            return float(v) if v is not None else None
        except (TypeError, ValueError):
            return None

    def set_seconds_per_view(self, model: str, device: str, seconds: float) -> None:
        self.q.setValue(self._speed_key(model, device), seconds)

    def speeds_for(self, model: str) -> dict[str, float]:
        """``model``'s learnt speed per device type, read here so a worker never touches QSettings."""
        out = {}
        for device in ("cpu", "cuda", "mps"):
            v = self.seconds_per_view(model, device)
            if v is not None:
                out[device] = v
        return out

    def sync(self) -> None:
        self.q.sync()

    # -- the whole app: which control each key restores -------------------------------------------

    def restore_app(self, w: Any, minimum: QSize) -> None:
        """The MainWindow ``w`` as last left: geometry, added models, the last request, the
        Inspect overlays, View and Performance choices (its parts already built and connected)."""
        self.restore_window(w, minimum)
        w.panel.refresh_models(self.added_models())  # the catalogue scan runs off the GUI thread
        request = self.last_request()
        if request is not None:
            w.panel.set_request(request, lock_seed=self.flag("request/seed_locked", False))
        w.seams.borders.setChecked(self.flag("view/borders", True))
        w.seams.overlaps.setChecked(self.flag("view/overlaps", False))
        w.seams.heatmap.setChecked(self.flag("view/heatmap", False))
        w.act_relief.setChecked(self.flag("view/relief", True))
        w.results.relief = w.act_relief.isChecked()
        w.act_tiled.setChecked(self.flag("view/tiled", False))
        w.panel.spare_core.setChecked(self.flag("performance/spare_core", False))

    def save_app(self, w: Any) -> None:
        """What :meth:`restore_app` restores (relief and 2×2 are saved as they are toggled)."""
        self.save_window(w)
        self.set_added_models(w.panel.added_models())
        with contextlib.suppress(rq.RequestError):  # an invalid form is not worth restoring
            self.set_last_request(w.panel.request())
        self.set_flag("request/seed_locked", w.panel.seed_lock.isChecked())
        self.set_flag("view/borders", w.seams.borders.isChecked())
        self.set_flag("view/overlaps", w.seams.overlaps.isChecked())
        self.set_flag("view/heatmap", w.seams.heatmap.isChecked())
        self.set_flag("performance/spare_core", w.panel.spare_core.isChecked())
        self.sync()
