"""The design card's plain-script use: a default Lightning Trainer, no lre_pl helper.

    python examples/fit_with_a_plain_trainer.py

Estimates the LRE of "country capital city" at block 8 of the embedded SmolLM2-135M (no download),
validates its faithfulness, and writes lightning_logs/version_N/ (operator.pt, predictions.tsv,
TensorBoard events).
"""

import pytorch_lightning as pl

from lre_pl import LinearRelationModule, RelationDataModule

if __name__ == "__main__":
    pl.Trainer(max_epochs=1).fit(
        LinearRelationModule(layers=8), datamodule=RelationDataModule(relation="country capital city")
    )
