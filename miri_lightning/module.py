"""The LightningModule: MIRI's rectified-flow training, EMA weights, the ODE solve, the per-round weights."""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict
from typing import Literal, Optional, Union

import torch
from lightning.pytorch import LightningModule

from .checkpoints import CHECKPOINT_FORMAT, as_config, check_finite_weights
from .ema import EMA
from .errors import ConfigError
from .flow import SolverConfig, derangement, heldout_loss, missing_mse, random_window, solve_batches, training_pair
from .models.unet import UNetConfig, VelocityUNet, check_train_crop
from .optim import OptimizerConfig, adamw, restart, warmup_cosine
from .seeds import given_seed
from .step_guard import StepGuard

# torch.compile's modes (`model.compile`; the first steps and solves then take a while to compile, and on a
# CPU the run is slower in all: docs/performance.md). "reduce-overhead" puts the training network in CUDA
# graphs, for GPUs where a step is bound by kernel launches; the solve's EMA copy takes the twin without them:
# a solver holds several network outputs at once, which graph replays would overwrite.
CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]
WITHOUT_CUDA_GRAPHS = {"reduce-overhead": "default", "max-autotune": "max-autotune-no-cudagraphs"}


def compile_modes(compile: Union[bool, str]) -> Optional[tuple[str, str]]:
    """`model.compile` as torch.compile modes for (the training network, the solve's EMA copy), or None."""
    if compile is False:
        return None
    mode = "default" if compile is True else compile
    return mode, WITHOUT_CUDA_GRAPHS.get(mode, mode)


class MIRI(LightningModule):
    """Trains the velocity field of the current round and re-imputes with its EMA weights.

    Args:
        net: the U-Net's shape (`UNetConfig`); it is built for the data's `image_shape`.
        optimizer: AdamW, its learning-rate schedule and its restarts (`OptimizerConfig`).
        solver: how the re-imputation ODE is solved (`SolverConfig`).
        ema_decay: decay of the weights' moving average, which re-imputes and is what each round keeps.
        max_bad_steps: NaN or infinite losses in a row that stop the run (such steps are skipped: `StepGuard`).
        train_crop: train on random windows of this side instead of whole images (the solve takes whole images).
        channels_last: keep weights and activations in NHWC layout, which convolutions prefer (docs/performance.md).
        compile: `torch.compile` the network and its EMA copy: `true` (torch's "default" mode) or a mode name.
        seed: seed of the network's initialisation and of the training draws (partners, tau, windows); unset,
            `seed_everything`'s under train.py (`cli.fill_seeds`), else 0.
        loss_entries: where the loss is taken: `missing`, every entry missing in the image (the paper's), or
            `partner_observed`, only those the partner observed, where the target x1 is data rather than the
            previous round's imputation.
        image_shape: (C, H, W) of the images; taken from the datamodule when left out.
    """

    def __init__(
        self,
        net: UNetConfig = UNetConfig(),
        optimizer: OptimizerConfig = OptimizerConfig(),
        solver: SolverConfig = SolverConfig(),
        ema_decay: float = 0.999,
        max_bad_steps: int = 3,
        train_crop: Optional[int] = None,
        channels_last: bool = True,
        compile: Union[bool, CompileMode] = False,
        seed: Optional[int] = None,
        image_shape: Optional[tuple[int, int, int]] = None,
        loss_entries: Literal["missing", "partner_observed"] = "missing",
    ):
        super().__init__()
        self.net_config, self.optimizer_config = as_config(UNetConfig, net), as_config(OptimizerConfig, optimizer)
        self.solver = as_config(SolverConfig, solver)
        if not 0 <= ema_decay < 1:
            raise ConfigError(f"model.ema_decay must be in [0, 1), got {ema_decay}")
        # Plain dicts: loading a checkpoint then needs no pickled classes.
        self.save_hyperparameters(
            {"net": asdict(self.net_config), "optimizer": asdict(self.optimizer_config),
             "solver": asdict(self.solver), "ema_decay": ema_decay, "max_bad_steps": max_bad_steps,
             "train_crop": train_crop, "channels_last": channels_last, "compile": compile,
             "seed": given_seed("model.seed", seed),
             "image_shape": image_shape, "loss_entries": loss_entries}
        )
        self.guard = StepGuard(max_bad_steps)
        self.velocity: Optional[VelocityUNet] = None
        self.ema: Optional[EMA] = None
        self.round_weights: list[dict[str, torch.Tensor]] = []  # EMA weights of rounds 1..T, on the CPU
        self.round_start_step = 0  # the optimiser's last restart, where its warm-up starts
        self.solve_fits = 2**62  # the largest solve batch known to fit in device memory
        self._training_over = False  # end_round_training was called this epoch
        if image_shape is not None:
            self._build(tuple(image_shape))

    # -- network ----------------------------------------------------------

    def _build(self, shape: tuple[int, int, int]) -> None:
        channels, height, width = shape
        if height != width:
            raise ConfigError(f"images must be square for the U-Net, got {height}x{width}")
        self.hparams["image_shape"] = shape
        check_train_crop(self.net_config, self.hparams.train_crop, height)
        self.velocity = VelocityUNet(channels, height, self.net_config)
        self.velocity.reset_parameters(seed=self.hparams.seed)
        self.velocity.to(memory_format=self.memory_format)
        self.ema = EMA(self.velocity, self.hparams.ema_decay)
        modes = compile_modes(self.hparams.compile)
        if modes:  # in place: state_dict keys stay those of the plain modules
            self.velocity.compile(mode=modes[0])
            self.ema.module.compile(mode=modes[1])

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.hparams.channels_last else torch.contiguous_format

    def configure_model(self) -> None:
        modes = compile_modes(self.hparams.compile)
        if modes and modes[0] in WITHOUT_CUDA_GRAPHS and self.trainer.accumulate_grad_batches > 1:
            # Each replay of the backward graph writes the gradients into the same memory.
            raise ConfigError(
                f"model.compile {modes[0]} trains in CUDA graphs, which cannot accumulate gradients: set "
                f"trainer.accumulate_grad_batches to 1 (it is {self.trainer.accumulate_grad_batches}) "
                f"or model.compile to {modes[1]}"
            )
        if self.velocity is None:
            self._build(tuple(self.trainer.datamodule.image_shape))

    def start_round(self, index: int, fresh: bool) -> None:
        """Prepare round `index`: a fresh network (the paper's choice) or keep training (warm start);
        fresh optimiser moments and a new warm-up unless `optimizer.restart_each_round` is off for a warm start."""
        if fresh:
            self.velocity.reset_parameters(seed=self.hparams.seed + 7919 * index)
            self.ema.n_averaged.zero_()  # the next EMA update copies the fresh weights
        if fresh or self.optimizer_config.restart_each_round:
            self.round_start_step = self.global_step
            restart(self.trainer.optimizers, [config.scheduler for config in self.trainer.lr_scheduler_configs])

    def finish_round(self) -> None:
        """Keep this round's EMA weights: imputing new images later replays v_1 ... v_T."""
        self.round_weights.append({k: v.detach().cpu().clone() for k, v in self.ema.module.state_dict().items()})

    # -- training ---------------------------------------------------------

    def end_round_training(self) -> None:
        """Skip the rest of this epoch, the round's training (MIRIRounds, once it has converged): Lightning
        ends an epoch early only when the module's `on_train_batch_start` returns -1."""
        self._training_over = True

    def on_train_epoch_start(self) -> None:
        self._training_over = False
        # A generator of our own: no other code's use of the global RNG can shift these draws, and they depend only
        # on (seed, epoch, rank), so a resumed run draws what an uninterrupted one would. (Dropout, off by
        # default, draws from the global RNG and is not replayed exactly.)
        seed = (self.hparams.seed * 1_000_003 + self.current_epoch * 1009 + self.global_rank) % 2**63
        self.draws = torch.Generator(device=self.device).manual_seed(seed)
        self.windows = torch.Generator().manual_seed(seed)  # train_crop's corners

    def on_train_batch_start(self, batch, batch_idx):
        return -1 if self._training_over else None

    def training_step(self, batch, batch_idx):
        _, x0, m = batch
        if self.hparams.train_crop:  # one window a batch, the same for images and partners
            x0, m = random_window(x0, m, self.hparams.train_crop, self.windows)
        x0, m = x0.contiguous(memory_format=self.memory_format), m.to(x0.dtype, memory_format=self.memory_format)
        partner = derangement(len(x0), generator=self.draws)  # partners independent of the images
        x1 = x0[partner]
        tau = torch.rand(len(x0), device=x0.device, generator=self.draws)
        a, b, target = training_pair(x0, x1, m, tau)
        m1 = m[partner] if self.hparams.loss_entries == "partner_observed" else None
        loss = missing_mse(self.velocity(a, b, m, tau), target, m, m1)
        self.guard.watch(loss)
        return loss  # back-propagated even when bad: under DDP every rank must join the gradient all-reduce

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        """Lightning's step, except that the guard skips an update spoilt by a bad loss; then the EMA's update.

        Lightning runs the closure (forward, backward) inside `optimizer.step`,
        too late to skip; here it runs first.
        """
        loss = optimizer_closure()
        skipped = self.guard.step(optimizer, loss, scaler=getattr(self.trainer.precision_plugin, "scaler", None))
        self.ema.update_parameters(self.velocity, skip=skipped)
        # Lightning logs after the step when (its steps before it + 1) divide by log_every_n_steps; it reads then.
        every = self.trainer.log_every_n_steps
        if every and (self.global_step + 1) % every == 0:
            loss = self.guard.report(self.current_epoch, self.global_step)  # the one host read
            if math.isfinite(loss):
                self.log("train/loss", torch.tensor(loss))  # a host tensor: logging it reads nothing more

    def on_train_epoch_end(self) -> None:
        loss = self.guard.epoch_loss()
        if loss is not None:
            self.log("train/loss_epoch", loss, sync_dist=True)

    def configure_optimizers(self):
        optimizer = adamw(self.velocity.parameters(), self.optimizer_config, self.trainer.precision_plugin,
                          self.trainer.gradient_clip_val)
        factor = warmup_cosine(self.optimizer_config, self.trainer.estimated_stepping_batches,
                               lambda: self.round_start_step)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    # -- imputation -------------------------------------------------------

    def impute(self, images: torch.Tensor, masks: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """One solve of the current round's ODE with the EMA weights, in batches; returns CPU tensors.

        The solve runs in the trainer's precision (e.g. bf16 autocast under
        `trainer.precision: bf16-mixed`); observed entries are copied, not computed.
        """
        with self._ema_in_eval() as (net, context):
            out, self.solve_fits = solve_batches(net, images, masks, self.solver, min(batch_size, self.solve_fits),
                                                 self.device, context, self.memory_format)
        return out

    def heldout_loss(self, images: torch.Tensor, masks: torch.Tensor, batch_size: int = 256) -> float:
        """The EMA velocity's flow-matching loss on held-out images, with the same draws at every call."""
        with self._ema_in_eval() as (net, context):
            return heldout_loss(net, images.contiguous(memory_format=self.memory_format),
                                masks.contiguous(memory_format=self.memory_format), batch_size, self.device,
                                seed=self.hparams.seed, context=context,
                                partner_observed=self.hparams.get("loss_entries") == "partner_observed")

    @contextlib.contextmanager
    def _ema_in_eval(self):
        """The EMA network in eval mode, and the trainer's precision context (autocast) to run it in."""
        net = self.ema.module
        was_training = net.training
        net.eval()
        try:
            yield net, self.trainer.precision_plugin.forward_context if self._trainer else contextlib.nullcontext
        finally:
            net.train(was_training)

    # -- checkpoint -------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        check_finite_weights(checkpoint["state_dict"])
        checkpoint["miri"] = {"format": CHECKPOINT_FORMAT, "round_weights": self.round_weights,
                              "round_start_step": self.round_start_step}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("miri", {})
        self.round_weights = list(state.get("round_weights", []))
        self.round_start_step = int(state.get("round_start_step", 0))
