"""The Generate mode: the panel's request planned on the canvas as it is edited, then run.

Every edit asks :class:`PlanSummary` (off the GUI thread) for the plan, estimate and memory check;
the summary lands in the panel and, while nothing runs, as the tile plan on the canvas (an empty
canvas of the new size when the size changed). Generate checks the request and starts a run on
the window's run path, shared with Upscale….
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QObject

from ..engine.core import request as rq
from .plan_summary import TOOLTIP, Summary


def _same_plan(a: rq.GenerationRequest, b: rq.GenerationRequest) -> bool:
    # The seed never changes the plan, and Generate draws a new one just before it starts.
    return a.replace(seed=0) == b.replace(seed=0)


class GenerateMode(QObject):
    """Generate's half of the window: ``w`` is the MainWindow (panel, canvas, runs, errors)."""

    def __init__(self, w: Any) -> None:
        super().__init__(w)
        self.w = w
        w.panel.changed.connect(self.update_plan)
        w.plan_summary.ready.connect(self._show_summary)

    def generate(self) -> bool:
        """Start a run from the panel; False (with the reason shown) if it cannot start."""
        w = self.w
        if w.busy:
            return False
        w.panel.prepare_run()
        try:
            request = w.panel.request()
        except rq.RequestError as exc:
            w.show_error("This request cannot run", str(exc))
            return False
        summary = w.plan_summary.latest
        if summary is not None and summary.request is not None and _same_plan(summary.request, request):
            if summary.error is not None:  # geometry errors now, not after loading a model
                w.show_error("This request cannot run", summary.error)
                return False
            device, check = summary.device, False
        else:
            # Generate right after an edit, before its plan was built: the run's worker checks the
            # geometry before the engine loads a model (never the GUI thread).
            device, check = request.device.split(":")[0].replace("auto", "cpu"), True
        w.start_run(request, w.panel.info, device, check)
        return True

    # -- the plan on the canvas ------------------------------------------------------------------

    def update_plan(self, now: bool = False) -> None:
        # Also during a run: the panel's summary follows the edits (the canvas waits, see below).
        w = self.w
        try:
            request = w.panel.request()
        except rq.RequestError as exc:
            w.plan_summary.request_update_failed(str(exc))
            if exc.field.startswith("regions") and not w.runner.active:
                self._follow_size()
            return
        info = w.panel.info
        w.plan_summary.request_update(request, info, w.prefs.speeds_for(info.id), now=now)

    def _follow_size(self) -> None:
        # A new size that leaves a region outside: the canvas takes the size anyway (without a
        # plan until the request is valid again), so the region is seen where it now lies.
        v, canvas = self.w.panel.values(), self.w.canvas
        if (v.width, v.height) != (canvas.image_w, canvas.image_h):
            self._leave_picture()
            canvas.set_canvas_size(v.width, v.height)
            canvas.set_plan([])

    def _leave_picture(self) -> None:
        if self.w.session.current is not None:
            self.w.session.set_current(None)
            self.w.seams.clear("The size changed: the plan is drawn on an empty canvas.")

    def _show_summary(self, summary: Summary) -> None:
        w, panel = self.w, self.w.panel
        if summary.error is not None or summary.request is None:
            panel.plan_info.setText(f"<span style='color:#e5534b'>{summary.error or ''}</span>")
            if not w.runner.active:
                w.act_generate.setEnabled(True)  # Generate explains the problem in a dialog
            return
        panel.show_plan(summary.plan)
        panel.plan_info.setText(summary.html)
        panel.plan_info.setToolTip(TOOLTIP)
        if w.busy:
            return  # the canvas shows the run now; the panel's summary is up to date
        request, canvas = summary.request, w.canvas
        if w.session.current is None or (request.width, request.height) != (canvas.image_w, canvas.image_h):
            self._leave_picture()
            canvas.set_canvas_size(request.width, request.height)
        canvas.set_plan(summary.tiles)


__all__ = ["GenerateMode"]
