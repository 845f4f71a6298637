"""The Lightning pieces: the LightningModule (its hooks), the DataModule, callbacks, run outputs and DDP helpers."""
