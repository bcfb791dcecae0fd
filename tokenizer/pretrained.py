"""Save and load a torch model as `config.json` + `model.safetensors`: no pickle anywhere."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_model, save_model

from tokworld.errors import TokWorldError

CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"


class SafetensorsPretrained:
    """Mixin for an `nn.Module` built as `cls(config)` from a config with `to_dict`/`from_dict`.

    Subclasses set `config_class`, `model_type` (stored in `config.json`) and `name` (used in
    error messages).
    """

    config_class: type
    model_type: str
    name: str

    def save_pretrained(self, directory: str | Path) -> None:
        """Write `config.json` and `model.safetensors` (weights and buffers)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        payload = {"model_type": self.model_type, **self.config.to_dict()}
        (directory / CONFIG_NAME).write_text(json.dumps(payload, indent=2))
        save_model(self, str(directory / WEIGHTS_NAME))

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str = "cpu"):
        """Load what `save_pretrained` wrote, bit-exactly, in eval mode."""
        directory = Path(directory)
        config_file, weights = directory / CONFIG_NAME, directory / WEIGHTS_NAME
        if not config_file.is_file():
            raise TokWorldError(f"{directory} is not a {cls.name}: no {CONFIG_NAME}")
        if not weights.is_file():
            raise TokWorldError(f"{cls.name} checkpoint {directory} has no {WEIGHTS_NAME}")
        try:
            data = json.loads(config_file.read_text())
        except ValueError as e:
            raise TokWorldError(f"cannot read {config_file}: {e}") from None
        data.pop("model_type", None)
        model = cls(cls.config_class.from_dict(data))
        try:
            load_model(model, str(weights), device=device)
        except (SafetensorError, OSError, RuntimeError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise TokWorldError(f"cannot load weights {weights}: {first}") from None
        return model.to(device).eval()
