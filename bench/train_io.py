"""Epoch time of `heads train` reading tokens from the feature store vs preloaded in RAM.

Both sides train the same head (same seed, same batches) for the same epochs on the train
split of one task; only where a batch's tokens come from differs:

- ``ram``: every video's tokens read once before training (what ``heads.train`` does);
- ``store``: each video read from the Zarr store every time the loader asks for it (what a
  dataset too large for RAM would need), through a DataLoader with ``--num-workers`` workers.

Prints per-epoch times and the ratio store / RAM (target ≤ 1.2).

    PYTHONPATH=. python bench/train_io.py --store store --dataset demo --head mean \\
        --features resnet18 --task most_screen_time --epochs 3
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


class StoreDataset(torch.utils.data.Dataset):
    """Videos read from the store on every access (index rows and Zarr groups opened once)."""

    def __init__(self, feature_sets, video_ids, targets, standardizer):
        self.feature_sets, self.video_ids = feature_sets, list(video_ids)
        self.targets = torch.from_numpy(np.ascontiguousarray(targets))
        self.standardizer = standardizer
        self.rows = []
        for fs in feature_sets:
            index = {r["video_id"]: r for r in fs.index().iter_rows(named=True)}
            self.rows.append([index[v] for v in self.video_ids])
        self._groups: dict = {}  # per worker process: (set, part) → open Zarr group

    def __len__(self) -> int:
        return len(self.video_ids)

    def _tokens(self, stream: int, row: dict) -> np.ndarray:
        import zarr

        key = (stream, row["part"])
        if key not in self._groups:
            path = self.feature_sets[stream].path / "parts" / row["part"]
            self._groups[key] = zarr.open_group(store=str(path), mode="r")["tokens"]
        return self._groups[key][row["offset"] : row["offset"] + row["num_tokens"]]

    def __getitem__(self, i: int):
        raw = [self._tokens(s, rows[i]) for s, rows in enumerate(self.rows)]
        raw = [np.asarray(x, dtype=np.float32) if x.ndim == 2 else x for x in raw]
        streams = self.standardizer.apply(raw)
        return [torch.from_numpy(np.ascontiguousarray(x)) for x in streams], self.targets[i]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", default="store")
    parser.add_argument("--dataset", default="demo")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--variant", default=None)
    parser.add_argument("--head", default="mean")
    parser.add_argument("--features", nargs="+", default=["resnet18"])
    parser.add_argument("--plan", default="scene")
    parser.add_argument("--task", default="most_screen_time")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    from catalogs import get_catalog
    from heads.data import (
        FeatureDataset, Standardizer, collate, head_token_kinds, load_task_data,
        resolve_feature_sets,
    )
    from heads.models import create_head

    torch.set_num_threads(args.threads)
    options = {"variant": args.variant} if args.variant else {}
    catalog = get_catalog(args.dataset, root=args.data_root or f"data/{args.dataset}", **options)
    feature_sets = resolve_feature_sets(args.store, catalog.name, args.features, args.plan,
                                        token_kinds=head_token_kinds(args.head))
    t0 = time.perf_counter()
    data = load_task_data(catalog, args.task, feature_sets, log=lambda _: None)
    preload_sec = time.perf_counter() - t0
    standardizer = Standardizer.fit(data.tokens["train"])
    targets = data.targets["train"]
    datasets = {
        "ram": FeatureDataset([standardizer.apply(v) for v in data.tokens["train"]], targets),
        "store": StoreDataset(feature_sets, data.video_ids["train"], targets, standardizer),
    }
    kind = data.task.kind
    loss_fn = {"classification": torch.nn.CrossEntropyLoss(),
               "multilabel": torch.nn.BCEWithLogitsLoss(),
               "regression": torch.nn.MSELoss()}[kind]

    def epoch_times(name: str) -> list[float]:
        torch.manual_seed(0)
        model = create_head(args.head, in_dim=[int(fs.attrs["dim"]) for fs in feature_sets],
                            num_outputs=data.task.num_outputs)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        workers = args.num_workers if name == "store" else 0
        loader = torch.utils.data.DataLoader(
            datasets[name], batch_size=args.batch_size, shuffle=True, collate_fn=collate,
            num_workers=workers, persistent_workers=workers > 0,
            generator=torch.Generator().manual_seed(0),
        )
        times = []
        for _ in range(args.epochs):
            start = time.perf_counter()
            for inputs, batch_targets in loader:
                loss = loss_fn(model(*inputs), batch_targets)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            times.append(time.perf_counter() - start)
        return times

    # The first store epoch starts its workers: report it, compare the steady epochs.
    ram, store = epoch_times("ram"), epoch_times("store")
    steady = slice(1, None) if args.epochs > 1 else slice(None)
    ram_sec, store_sec = float(np.median(ram[steady])), float(np.median(store[steady]))
    num_videos = len(datasets["ram"])
    print(f"{args.head} on {'+'.join(fs.name for fs in feature_sets)}: {num_videos} train "
          f"videos, batch {args.batch_size}, {args.num_workers} loader worker(s)")
    print(f"preloading into RAM (once): {preload_sec:.2f} s")
    print("epoch times RAM   (s): " + " ".join(f"{t:.3f}" for t in ram))
    print("epoch times store (s): " + " ".join(f"{t:.3f}" for t in store))
    print(f"median epoch: RAM {ram_sec:.3f} s, store {store_sec:.3f} s; "
          f"ratio store/RAM = {store_sec / ram_sec:.2f}x (target <= 1.2x)")


if __name__ == "__main__":
    main()
