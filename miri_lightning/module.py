"""The LightningModule: MIRI's rectified-flow training, EMA weights, the ODE solve, the per-round weights."""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict
from typing import Literal, Optional, Union

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.plugins import MixedPrecision
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from .checkpoints import CHECKPOINT_FORMAT
from .ema import EMA
from .errors import ConfigError, TrainingError
from .flow import SolverConfig, derangement, heldout_loss, missing_mse, solve_batches, training_pair
from .models.unet import UNetConfig, VelocityUNet
from .step_guard import StepGuard

# torch.compile's modes (`model.compile`). The solve's EMA copy takes the twin without CUDA graphs.
CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]
WITHOUT_CUDA_GRAPHS = {"reduce-overhead": "default", "max-autotune": "max-autotune-no-cudagraphs"}


def compile_modes(compile: Union[bool, str]) -> Optional[tuple[str, str]]:
    """`model.compile` as torch.compile modes for (the training network, the solve's EMA copy), or None."""
    if compile is False:
        return None
    mode = "default" if compile is True else compile
    return mode, WITHOUT_CUDA_GRAPHS.get(mode, mode)


def random_window(x: torch.Tensor, m: torch.Tensor, size: int, generator: torch.Generator):
    """The same random `size` x `size` window of every image of a batch and of its mask (`generator` on the CPU:
    drawing the corner reads nothing from the device).

    The corner is drawn from `-(size - 1)` to `side - 1` and then moved inside
    the image, so that an edge pixel is in a window about as often as any other
    (between 1 and 2 times the middle's rate). A corner drawn inside the image
    puts an edge pixel in a window `size` times less often than a middle one:
    the network barely learns the image's edge, and the solve biases it.
    """
    top, left = (min(max(int(torch.randint(1 - size, side, (1,), generator=generator)), 0), side - size)
                 for side in x.shape[-2:])
    return x[..., top:top + size, left:left + size], m[..., top:top + size, left:left + size]


class MIRI(LightningModule):
    """Trains the velocity field of the current round and re-imputes with its EMA weights.

    Args:
        net: shape of the U-Net (see `UNetConfig`).
        lr: AdamW learning rate (batch size is per device, and so is this rate:
            it is not scaled with the number of devices).
        weight_decay: AdamW weight decay.
        warmup_steps: linear learning-rate warm-up, at the start of training and
            again at the start of each round whose optimiser restarts.
        restart_optimizer: start every round with fresh AdamW moments (and a
            new warm-up), also when the network is warm-started. A new round's
            collection brings larger gradients than the last one's end, and
            moments shrunk to those turn them into steps many times the
            learning rate, which can wreck a warm-started network
            (docs/2026-12-02-natural-images.md). A re-initialised network
            always restarts its optimiser.
        final_lr_ratio: the learning rate follows a cosine from `lr` down to
            `lr * final_lr_ratio` over the whole run (1.0: constant). With warm
            start this lets later rounds settle instead of drifting.
        ema_decay: decay of the exponential moving average of the weights; the
            EMA weights do the re-imputation and are what each round keeps.
        max_bad_steps: NaN or infinite losses in a row that stop the run (see `StepGuard`: such steps are skipped).
        solver: how the re-imputation ODE is solved.
        channels_last: keep weights and activations in NHWC layout, which the
            convolution kernels prefer (measured on a CPU: training steps 9 %
            and solves 10 % faster, docs/performance.md).
        compile: `torch.compile` the velocity field and its EMA copy (the
            first steps and solves then take a while to compile; on a CPU
            slower in all, see docs/performance.md). `true` is torch's
            "default" mode; a mode name picks another. "reduce-overhead" puts
            the training network in CUDA graphs, for GPUs where a step is
            bound by kernel launches; the solve's EMA copy is compiled without
            them (a solver holds several network outputs at once, which CUDA
            graphs would overwrite).
        fused_adamw: AdamW's fused kernel, one launch per step instead of
            several per parameter group.
        train_crop: train on random `train_crop` x `train_crop` windows of
            each batch (one window per batch, the same for images and
            partners) instead of whole images. The U-Net is convolutional, so
            the velocity learnt on crops applies to whole images: the
            re-imputation and the held-out loss use whole images. A step then
            costs about (crop / side)^2 of a whole image's.
        seed: seed of the network initialisation and of the training draws
            (partners, tau), which depend only on (seed, epoch, rank) so that a
            resumed run draws what an uninterrupted one would. (Dropout, off
            by default, draws from the global RNG and is not replayed exactly.)
        image_shape: (C, H, W); filled in from the datamodule when left out.
    """

    def __init__(
        self,
        net: Union[UNetConfig, dict] = UNetConfig(),
        lr: float = 2e-4,
        weight_decay: float = 0.0,
        warmup_steps: int = 100,
        restart_optimizer: bool = True,
        final_lr_ratio: float = 1.0,
        ema_decay: float = 0.999,
        max_bad_steps: int = 3,
        solver: Union[SolverConfig, dict] = SolverConfig(),
        channels_last: bool = True,
        compile: Union[bool, CompileMode] = False,
        fused_adamw: bool = True,
        train_crop: Optional[int] = None,
        seed: int = 0,
        image_shape: Optional[tuple[int, int, int]] = None,
    ):
        super().__init__()
        # Checkpoints store plain dicts, so that loading them needs no pickled classes.
        net = net if isinstance(net, UNetConfig) else UNetConfig(**net)
        solver = solver if isinstance(solver, SolverConfig) else SolverConfig(**solver)
        for key, value, ok, expected in (("lr", lr, lr > 0, "> 0"),
                                         ("warmup_steps", warmup_steps, warmup_steps >= 0, ">= 0"),
                                         ("final_lr_ratio", final_lr_ratio, 0 < final_lr_ratio <= 1, "in (0, 1]"),
                                         ("ema_decay", ema_decay, 0 <= ema_decay < 1, "in [0, 1)")):
            if not ok:
                raise ConfigError(f"model.{key} must be {expected}, got {value}")
        self.save_hyperparameters(
            {"net": asdict(net), "lr": lr, "weight_decay": weight_decay, "warmup_steps": warmup_steps,
             "restart_optimizer": restart_optimizer, "final_lr_ratio": final_lr_ratio, "ema_decay": ema_decay,
             "max_bad_steps": max_bad_steps, "solver": asdict(solver), "channels_last": channels_last,
             "compile": compile, "fused_adamw": fused_adamw, "train_crop": train_crop, "seed": seed,
             "image_shape": image_shape}
        )
        self.net_config, self.solver = net, solver
        self.velocity: Optional[VelocityUNet] = None
        self.ema: Optional[EMA] = None
        self.round_weights: list[dict[str, torch.Tensor]] = []  # EMA weights of rounds 1..T, on the CPU
        self.round_start_step = 0
        self.guard = StepGuard(max_bad_steps)
        self.solve_fits = 2**62  # the largest solve batch known to fit in device memory
        self.round_converged = False  # set by MIRIRounds: end this round's training now
        if image_shape is not None:
            self._build(tuple(image_shape))

    # -- network ----------------------------------------------------------

    def _build(self, shape: tuple[int, int, int]) -> None:
        channels, height, width = shape
        if height != width:
            raise ConfigError(f"images must be square for the U-Net, got {height}x{width}")
        self.hparams["image_shape"] = shape
        crop, halvings = self.hparams.get("train_crop"), 2 ** (len(self.net_config.channel_mults) - 1)
        if crop is not None and not (0 < crop <= height and crop % halvings == 0):
            raise ConfigError(f"model.train_crop must be a multiple of {halvings} (the U-Net halves it "
                              f"{halvings.bit_length() - 1} times) and at most the image side {height}, got {crop}")
        spans = [key for key, on in (("norm: group", self.net_config.norm == "group"),
                                     ("mid_attention: true", self.net_config.mid_attention),
                                     ("attention_resolutions", self.net_config.attention_resolutions)) if on]
        if crop is not None and crop < height and spans:
            rank_zero_warn(f"MIRI: model.train_crop {crop} with model.net {' and '.join(spans)}: these layers see "
                           f"a {crop}x{crop} window in training but the whole {height}x{height} image in the solve, "
                           "which biases every imputation alike; set model.net.norm: pixel, model.net.mid_attention: "
                           "false and no model.net.attention_resolutions (docs/2026-12-02-shared-error.md)")
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
        fresh optimiser moments and a new warm-up unless `restart_optimizer` is off for a warm start."""
        if fresh:
            self.velocity.reset_parameters(seed=self.hparams.seed + 7919 * index)
            self.ema.n_averaged.zero_()  # the next EMA update copies the fresh weights
        if fresh or self.hparams.restart_optimizer:
            for optimizer in self.trainer.optimizers:
                optimizer.state.clear()
            self.round_start_step = self.global_step
            # The schedule set the next step's rate before the round ended: set it again, from the warm-up.
            for config in self.trainer.lr_scheduler_configs:
                schedule = config.scheduler
                schedule._last_lr = [base * rate(schedule.last_epoch)
                                     for base, rate in zip(schedule.base_lrs, schedule.lr_lambdas)]
                for group, lr in zip(schedule.optimizer.param_groups, schedule._last_lr):
                    group["lr"] = lr

    def finish_round(self) -> None:
        """Keep this round's EMA weights: imputing new images later replays v_1 ... v_T."""
        self.round_weights.append({k: v.detach().cpu().clone() for k, v in self.ema.module.state_dict().items()})

    # -- training ---------------------------------------------------------

    def on_train_epoch_start(self) -> None:
        # A generator of our own: no other code's use of the global RNG can shift these draws.
        seed = (self.hparams.seed * 1_000_003 + self.current_epoch * 1009 + self.global_rank) % 2**63
        self.draws = torch.Generator(device=self.device).manual_seed(seed)
        self.windows = torch.Generator().manual_seed(seed)  # train_crop's corners

    def on_train_batch_start(self, batch, batch_idx):
        # An epoch is a round's training: -1 ends it early, once MIRIRounds finds the velocity converged.
        return -1 if self.round_converged else None

    def training_step(self, batch, batch_idx):
        _, x0, m = batch
        if self.hparams.get("train_crop"):
            x0, m = random_window(x0, m, self.hparams.train_crop, self.windows)
        x0, m = x0.contiguous(memory_format=self.memory_format), m.to(x0.dtype, memory_format=self.memory_format)
        x1 = x0[derangement(len(x0), generator=self.draws)]  # partners independent of the images
        tau = torch.rand(len(x0), device=x0.device, generator=self.draws)
        a, b, target = training_pair(x0, x1, m, tau)
        loss = missing_mse(self.velocity(a, b, m, tau), target, m)
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
        optimizer = torch.optim.AdamW(self.velocity.parameters(), lr=self.hparams.lr,
                                      weight_decay=self.hparams.weight_decay, fused=self._fused_adamw())
        warmup = max(1, self.hparams.warmup_steps)
        total = max(1, self.trainer.estimated_stepping_batches)
        low = self.hparams.final_lr_ratio

        def factor(step: int) -> float:
            cosine = low + (1 - low) * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
            return min(1.0, (step - self.round_start_step + 1) / warmup) * cosine

        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def _fused_adamw(self) -> bool:
        """`fused_adamw`, unless gradients are clipped under mixed precision.

        Lightning's mixed-precision plugin will not clip for an optimiser that
        unscales gradients itself, as the fused kernel does.
        """
        mixed = isinstance(self.trainer.precision_plugin, MixedPrecision)
        if self.hparams.fused_adamw and mixed and self.trainer.gradient_clip_val:
            rank_zero_info("MIRI: gradient clipping under mixed precision needs the unfused AdamW; using it")
            return False
        return self.hparams.fused_adamw

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
                                seed=self.hparams.seed, context=context)

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
        self._check_finite(checkpoint["state_dict"])
        # epoch_is_round: one epoch trains one round (rounds.steps); older files counted rounds in epochs.
        checkpoint["miri"] = {"format": CHECKPOINT_FORMAT, "round_weights": self.round_weights,
                              "round_start_step": self.round_start_step, "epoch_is_round": True}

    @staticmethod
    def _check_finite(state_dict: dict[str, torch.Tensor]) -> None:
        """Refuse to checkpoint NaN or infinite weights: a resume from them could only fail again."""
        for name, value in state_dict.items():
            if value.is_floating_point() and not torch.isfinite(value).all():
                raise TrainingError(f"the weight {name} holds NaN or infinite values: no checkpoint written "
                                    "(the last one on disk is kept)")

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("miri", {})
        self.round_weights = list(state.get("round_weights", []))
        self.round_start_step = int(state.get("round_start_step", 0))
