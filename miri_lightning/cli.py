"""The command line: LightningCLI with MIRI's rounds, checkpoints and logger wired in.

`python train.py --config configs/quickstart.yaml [--section.key value ...] [--ckpt_path PATH]`
"""

from __future__ import annotations

import os
import re
import sys
from argparse import ArgumentError
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import torch
import yaml
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger, WandbLogger
from lightning.pytorch.plugins import Precision
from lightning.pytorch.plugins.io import TorchCheckpointIO

from .callbacks import MIRIRounds, RoundCheckpoint, RoundProgressBar
from .checkpoints import CHECKPOINT_DIR, ROUND_FILENAME, AtomicCheckpointIO, check_resume
from .data.datamodule import MaskedImageDataModule
from .errors import ConfigError, MIRIError
from .io import check_writable
from .module import MIRI


# `--ckpt_path` values that Lightning resolves to a file itself (e.g. `last`: the newest last*.ckpt).
LIGHTNING_CKPT_KEYWORDS = ("last", "best", "hpc", "registry")


@dataclass
class LoggingConfig:
    """Where metrics and grids go, unless `trainer.logger` names a logger itself.

    Args:
        backend: `wandb` (offline when no API key is set: sync later with
            `wandb sync`), `tensorboard` or `csv`.
        project: W&B project.
        name: run name (default: the run folder's name).
    """

    backend: Literal["wandb", "tensorboard", "csv"] = "wandb"
    project: str = "miri-lightning"
    name: Optional[str] = None


def bf16_pays(accelerator) -> bool:
    """Whether bf16 autocast was measured faster than float32 on `accelerator` (a `trainer.accelerator` value).

    On a CPU with AVX512-BF16 or AMX it was: training 1.43x and
    re-imputation 1.56x the images/s, at the same MMD. On an H200 it was not:
    at our configs' sizes a training step is bound by kernel launches, not
    arithmetic, and autocast adds casts (training 0.92x, re-imputation 1.08x
    on CIFAR-10). Elsewhere bf16 is emulated. docs/performance.md has the runs.
    """
    if not isinstance(accelerator, str):
        return False
    if accelerator in ("gpu", "cuda", "mps"):
        return False
    if accelerator == "auto" and (torch.cuda.is_available() or torch.backends.mps.is_available()):
        return False  # "auto" picks the GPU
    if accelerator in ("auto", "cpu"):
        # torch.cpu's probes are private: a torch without them counts as no bf16.
        probes = (getattr(torch.cpu, name, lambda: False) for name in ("_is_avx512_bf16_supported",
                                                                      "_is_amx_tile_supported"))
        return torch.backends.mkldnn.is_available() and any(probe() for probe in probes)
    return False


def default_precision(accelerator, strategy="auto") -> str:
    """`trainer.precision` when the config leaves it unset: bf16 autocast where it was measured faster.

    Forking strategies get float32 without asking: `torch.cuda.is_available()`
    initialises CUDA's driver before the fork, which they cannot survive.
    """
    if isinstance(strategy, str) and strategy.startswith(("ddp_fork", "ddp_notebook")):
        return "32-true"
    return "bf16-mixed" if bf16_pays(accelerator) else "32-true"


def has_precision_plugin(plugins) -> bool:
    """Whether `trainer.plugins` already sets the precision (Lightning refuses it twice)."""
    plugins = plugins if isinstance(plugins, (list, tuple)) else [plugins]
    return any(isinstance(plugin, Precision) for plugin in plugins)


def wandb_has_key() -> bool:
    """Whether W&B can reach an account: an API key in the environment or in ~/.netrc."""
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return bool(os.environ.get("WANDB_API_KEY")) or (netrc.exists() and "api.wandb.ai" in netrc.read_text())


def make_logger(cfg: LoggingConfig, run_dir: str) -> Logger:
    """The configured logger, writing into the run folder."""
    name = cfg.name or Path(run_dir).name
    if cfg.backend == "tensorboard":
        return TensorBoardLogger(save_dir=run_dir, name="tensorboard", version=name)
    if cfg.backend == "csv":
        return CSVLogger(save_dir=run_dir, name="csv", version=name)
    offline = os.environ.get("WANDB_MODE") == "offline" or (
        "WANDB_MODE" not in os.environ and not wandb_has_key()
    )
    return WandbLogger(project=cfg.project, name=name, save_dir=run_dir, offline=offline)


class LogConfig(SaveConfigCallback):
    """Saves config.yaml in the run folder and sends the whole config to the loggers (offline W&B included)."""

    def save_config(self, trainer, pl_module, stage) -> None:
        for logger in trainer.loggers:
            logger.log_hyperparams({"config": self.config.as_dict()})


def read_config(path: str | Path) -> dict:
    """What a config file states, with the files it names (`config: other.yaml`, relative to it) under it.

    The shipped configs compose: a file that names another holds only what differs, as dotted keys
    (`rounds.num_rounds: 8`), each replacing one value, as `--config` reads them. This reads the stated
    values alone, without the defaults; `--print_config` gives the whole config.
    """
    path = Path(path)
    own = yaml.safe_load(path.read_text()) or {}
    if "config" in own and next(iter(own)) != "config":
        # --config applies the named file where the key stands: keys above it would be overridden by it.
        raise ConfigError(f"{path}: `config:` must be the first key, so that the file's own keys apply over it")
    parent = own.pop("config", None)
    merged = read_config(path.parent / parent) if parent else {}
    for key, value in own.items():
        *groups, last = key.split(".")
        node = merged
        for group in groups:
            node = node.setdefault(group, {})
        node[last] = value
    return merged


def fill_seeds(config, seed: int) -> None:
    """Give every seed the config leaves unset (`model.seed`, `data.seed`, the mask's) the run's
    `seed_everything`, so that one flag reproduces a run; a seed set in the config or on the command line stays.

    The parts of an `AnyOf` mask get the run's seed plus their position, so that two of a kind differ.
    The fills and miri-distill draw from named streams of their seed (`seeds.seed_stream`); the masks, the
    batch order and the training draws still seed from it directly (one scheme for all is open, issue 31).
    """
    for section in ("model", "data"):
        if config[section].get("seed") is None:
            config[section]["seed"] = seed
    _fill_mask_seed(config["data"].get("mask"), seed)


def _fill_mask_seed(mask, seed: int) -> None:
    args = getattr(mask, "init_args", None)
    if args is None:
        return
    if "seed" in args and args["seed"] is None:
        args["seed"] = seed
    for index, part in enumerate(args.get("mechanisms") or []):
        _fill_mask_seed(part, seed + index)


class MIRICLI(LightningCLI):
    """LightningCLI plus the `rounds`, `checkpoint` and `logging` sections and `--ckpt_path`."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--ckpt_path", type=Optional[str], default=None,
                            help="resume from this checkpoint (e.g. RUN/checkpoints/last.ckpt)")
        parser.add_class_arguments(LoggingConfig, "logging")
        parser.add_lightning_class_args(MIRIRounds, "rounds")
        parser.add_lightning_class_args(RoundCheckpoint, "checkpoint")
        parser.set_defaults({
            "trainer.default_root_dir": "checkpoints/miri",
            "trainer.num_sanity_val_steps": 0,
            # The rounds set how long the run trains (MIRIRounds.setup): no epoch limit of Lightning's.
            "trainer.max_epochs": -1,
            "checkpoint.filename": ROUND_FILENAME,
            "checkpoint.auto_insert_metric_name": False,
            "checkpoint.save_top_k": -1,
            "checkpoint.save_last": True,
            # A resumed run that redoes a round replaces that round's file instead of adding round002-v1.ckpt.
            "checkpoint.enable_version_counter": False,
            # Rounds end at epoch ends (RoundCheckpoint saves only those), not at validation ends.
            "checkpoint.every_n_epochs": 1,
            "checkpoint.save_on_train_epoch_end": True,
        })
        parser.link_arguments("trainer.default_root_dir", "checkpoint.dirpath",
                              compute_fn=lambda run_dir: str(Path(run_dir) / CHECKPOINT_DIR))

    def before_instantiate_classes(self) -> None:
        # Before any class is built or writes: a run that cannot save its outputs should not start training.
        config = self.config[self.subcommand] if self.subcommand else self.config
        check_writable(config["trainer"]["default_root_dir"], "trainer.default_root_dir")
        seed = config.get("seed_everything")
        fill_seeds(config, 0 if isinstance(seed, bool) or seed is None else seed)

    def instantiate_trainer(self, **kwargs):
        config = self.config_init[self.subcommand] if self.subcommand else self.config_init
        if config["trainer"].get("precision") is None and not has_precision_plugin(config["trainer"].get("plugins")):
            kwargs["precision"] = default_precision(config["trainer"].get("accelerator", "auto"),
                                                    config["trainer"].get("strategy", "auto"))
        # Before the logger opens a W&B run (or anything is written) for a run whose data cannot be read.
        self.datamodule.source.check()
        if config["trainer"].get("logger") is None:
            kwargs["logger"] = make_logger(config["logging"], config["trainer"]["default_root_dir"])
        trainer = super().instantiate_trainer(**kwargs)
        # Lightning's default bar, when it is on, becomes one that shows the round.
        trainer.callbacks = [RoundProgressBar() if type(cb) is TQDMProgressBar else cb for cb in trainer.callbacks]
        # Checkpoints are written whole or not at all, unless the config names a checkpoint plugin of its own.
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        return trainer


def wrapped_miri_error(err: Optional[BaseException]) -> Optional[MIRIError]:
    """The MIRIError behind `err`: jsonargparse wraps what a class raises while it instantiates it."""
    while err is not None and not isinstance(err, MIRIError):
        err = err.__cause__ or err.__context__
    return err


# Keys that moved, so that an older config gets the new name in its error, not only "unrecognized".
RENAMED_KEYS = {"model.lr": "model.optimizer.lr", "model.weight_decay": "model.optimizer.weight_decay",
                "model.warmup_steps": "model.optimizer.warmup_steps",
                "model.final_lr_ratio": "model.optimizer.final_lr_ratio",
                "model.restart_optimizer": "model.optimizer.restart_each_round",
                "model.fused_adamw": "model.optimizer.fused",
                "data.init_fill": "data.fill.kind", "data.fill_sigma": "data.fill.sigma",
                "data.fill_noise": "data.fill.noise", "data.fill_noise_scale": "data.fill.noise_scale",
                "data.fill_keep": "data.fill.keep"}


def _with_renames(message: str) -> str:
    # jsonargparse names a key as "--model.lr" (command line) or "Group 'model' does not accept option 'lr'" (YAML).
    keys = set(re.findall(r"[\w.]+", message))
    keys |= {f"{group}.{option}" for group, option in re.findall(r"Group '([\w.]+)' does not accept option '(\w+)'",
                                                                 message)}
    return "; ".join([message, *(f"{old} is now {new}" for old, new in RENAMED_KEYS.items() if old in keys)])


def build_cli(args: Optional[list[str]] = None) -> MIRICLI:
    """Parse the command line and build the model, data and trainer; bad keys or values raise a MIRIError."""
    try:
        # seed_everything 0 when unset, not a random seed: it seeds the masks, the data and the model too
        # (fill_seeds), so a run must be reproducible, and resumable, from its command line.
        return MIRICLI(MIRI, MaskedImageDataModule, run=False, args=args, save_config_callback=LogConfig,
                       seed_everything_default=0,
                       save_config_kwargs={"overwrite": True}, subclass_mode_model=False,
                       subclass_mode_data=False, parser_kwargs={"exit_on_error": False})
    except ArgumentError as err:  # an unknown key or a value of the wrong type: one line, not the usage
        raise ConfigError(_with_renames(" ".join(str(err).split()))) from err
    except ValueError as err:
        cause = wrapped_miri_error(err)
        if cause is None:
            raise
        raise cause from None  # the message of the class itself, not jsonargparse's summary of it


def main(args: Optional[list[str]] = None) -> None:
    """Parse the command line, then train (resuming from `--ckpt_path` when given)."""
    try:
        cli = build_cli(args)
        ckpt_path = cli.config.ckpt_path
        if ckpt_path and ckpt_path not in LIGHTNING_CKPT_KEYWORDS:
            check_resume(ckpt_path, cli.model.hparams["net"])
        # weights_only: a checkpoint holds only tensors and plain values, so loading it runs no pickled code.
        cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt_path, weights_only=True)
    except MIRIError as err:
        sys.exit(f"error: {err}")
