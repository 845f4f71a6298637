"""The ``lre-pl`` command: LightningCLI (fit, validate, ...) plus ``lre-pl relations``.

lre-pl fit --config configs/quickstart.yaml
lre-pl fit --config configs/quickstart.yaml --print_config
lre-pl validate --config configs/quickstart.yaml --model.operator_path RUN/operator.pt
lre-pl relations [--category factual]
"""

from __future__ import annotations

import argparse
import sys

from lightning.pytorch.cli import LightningCLI

from lre_pl.api import ESTIMATION_TRAINER_DEFAULTS
from lre_pl.data import RelationDataModule
from lre_pl.errors import InputError
from lre_pl.module import LinearRelationModule
from lre_pl.relations import CATEGORIES, list_relations

TRAINER_DEFAULTS = {
    **ESTIMATION_TRAINER_DEFAULTS,
    "logger": {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": ".", "name": "lightning_logs", "default_hp_metric": False},
    },
}


class LRECLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("model.model", "data.model")
        parser.link_arguments("model.dtype", "data.dtype")


def print_relations(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="lre-pl relations", description="List the shipped relations.")
    parser.add_argument("--category", choices=CATEGORIES)
    args = parser.parse_args(argv)
    rows = list_relations(args.category)
    width = max(len(name) for name, _, _ in rows)
    print(f"{'relation':<{width}}  {'category':<11}  samples")
    for name, category, count in rows:
        print(f"{name:<{width}}  {category:<11}  {count:>7}")


def main(args: list[str] | None = None) -> None:
    argv = sys.argv[1:] if args is None else args
    if argv and argv[0] == "relations":
        print_relations(argv[1:])
        return
    try:
        LRECLI(
            LinearRelationModule,
            RelationDataModule,
            trainer_defaults=TRAINER_DEFAULTS,
            seed_everything_default=0,
            save_config_kwargs={"overwrite": True},
            args=args,
        )
    except InputError as error:  # bad input: one line, no traceback
        sys.exit(f"lre-pl: error: {error}")


if __name__ == "__main__":
    main()
