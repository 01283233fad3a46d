"""Train the built-in `digits` model and write its shipped artifacts.

    python -m models.builtin.train_digits            # reproduces the shipped artifacts

Runs on CPU in well under a minute. Everything that affects the result is a flag or a
constant here and is written to train_args.json next to the weights.
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import re
import time
from pathlib import Path

import numpy as np
import sklearn
import torch
from safetensors.torch import save_file
from sklearn.datasets import load_digits
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score
from sklearn.model_selection import train_test_split

from models.builtin.digits import DigitsNet, to_tensor

ARTIFACTS = Path(__file__).parent / "artifacts" / "digits"
TEST_SIZE = 0.2
SPLIT_SEED = 0


def split_digits(test_size: float = TEST_SIZE, random_state: int = SPLIT_SEED):
    """Stratified train/test split of load_digits: (X_train, X_test, y_train, y_test).

    X rows are 64 pixel values in 0..16. The tests build their images from the same
    held-out split, so it must only change together with the shipped metrics.
    """
    data = load_digits()
    return train_test_split(
        data.data, data.target, test_size=test_size, stratify=data.target, random_state=random_state
    )


def to_json(value: dict) -> str:
    # One line per row of the confusion matrix keeps the file readable in a diff.
    text = json.dumps(value, indent=2)
    return re.sub(r"\[\s+([-\d.,\s]+?)\s+\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text) + "\n"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    # One thread keeps floating point reductions in the same order on every machine.
    torch.set_num_threads(1)


def shift(images: torch.Tensor, generator: torch.Generator, max_shift: int) -> torch.Tensor:
    """Randomly move each image by up to `max_shift` pixels per axis, padding with zeros.

    Digits drawn by users are never placed exactly like the scanned originals; small shifts
    make the net tolerant of the off-by-one placement that image resizing produces.
    """
    if max_shift == 0:
        return images
    n = images.shape[0]
    padded = torch.nn.functional.pad(images, (max_shift,) * 4)
    offsets = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=generator)
    out = torch.empty_like(images)
    for i, (dy, dx) in enumerate(offsets.tolist()):
        out[i] = padded[i, :, dy : dy + 8, dx : dx + 8]
    return out


def train(args: argparse.Namespace) -> dict:
    seed_everything(args.seed)
    X_train, X_test, y_train, y_test = split_digits(args.test_size, args.split_seed)
    x_train, t_train = to_tensor(X_train), torch.as_tensor(y_train, dtype=torch.long)
    x_test = to_tensor(X_test)

    net = DigitsNet()
    optimizer = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = -(-len(x_train) // args.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=args.lr, epochs=args.epochs, steps_per_epoch=steps_per_epoch
    )
    generator = torch.Generator().manual_seed(args.seed)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)

    started = time.perf_counter()
    for epoch in range(args.epochs):
        net.train()
        order = torch.randperm(len(x_train), generator=generator)
        total = 0.0
        for start in range(0, len(order), args.batch_size):
            idx = order[start : start + args.batch_size]
            inputs = shift(x_train[idx], generator, args.max_shift)
            loss = loss_fn(net(inputs), t_train[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.item() * len(idx)
        if args.verbose:
            print(f"epoch {epoch + 1:3d}  loss {total / len(x_train):.4f}")
    seconds = time.perf_counter() - started

    net.eval()
    with torch.inference_mode():
        predicted = net(x_test).argmax(1).numpy()
        train_predicted = net(x_train).argmax(1).numpy()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    weights = out / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, weights)
    # safetensors writes the file owner-only; workers running as another user must read it.
    weights.chmod(0o644)

    metrics = {
        "test_accuracy": float(accuracy_score(y_test, predicted)),
        "test_macro_f1": float(f1_score(y_test, predicted, average="macro")),
        "train_accuracy": float(accuracy_score(y_train, train_predicted)),
        "n_train": int(len(y_train)),
        "n_test": int(len(y_test)),
        "n_parameters": int(sum(p.numel() for p in net.parameters())),
        "test_confusion_matrix": confusion_matrix(y_test, predicted).tolist(),
    }
    # The output directory and verbosity do not change the result; leaving them out keeps
    # the file identical wherever the script runs.
    hyperparameters = {k: v for k, v in vars(args).items() if k not in ("out", "verbose")}
    train_args = {
        **hyperparameters,
        "dataset": "sklearn.datasets.load_digits",
        "split": "sklearn.model_selection.train_test_split, stratified on the label",
        "optimizer": "AdamW",
        "scheduler": "OneCycleLR",
        "input_scaling": "pixels / 16",
        "torch_version": torch.__version__,
        "sklearn_version": sklearn.__version__,
        "numpy_version": np.__version__,
        "python_version": platform.python_version(),
    }
    (out / "metrics.json").write_text(to_json(metrics))
    (out / "train_args.json").write_text(to_json(train_args))
    return {**metrics, "train_seconds": seconds}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate of the one-cycle schedule")
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--label-smoothing", type=float, default=0.0)
    parser.add_argument("--max-shift", type=int, default=1, help="random translation in pixels (augmentation)")
    parser.add_argument("--seed", type=int, default=0, help="seed for torch, numpy and random")
    parser.add_argument("--test-size", type=float, default=TEST_SIZE)
    parser.add_argument("--split-seed", type=int, default=SPLIT_SEED, help="random_state of the split")
    parser.add_argument("--out", default=str(ARTIFACTS), help="directory for the artifacts")
    parser.add_argument("--verbose", action="store_true", help="print the loss every epoch")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    metrics = train(args)
    print(
        f"test accuracy {metrics['test_accuracy']:.4f}  macro F1 {metrics['test_macro_f1']:.4f}  "
        f"({metrics['n_train']} train / {metrics['n_test']} test, {metrics['train_seconds']:.1f} s)"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
