"""Fine-tuning SAM 2 on the user's own annotations (the data engine), Qt-free.

:func:`train` is the entry point (``ns.train``, ``napari-sam2 train``). Its contract is Meta's
``training`` package in the sam2 1.1.0 wheel: prompts simulated as ``SAM2Train`` does
(:mod:`.prompts`), the same forward through our network (:mod:`.forward`) and the loss of
``MultiStepMultiMasksAndIous`` (:mod:`.loss`), proven by loss and gradient parity tests. The
output is always an official-format checkpoint with a JSON sidecar.
"""

from .loop import DEFAULT_LR, TrainReport, state_path, train
from .optim import TRAIN_MODES
from .prompts import PromptSettings

__all__ = ["DEFAULT_LR", "TRAIN_MODES", "PromptSettings", "TrainReport", "state_path", "train"]
