"""Epoch time of `heads train` reading tokens from the feature store vs preloaded in RAM.

Every side trains the same head (same seed) for the same epochs on the train split of one
task; only where a batch's tokens come from differs:

- ``ram``: every video's tokens read once before training (``--data-loading preload``);
- ``store``: the trainer's streaming path (``--data-loading stream``: ``heads.data.StoredVideos``
  read through a ``PartCache`` in the order of a ``PartLocalSampler``), on the store as given;
  the cache is emptied before every epoch, so every part is read from disk once per epoch, as
  for a dataset larger than RAM;
- ``compacted``: the same on a copy of the feature sets packed by ``pipeline compact`` (what
  ``pipeline extract`` leaves by default), made in a temporary directory by the bench.

Prints per-epoch times and the ratios store / RAM (target <= 1.2).

    PYTHONPATH=. python bench/train_io.py --store store --dataset demo --head mean \\
        --features resnet18 --task most_screen_time --epochs 5
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


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
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    from catalogs import get_catalog
    from heads.data import (
        FeatureDataset, PartLocalSampler, Standardizer, collate, head_token_kinds,
        load_task_data, resolve_feature_sets,
    )
    from heads.models import create_head
    from pipeline.compact import compact_feature_set
    from pipeline.store import FeatureStore

    torch.set_num_threads(args.threads)
    options = {"variant": args.variant} if args.variant else {}
    catalog = get_catalog(args.dataset, root=args.data_root or f"data/{args.dataset}", **options)
    feature_sets = resolve_feature_sets(args.store, catalog.name, args.features, args.plan,
                                        token_kinds=head_token_kinds(args.head))
    tmp = Path(tempfile.mkdtemp(prefix="train_io-"))
    packed_store = FeatureStore(tmp / "store")
    for fs in feature_sets:
        shutil.copytree(fs.path, packed_store.root / fs.name)
    (packed_store.root / "zarr.json").write_bytes((Path(args.store) / "zarr.json").read_bytes())
    t0 = time.perf_counter()
    for fs in packed_store.feature_sets():
        compact_feature_set(fs)
    compact_sec = time.perf_counter() - t0
    packed_sets = [packed_store.open(fs.name) for fs in feature_sets]

    quiet = {"log": lambda _: None}
    preload_sec = {}
    data = {}
    for name, sets, loading in (("ram", feature_sets, "preload"),
                                ("ram_compacted", packed_sets, "preload"),
                                ("store", feature_sets, "stream"),
                                ("compacted", packed_sets, "stream")):
        t0 = time.perf_counter()
        data[name] = load_task_data(catalog, args.task, sets, loading=loading, **quiet)
        preload_sec[name] = time.perf_counter() - t0
    standardizer = Standardizer.fit(data["ram"].tokens["train"])
    kind = data["ram"].task.kind
    loss_fn = {"classification": torch.nn.CrossEntropyLoss(),
               "multilabel": torch.nn.BCEWithLogitsLoss(),
               "regression": torch.nn.MSELoss()}[kind]

    def loader(name: str):
        d = data[name]
        if name == "ram":
            tokens = [standardizer.apply(v) for v in d.tokens["train"]]
            order = {"shuffle": True, "generator": torch.Generator().manual_seed(0)}
        else:
            tokens = d.tokens["train"].with_transform(standardizer.apply)
            order = {"sampler": PartLocalSampler(tokens, block_bytes=512 * 2**20, seed=0)}
        return torch.utils.data.DataLoader(FeatureDataset(tokens, d.targets["train"]),
                                           batch_size=args.batch_size, collate_fn=collate, **order)

    def epoch_times(name: str) -> list[float]:
        torch.manual_seed(0)
        model = create_head(args.head, in_dim=[int(fs.attrs["dim"]) for fs in feature_sets],
                            num_outputs=data["ram"].task.num_outputs)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        batches = loader(name)
        times = []
        for _ in range(args.epochs):
            if name != "ram":  # every part read again each epoch, as for a set larger than RAM
                data[name].tokens["train"].cache.clear()
            start = time.perf_counter()
            for inputs, batch_targets in batches:
                loss = loss_fn(model(*inputs), batch_targets)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            times.append(time.perf_counter() - start)
        return times

    times = {name: epoch_times(name) for name in ("ram", "store", "compacted")}
    shutil.rmtree(tmp)
    median = {name: float(np.median(t)) for name, t in times.items()}
    num_parts = {name: len({r["part"] for r in data[name].tokens["train"].rows[0]})
                 for name in ("store", "compacted")}
    print(f"{args.head} on {'+'.join(fs.name for fs in feature_sets)}: "
          f"{len(data['ram'].video_ids['train'])} train videos, batch {args.batch_size}, "
          f"{args.epochs} epochs, {args.threads} thread(s)")
    print(f"reading the task's tokens into RAM once: {preload_sec['ram']:.2f} s as stored, "
          f"{preload_sec['ram_compacted']:.2f} s compacted (compaction took {compact_sec:.1f} s)")
    for name, label in (("ram", "RAM (preloaded)"),
                        ("store", f"store, {num_parts['store']} parts"),
                        ("compacted", f"store compacted, {num_parts['compacted']} parts")):
        print(f"epoch times {label:28s} (s): " + " ".join(f"{t:.4f}" for t in times[name]))
    for name in ("store", "compacted"):
        print(f"median epoch {name:9s} {median[name]:.4f} s vs RAM {median['ram']:.4f} s: "
              f"ratio {median[name] / median['ram']:.2f}x (target <= 1.2x)")


if __name__ == "__main__":
    main()
