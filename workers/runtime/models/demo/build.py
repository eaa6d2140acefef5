"""The demo classifier: a small MLP trained in seconds, deterministically, on scikit-learn's
breast cancer data (569 labelled rows, 30 float features), and synthetic rows drawn from it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from workers.runtime.artifacts import save_artifact
from workers.runtime.models.demo.architecture import TabularMLP
from workers.runtime.provenance import code_version, data_sha256

HIDDEN = [512, 512]
LABELS = ["malignant", "benign"]
LEARNING_RATE = 1e-3
BATCH_SIZE = 64
TRAIN_FRACTION = 0.8
# The train/held-out split is the same for every seed (the seed varies the initial weights
# and the batch order): a version is then never compared with another on rows that the
# other was trained on.
SPLIT_SEED = 0


def load_dataset() -> tuple[list[str], np.ndarray, np.ndarray]:
    """Feature names (snake_case), features (float32) and integer labels."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    names = [re.sub(r"\W+", "_", n.strip()).lower() for n in data.feature_names]
    return names, data.data.astype(np.float32), data.target.astype(np.int64)


def train(
    seed: int = 0, epochs: int = 60, hidden: list[int] | None = None
) -> tuple[TabularMLP, dict[str, Any]]:
    """Train on 80% of the data (the same 80% for every seed); return the module and its
    manifest (with held-out accuracy and what made it)."""
    torch.manual_seed(seed)
    names, x, y = load_dataset()
    order = np.random.default_rng(SPLIT_SEED).permutation(len(x))
    cut = int(TRAIN_FRACTION * len(x))
    train_idx, test_idx = order[:cut], order[cut:]
    model = TabularMLP(len(names), hidden or HIDDEN, len(LABELS))
    model.mean.copy_(torch.from_numpy(x[train_idx].mean(0)))
    model.std.copy_(torch.from_numpy(x[train_idx].std(0) + 1e-6))
    xt, yt = torch.from_numpy(x[train_idx]), torch.from_numpy(y[train_idx])
    opt = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(epochs):
        for batch in torch.randperm(len(xt), generator=torch.Generator().manual_seed(seed)).split(
            BATCH_SIZE
        ):
            opt.zero_grad()
            loss_fn(model(xt[batch]), yt[batch]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        train_loss = float(loss_fn(model(xt), yt))
        held_out = (model(torch.from_numpy(x[test_idx])).argmax(1).numpy() == y[test_idx]).mean()
    manifest = {
        "validation_set": _validation_set(names, x[test_idx], y[test_idx], seed),
        "architecture": "mlp",
        "config": {"features": names, "hidden": hidden or HIDDEN, "labels": LABELS},
        "input_schema": {n: "float" for n in names},
        "runtime": {"backend": "eager", "max_batch_size": 256, "max_wait_ms": 10},
        "training": {
            "seed": seed,
            "epochs": epochs,
            "held_out_accuracy": float(held_out),
            "data": {
                "source": "sklearn.datasets.load_breast_cancer",
                "sha256": data_sha256(x[train_idx], y[train_idx]),
                "rows": int(cut),
                "held_out_rows": int(len(x) - cut),
                "split_seed": SPLIT_SEED,
            },
            "hyperparameters": {
                "hidden": list(hidden or HIDDEN),
                "optimizer": "adam",
                "learning_rate": LEARNING_RATE,
                "batch_size": BATCH_SIZE,
                "epochs": epochs,
                "seed": seed,
                "train_fraction": TRAIN_FRACTION,
            },
            "metrics": {"held_out_accuracy": float(held_out), "train_loss": round(train_loss, 6)},
            "code_version": code_version(),
        },
    }
    return model, manifest


def _validation_set(
    names: list[str], x: np.ndarray, y: np.ndarray, seed: int, n: int = 600, noise: float = 0.05
) -> list[dict[str, Any]]:
    """Held-out rows (never trained on), resampled with jitter, for the quality gate."""
    rng = np.random.default_rng(seed + 1)
    pick = rng.integers(0, len(x), size=n)
    rows = np.clip(x[pick] + rng.normal(0, noise, (n, x.shape[1])) * x.std(0), 0, None)
    return [
        {
            "inputs": {k: round(float(v), 6) for k, v in zip(names, row, strict=True)},
            "label": LABELS[int(label)],
        }
        for row, label in zip(rows, y[pick], strict=True)
    ]


def build_artifact(directory: Path, seed: int = 0) -> Path:
    """Train and write the demo artifact (model.json + weights.safetensors) into `directory`."""
    model, manifest = train(seed)
    save_artifact(directory, manifest, model)
    return directory


def sample_rows(
    n: int, seed: int = 0, noise: float = 0.05
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """`n` rows drawn from the data's distribution: real rows resampled with a small
    per-feature Gaussian jitter (`noise` × the feature's std), keeping their labels."""
    names, x, y = load_dataset()
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(x), size=n)
    jitter = rng.normal(0.0, noise, size=(n, x.shape[1])) * x.std(0)
    rows = np.clip(x[pick] + jitter, 0.0, None).astype(np.float32)
    return names, rows, y[pick]


def write_csv(path: Path, n: int, seed: int = 0) -> Path:
    """A CSV of `n` synthetic rows with columns id, the features, and label (written by
    Arrow: a Python csv.writer spent 7 of the demo's first 18 seconds on 100,000 rows)."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    names, rows, labels = sample_rows(n, seed)
    columns = {
        "id": pa.array([f"row-{i}" for i in range(n)]),
        **{name: pa.array(rows[:, j]) for j, name in enumerate(names)},
        "label": pa.array(np.asarray(LABELS, dtype=object)[labels]),
    }
    options = pcsv.WriteOptions(quoting_style="needed")
    pcsv.write_csv(pa.table(columns), path, write_options=options)
    return path
