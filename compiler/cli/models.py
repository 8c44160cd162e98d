"""The model commands: `dopant zoo` and `train` (the main job, `demo`, is in codesign)."""

from __future__ import annotations

import argparse

from dopant.compiler.cli.options import Command


def _cmd_zoo(args: argparse.Namespace) -> None:
    from dopant.compiler.models import zoo
    from dopant.compiler.models.pretrained import PRETRAINED

    print(f"{'model':<16} {'input':<12} {'weights':<24} about")
    for name in zoo.names():
        entry = zoo.get(name)
        dims = "x".join(map(str, entry.input_shape))
        weights = "trained (Fashion-MNIST)" if name in PRETRAINED else "untrained"
        print(f"zoo:{name:<12} {dims:<12} {weights:<24} {entry.summary}")
    print("Untrained models keep a seeded random initialization; give --weights FILE.")


def _cmd_train(args: argparse.Namespace) -> None:
    from dopant.compiler.models.train import main_train

    main_train(args.model, args.epochs, args.output)


def register(command: Command) -> None:
    """Add the model commands to the CLI."""
    command("zoo", _cmd_zoo, "list the built-in models")
    p = command("train", _cmd_train, "train a zoo model on Fashion-MNIST")
    p.add_argument("model", help="zoo:NAME")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("-o", "--output", required=True, help="weights .npz, which --weights reads")
