"""Checkpoint files: named, written atomically, read without running pickled code, checked before a run resumes.

`checkpoint["miri"]["format"]` records the layout of what MIRI stores in a
checkpoint; a resume refuses any other format with a message instead of
failing half-way through restoring it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch.callbacks import ModelCheckpoint

from .errors import DataError, TrainingError
from .io import atomic_path

# Bump when the contents of checkpoint["miri"] or the datamodule's state change meaning. Format 2: rounds are
# counted in steps. Format 1 files marked `epoch_is_round` hold the same and resume; unmarked ones counted a
# round in epochs and are read for imputing only.
CHECKPOINT_FORMAT = 2
READABLE_FORMATS = (1, 2)
# Where train.py keeps a run's checkpoints, and the ModelCheckpoint filename of a round's (`checkpoint.dirpath`
# and `checkpoint.filename` by default): RUN/checkpoints/round001.ckpt, round002.ckpt, ... and last.ckpt.
CHECKPOINT_DIR = "checkpoints"
ROUND_FILENAME = "round{round:03.0f}"
# A key that only the datamodule's state holds. Lightning files that state under the datamodule class's name,
# which a subclass or a rename changes: the state is found by this key instead.
DATA_STATE_MARK = "masks_sha1"


def run_checkpoint(run: str | os.PathLike, t: Optional[int] = None) -> Path:
    """Round t's checkpoint in a train.py run folder, or its last.ckpt when `t` is None."""
    name = ModelCheckpoint.CHECKPOINT_NAME_LAST if t is None else ROUND_FILENAME.format(round=t)
    return Path(run) / CHECKPOINT_DIR / (name + ModelCheckpoint.FILE_EXTENSION)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's `torch.save` checkpoints, written to a temporary file beside the target and renamed.

    Lightning writes the final name in place (through a temporary file in the
    system's temp folder, then a copy), so a kill or a full disk mid-write can
    leave a torn `last.ckpt`; here the previous file stays whole until the new
    one is complete. Remote paths (s3://, ...) keep Lightning's behaviour.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None or not _is_local_file_protocol(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)


def check_finite_weights(state_dict: dict[str, torch.Tensor]) -> None:
    """Refuse to checkpoint NaN or infinite weights: a resume from them could only fail again."""
    for name, value in state_dict.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise TrainingError(f"the weight {name} holds NaN or infinite values: no checkpoint written "
                                "(the last one on disk is kept)")


def read_checkpoint(path: str | os.PathLike, mmap: bool = False) -> dict:
    """A checkpoint or export as a dict (tensors memory-mapped if `mmap`), or a DataError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"checkpoint {path} does not exist")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # torch raises many types for truncated or foreign files
        raise DataError(f"{path} is not a readable miri-lightning checkpoint (truncated or another format): "
                        f"{str(err).strip().splitlines()[0]}") from err
    if not isinstance(data, dict):
        raise DataError(f"{path} is not a miri-lightning checkpoint: it holds a {type(data).__name__}")
    return data


def miri_state(data: dict, path: str | os.PathLike) -> dict:
    """`checkpoint["miri"]` of a checkpoint that `train.py` wrote in this format, or a DataError naming the file."""
    if "pytorch-lightning_version" not in data or "state_dict" not in data:
        raise DataError(f"{path} is not a miri-lightning checkpoint: it is not a Lightning checkpoint at all")
    state = data.get("miri")
    if not isinstance(state, dict):
        raise DataError(f"{path} is not a miri-lightning checkpoint: a Lightning checkpoint of another program "
                        "(no MIRI state in it)")
    found = state.get("format", 1)  # checkpoints from before the format was recorded have format 1's layout
    if found not in READABLE_FORMATS:
        raise DataError(f"{path} is miri-lightning checkpoint format {found}; this version of miri-lightning "
                        f"reads formats {' and '.join(map(str, READABLE_FORMATS))}")
    return state


def data_state(data: dict, path: str | os.PathLike) -> dict:
    """The datamodule's state in a checkpoint (the round, the masks' digest, round 0's fill, the imputations),
    found by what it holds rather than by the datamodule class's name; or a DataError naming the file."""
    states = [value for value in data.values() if isinstance(value, dict) and DATA_STATE_MARK in value]
    if len(states) != 1:
        raise DataError(f"{path} is not a miri-lightning checkpoint: it holds {len(states)} MaskedImageDataModule "
                        "states, not one")
    return states[0]


def check_resume(path: str | os.PathLike, net: dict) -> None:
    """Refuse, before any training, a `--ckpt_path` this run cannot resume from; `net` is this run's `model.net`.

    The file is memory-mapped, so the check reads little of a large checkpoint.
    """
    data = read_checkpoint(path, mmap=True)
    state = miri_state(data, path)
    if state.get("format", 1) == 1 and not state.get("epoch_is_round"):
        # Its epoch counter counts epochs of epoch-counted rounds: resumed here it would run the wrong rounds.
        raise DataError(f"{path} was written when a round was counted in epochs (rounds.epochs_per_round); this "
                        "version counts a round in steps and cannot resume it: start afresh (new images can still "
                        "be imputed with it)")
    saved = data.get("hyper_parameters", {}).get("net")
    if json.loads(json.dumps(saved)) != json.loads(json.dumps(net)):  # tuples and lists compare alike
        raise DataError(f"{path} holds a network with model.net {saved}, this run builds {net}: "
                        "resume with the model.net settings of the run that wrote it")


def as_config(cls, value):
    """`value`, or the dataclass `cls` made from it where it is a dict of its fields (as checkpoints store it)."""
    return value if isinstance(value, cls) else cls(**value)
