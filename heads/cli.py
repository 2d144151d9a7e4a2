"""``heads``: train temporal heads on cached features (console script ``heads``).

Thin: parse flags, build a :class:`heads.train.TrainConfig`, call the library. Torch is imported
inside the commands so ``heads --help`` answers at once.
"""

from __future__ import annotations

import json
from typing import Annotated, NoReturn

import typer

app = typer.Typer(
    help="Train and inspect temporal heads on features from `pipeline extract`.",
    no_args_is_help=True,
    add_completion=False,
)


def parse_key_values(items: list[str] | None, flag: str) -> dict:
    """``key=value`` strings as a dict; values parsed as JSON when they are JSON (``64``,
    ``0.5``, ``true``, ``[1, 2]``), else kept as strings.

    Args:
        items: The repeated flag's values.
        flag: The flag's name, for error messages.

    Raises:
        typer.BadParameter: an item has no ``=`` or an empty key.
    """
    kwargs = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(
                f"{item!r} is not key=value (e.g. {flag} name=value)", param_hint=flag
            )
        try:
            kwargs[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            kwargs[key.strip()] = value
    return kwargs


def _fail(message: str) -> NoReturn:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


@app.command()
def train(
    task: Annotated[str, typer.Option(help="Task of the catalog to learn, e.g. most_screen_time (demo).")],
    dataset: Annotated[str, typer.Option(help="Catalog key, e.g. demo or folder.")] = "demo",
    data_root: Annotated[
        str | None, typer.Option(help="Catalog root directory (default: data/<dataset>).")
    ] = None,
    variant: Annotated[
        str | None,
        typer.Option(help="Catalog variant, as given to `pipeline extract` (demo: small)."),
    ] = None,
    catalog_option: Annotated[
        list[str] | None,
        typer.Option(help="Catalog option as key=value, repeatable (folder: labels=FILE.csv)."),
    ] = None,
    head: Annotated[str, typer.Option(help="Head to train (see `heads list`).")] = "stan",
    features: Annotated[
        list[str] | None,
        typer.Option(
            "--features",
            help="Backbone or exact feature-set name, once per stream in the head's order "
            "(stan: spatial then temporal). Default: stan → resnet18 + r2plus1d_18, "
            "others → resnet18.",
        ),
    ] = None,
    plan: Annotated[str, typer.Option(help="Sampling plan of the features.")] = "scene",
    store: Annotated[str, typer.Option(help="Feature store root.")] = "./store",
    runs_dir: Annotated[str, typer.Option(help="Where run directories are written.")] = "runs",
    epochs: Annotated[int, typer.Option(help="Maximum number of epochs.")] = 50,
    batch_size: Annotated[int, typer.Option(help="Videos per step.")] = 16,
    lr: Annotated[float, typer.Option(help="Peak learning rate (AdamW).")] = 3e-4,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay.")] = 0.01,
    warmup_epochs: Annotated[int, typer.Option(help="Linear warm-up epochs.")] = 2,
    patience: Annotated[int, typer.Option(help="Early-stopping patience in epochs; 0 = off.")] = 10,
    seed: Annotated[int, typer.Option(help="Seed for init, dropout and shuffling.")] = 0,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "cpu",
    head_kwarg: Annotated[
        list[str] | None,
        typer.Option(help="Head argument as key=value, repeatable (e.g. d_model=128)."),
    ] = None,
) -> None:
    """Train a head on cached features and print per-split metrics next to the baseline."""
    from heads.train import TrainConfig
    from heads.train import train as run_training

    try:
        catalog_options = parse_key_values(catalog_option, "--catalog-option")
        if variant is not None:
            catalog_options["variant"] = variant
        config = TrainConfig(
            task=task,
            dataset=dataset,
            data_root=data_root,
            catalog_options=catalog_options,
            head=head,
            features=tuple(features or ()),
            plan=plan,
            store=store,
            runs_dir=runs_dir,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            weight_decay=weight_decay,
            warmup_epochs=warmup_epochs,
            patience=patience,
            seed=seed,
            device=device,
            head_kwargs=parse_key_values(head_kwarg, "--head-kwarg"),
        )
        run_training(config, log=typer.echo)
    except (KeyError, ValueError, FileNotFoundError) as err:
        # KeyError's str() quotes its message; show the message itself.
        _fail(err.args[0] if isinstance(err, KeyError) and err.args else str(err))


@app.command("list")
def list_command(
    in_dim: Annotated[int, typer.Option(help="Feature dim D of every stream.")] = 512,
    num_outputs: Annotated[int, typer.Option(help="K, the number of outputs.")] = 3,
) -> None:
    """Every registered head, its input streams and its parameter count at default size
    (``mean`` counted with one stream)."""
    from heads.models import create_head, get_head_class, list_heads

    rows = [("head", "streams", "parameters")]
    for name in list_heads():
        cls = get_head_class(name)
        model = create_head(name, in_dim=[in_dim] * len(cls.streams), num_outputs=num_outputs)
        num_params = sum(p.numel() for p in model.parameters())
        variadic = getattr(cls, "variadic_streams", False)
        streams = "+".join(cls.streams) + (" (one per feature set)" if variadic else "")
        rows.append((name, streams, f"{num_params:,}"))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        typer.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


# End-to-end fine-tuning (backbones + head from frames): its own command, see heads/finetune_cli.py.
from heads.finetune_cli import finetune as _finetune  # noqa: E402

app.command("finetune")(_finetune)


if __name__ == "__main__":
    app()
