"""The prompt form: what to paint and what to avoid, shown only for models conditioned on text."""

from __future__ import annotations

from typing import Any

from PySide6.QtWidgets import QPlainTextEdit, QVBoxLayout

from ...engine.core.modelinfo import ModelInfo
from .base import Form
from .mapping import FormValues


class PromptForm(Form):
    def __init__(self) -> None:
        super().__init__("Prompt")
        layout = QVBoxLayout(self)
        self.prompt = QPlainTextEdit()
        self.prompt.setObjectName("prompt")
        self.prompt.setPlaceholderText("What to paint, e.g. a misty alpine valley at dawn, highly detailed")
        self.prompt.setFixedHeight(70)
        self.negative = QPlainTextEdit()
        self.negative.setObjectName("negative_prompt")
        self.negative.setPlaceholderText("Negative prompt (what to avoid)")
        self.negative.setFixedHeight(48)
        layout.addWidget(self.prompt)
        layout.addWidget(self.negative)
        self.prompt.textChanged.connect(self._changed)
        self.negative.textChanged.connect(self._changed)

    def set_model(self, info: ModelInfo) -> None:
        self.setVisible(info.text)

    def values(self) -> dict[str, Any]:
        return {"prompt": self.prompt.toPlainText(), "negative_prompt": self.negative.toPlainText()}

    def show_values(self, v: FormValues) -> None:
        with self.showing():
            self.prompt.setPlainText(v.prompt)
            self.negative.setPlainText(v.negative_prompt)
