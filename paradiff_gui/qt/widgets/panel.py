"""The generation panel: the forms of ``qt/forms`` stacked, and the request in and out.

The panel is the GUI's half of "one request object": ``request()`` builds a validated
:class:`GenerationRequest` from the forms (or raises the engine's :class:`RequestError`), and
``set_request()`` shows one; ``forms/mapping.py`` does the translation both ways. It knows models
only through :class:`ModelInfo`, so it shows the right controls without loading anything.
"""

from __future__ import annotations

from dataclasses import replace

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QVBoxLayout, QWidget

from ...engine.api.requests import request_for
from ...engine.core import request as rq
from ...engine.core.modelinfo import ModelInfo
from ...engine.core.plan import TilePlan
from ..forms.coherence import CoherenceForm
from ..forms.control import ControlsForm
from ..forms.lora import LorasForm
from ..forms.mapping import FormValues, from_request, to_request
from ..forms.model import ModelForm
from ..forms.options import OptionsForm
from ..forms.performance import PerformanceForm
from ..forms.prompt import PromptForm
from ..forms.regions import RegionsForm
from ..forms.sampling import SamplingForm
from ..forms.size import SizeForm
from ..forms.start import StartForm
from ..forms.tiles import TilesForm


class GenerationPanel(QWidget):
    """Emits ``changed`` whenever a value that affects the request changes."""

    changed = Signal()
    model_changed = Signal(object)  # ModelInfo
    models_listed = Signal()  # the catalogue scan has filled the model picker

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.model_form = ModelForm()
        self.prompt_form = PromptForm()  # text models
        self.start_form = StartForm()  # image-to-image: the starting picture (File → Restyle…)
        self.options_form = OptionsForm()  # the model's own controls
        self.size_form = SizeForm()
        self.regions_form = RegionsForm()  # regional prompts; the canvas draws and edits them too
        self.lora_form = LorasForm()  # LoRA files and their weights
        self.control_form = ControlsForm()  # ControlNets, each with its control image
        self.tiles_form = TilesForm()
        self.sampling_form = SamplingForm()
        self.coherence_form = CoherenceForm()
        self.performance_form = PerformanceForm()
        self._value_forms = (self.prompt_form, self.start_form, self.lora_form, self.control_form, self.options_form,
                             self.size_form, self.regions_form, self.tiles_form, self.sampling_form,
                             self.coherence_form, self.performance_form)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(8, 8, 8, 8)
        outer.setSpacing(10)
        for form in (self.model_form, *self._value_forms):
            outer.addWidget(form)
        outer.addStretch(1)
        # The window and tests reach these directly.
        self.plan_info = self.tiles_form.plan_info
        self.seed_lock = self.sampling_form.seed_lock
        self.spare_core = self.performance_form.spare_core
        self.regions_form.canvas_size = lambda: (self.size_form.width_.value(), self.size_form.height_.value())
        self.regions_form.main_controls = lambda: self.options_form.values()["controls"]

        for form in self._value_forms:
            form.changed.connect(self.changed)  # forms are quiet while showing a request: one change each
        self.model_form.chosen.connect(lambda m: self.select_model(m, apply_defaults=True))
        self.model_form.listed.connect(self.models_listed)
        self.info: ModelInfo = self.model_form.info_for(rq.DEFAULT_MODEL)
        self.set_request(request_for(rq.DEFAULT_MODEL))
        self.refresh_models()

    # -- models ------------------------------------------------------------------------------------

    def refresh_models(self, extra: list[str] | None = None) -> None:
        """Rescan the model catalogue off the GUI thread (``models_listed`` when the picker is
        filled); ``extra`` models are listed too. The shown model stays selectable throughout."""
        self.model_form.refresh(extra)
        self.lora_form.scan()  # LoRAs in the model folders, found on a worker
        self.control_form.scan()  # ControlNets too

    def add_model(self, model: str) -> None:
        """Add ``model`` to the picker (if new) and select it with its defaults."""
        self.select_model(model, apply_defaults=True)

    def added_models(self) -> list[str]:
        return self.model_form.added()

    def select_model(self, model: str, apply_defaults: bool = False) -> None:
        self.info = self.model_form.show_model(model)
        self._use_model(self.info)
        if apply_defaults:
            # A model's own defaults (tile, steps, sampler...) replace the fields they name.
            base = request_for(model)
            current = self._request_or_none()
            keep = {} if current is None else {
                "prompt": current.prompt, "negative_prompt": current.negative_prompt, "seed": current.seed}
            regions = self.regions_form.regions()  # kept like the prompt, checked against the new size
            loras = self.lora_form.loras()  # kept too (a model that takes none greys them)
            controlnets = self.control_form.controlnets()  # likewise
            start = self.start_form.values()  # the starting picture too
            self.set_request(base.replace(**keep), lock_seed=self.seed_lock.isChecked())
            self.regions_form.show_regions(regions)
            self.lora_form.show_values(replace(self.values(), loras=loras))
            self.control_form.show_values(replace(self.values(), controlnets=controlnets))
            self.start_form.show_values(replace(self.values(), **start))
        self.model_changed.emit(self.info)
        self.changed.emit()

    def _use_model(self, info: ModelInfo) -> None:
        for form in (self.prompt_form, self.lora_form, self.control_form, self.options_form, self.regions_form,
                     self.sampling_form, self.tiles_form, self.coherence_form):
            form.set_model(info)

    # -- plan and seed -------------------------------------------------------------------------------

    def show_plan(self, plan: TilePlan) -> None:
        self.tiles_form.show_plan(plan)

    def editor_plan(self, width: int, height: int) -> TilePlan | None:
        """The tile editor's plan for a ``width`` × ``height`` picture without a recipe."""
        return self.tiles_form.editor_plan(width, height)

    def randomise_seed(self) -> None:
        self.sampling_form.randomise_seed()

    def prepare_run(self) -> None:
        """Before Generate: an unlocked seed is drawn anew, so each run differs."""
        self.sampling_form.prepare_run()

    # -- request <-> forms -------------------------------------------------------------------------

    def values(self) -> FormValues:
        merged: dict = {}
        for form in self._value_forms:
            merged.update(form.values())
        return FormValues(**merged)

    def request(self) -> rq.GenerationRequest:
        """The request the forms describe; raises RequestError naming the bad field."""
        if self.model_form.pending is not None:
            # The picker shows a model whose description has not arrived: the other fields still
            # belong to the previous one, so no request until it has.
            raise rq.RequestError("model", f"{self.model_form.pending} is still being read")
        if (problem := self.start_form.problem()) is not None:
            raise rq.RequestError("init_image", problem)
        return to_request(self.info, self.values())

    def _request_or_none(self) -> rq.GenerationRequest | None:
        try:
            return self.request()
        except rq.RequestError:
            return None

    def set_request(self, request: rq.GenerationRequest, lock_seed: bool = True) -> None:
        """Show ``request`` in the forms (a loaded request keeps its seed: the lock goes on)."""
        self.info = self.model_form.show_model(request.model)
        self._use_model(self.info)
        values = from_request(self.info, request)
        for form in self._value_forms:
            form.show_values(values)
        self.seed_lock.setChecked(lock_seed)
        self.changed.emit()
