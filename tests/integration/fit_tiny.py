"""Run one estimation fit on a model directory; used by the DDP test as a subprocess.

python fit_tiny.py MODEL_DIR OUT_DIR DEVICES   (with causality at ranks 4 and 32, all pairs)
"""

import sys

import pytorch_lightning as pl
from pytorch_lightning.loggers import TensorBoardLogger

from lre_pl.lightning.datamodule import RelationDataModule
from lre_pl.lightning.module import LinearRelationModule


def run(model_dir: str, out_dir: str, devices: int, **module_options) -> LinearRelationModule:
    module_options = {"layers": [1, "emb"], **module_options}
    module = LinearRelationModule(model=model_dir, chunk_size=11, **module_options)
    data = RelationDataModule(
        relation="country capital city", model=model_dir, n_train=5, batch_size=2, filter_known=False
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        max_epochs=1,
        num_sanity_val_steps=0,
        enable_checkpointing=False,
        enable_progress_bar=False,
        logger=TensorBoardLogger(out_dir, name="", version="run", default_hp_metric=False),
    )
    trainer.fit(module, datamodule=data)
    return module


if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2], int(sys.argv[3]), ranks=[4, 32], causality_targets="all_pairs")
