"""Lightning callbacks of an estimation run: its progress bar, and what happens when it fails.

- :class:`SampleProgressBar` counts Jacobians per training sample (the real work of a fit), instead
  of Lightning's bar over batches, which ends at ``0.00it/s`` on a one-step epoch.
- :class:`FailedRunCleanup` makes a failed run leave nothing that looks complete: a SIGTERM stops
  the run at once with exit code 143 (Lightning would otherwise finish the epoch and exit 0), and a
  run that fails removes the run folder it created.
- :func:`sigint_raises_run_interrupted` makes Ctrl-C stop a sweep with exit code 130 and a message,
  inside a fit too (Lightning turns a ``KeyboardInterrupt`` there into a silent exit 1).
"""

from __future__ import annotations

import contextlib
import math
import shutil
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback, ProgressBar
from tqdm.auto import tqdm


class SampleProgressBar(ProgressBar):
    """One bar over the training samples of global rank 0 (validation reuses cached states: instant)."""

    def __init__(self) -> None:
        super().__init__()
        self._enabled = True
        self._bar: tqdm | None = None

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not (self._enabled and trainer.is_global_zero):
            return
        samples = len(trainer.train_dataloader.dataset)
        world = trainer.world_size
        description = "Jacobians" if world == 1 else f"Jacobians (rank 0 of {world})"
        self._bar = tqdm(
            total=math.ceil(samples / world), desc=description, unit="sample", dynamic_ncols=True
        )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if self._bar is not None:
            self._bar.update(len(batch))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._close()

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class RunTerminated(SystemExit):
    """Raised by the SIGTERM handler: a killed run stops at once, with the shell's exit code 143."""

    def __init__(self) -> None:
        super().__init__(128 + signal.SIGTERM)


def raise_run_terminated(signum, frame) -> None:
    raise RunTerminated()


def install_sigterm_handler():
    """Make SIGTERM raise :class:`RunTerminated`; return the previous handler (``None`` off the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, raise_run_terminated)


class RunInterrupted(SystemExit):
    """Raised by :func:`sigint_raises_run_interrupted`'s handler: Ctrl-C stops at once, exit code 130."""

    def __init__(self) -> None:
        super().__init__(128 + signal.SIGINT)


def raise_run_interrupted(signum, frame) -> None:
    raise RunInterrupted()


@contextlib.contextmanager
def sigint_raises_run_interrupted() -> Iterator[None]:
    """SIGINT raises :class:`RunInterrupted` in the body (the previous handler after it). A
    ``SystemExit``, not a ``KeyboardInterrupt``: Lightning passes it on from a fit, as it does
    :class:`RunTerminated`, instead of ending the process with exit code 1 and no message."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, raise_run_interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class FailedRunCleanup(Callback):
    """A failed or killed run leaves no run folder behind.

    - ``setup`` makes SIGTERM raise :class:`RunTerminated` (Lightning, which registers its own
      handler later, keeps ours in its chain), so the run stops within one tensor operation.
    - ``on_exception`` removes the logger's run folder on global rank 0, but only one that did not
      exist when the run began: a folder given again by the user keeps what earlier runs wrote. The
      logger's root above it (``lightning_logs/``) goes too when this run created it and it is empty.
    """

    def __init__(self, trainer: pl.Trainer) -> None:
        self._run_dir = _logger_run_dir(trainer) if trainer.is_global_zero else None
        self._existed = self._run_dir is not None and self._run_dir.exists()
        self._root_existed = self._run_dir is None or self._run_dir.parent.exists()
        self._previous_handler = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._previous_handler = install_sigterm_handler()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._previous_handler is not None:
            signal.signal(signal.SIGTERM, self._previous_handler)
            self._previous_handler = None

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if self._run_dir is not None and not self._existed:
            shutil.rmtree(self._run_dir, ignore_errors=True)
            if not self._root_existed:
                with contextlib.suppress(OSError):  # not empty: another run's folder is there by now
                    self._run_dir.parent.rmdir()


def _logger_run_dir(trainer: pl.Trainer) -> Path | None:
    """The folder of this run's logger (never a collective: no ``trainer.log_dir``)."""
    logger = trainer.logger
    log_dir = getattr(logger, "log_dir", None) if logger is not None else None
    return Path(log_dir) if log_dir else None
