"""`tagalong`: ingest, watch, label, review, submit-labels, search, dedup, project, export, outliers."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tagalong.cli.files import plot_projection, read_labels, write_projector, write_review
from tagalong.sdk import Client, JobFailedError, TagalongError
from tagalong.sdk._requests import dir_items
from tagalong.v1 import common_pb2, gateway_pb2

app = typer.Typer(help="tagalong: semi-supervised image labelling with vector embeddings.", no_args_is_help=True)
console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])
DatasetOpt = typer.Option(..., "--dataset", "-d", envvar="TAGALONG_DATASET", help="Dataset name.")


class _State:
    address: str = "127.0.0.1:50050"
    token: str | None = None
    _client: Client | None = None

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = Client(self.address, token=self.token)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


STATE = _State()


@app.callback()
def main(
    address: str = typer.Option("127.0.0.1:50050", "--address", envvar="TAGALONG_ADDRESS", help="Gateway host:port."),
    token: str = typer.Option("", "--token", envvar="TAGALONG_AUTH_TOKEN", help="Bearer token.", show_default=False),
) -> None:
    STATE.address, STATE.token, STATE._client = address, token or None, None


def _handled(fn: F) -> F:
    """One red line and exit status 1 for a failed call, instead of a traceback."""

    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except TagalongError as err:
            err_console.print(f"[red]error[/red] {err.code.name}: {err.details}")
            raise typer.Exit(1) from None
        except JobFailedError as err:
            err_console.print(f"[red]job {err.job.id} failed[/red]: {err.job.error}")
            raise typer.Exit(1) from None
        except (OSError, ValueError) as err:
            err_console.print(f"[red]error[/red] {err}")
            raise typer.Exit(1) from None
        finally:
            STATE.close()

    return wrapped  # type: ignore[return-value]


def _state_name(state: int) -> str:
    return gateway_pb2.JobState.Name(state).removeprefix("JOB_STATE_").lower()


def _source(source: int) -> str:
    return common_pb2.LabelSource.Name(source).removeprefix("LABEL_SOURCE_").lower()


def _follow(job_id: str) -> gateway_pb2.Job:
    """A progress bar over the job until it ends; returns the final job."""
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[rate]:.1f}/s  eta {task.fields[eta]}  {task.fields[extra]}"),
               TimeElapsedColumn())
    job = STATE.client.get_job(job_id)
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(f"{job.kind} {job_id[:8]}", total=job.total or None, rate=0.0, eta="?", extra="")
        for job in STATE.client.watch(job_id):
            eta = f"{job.eta_seconds:.0f}s" if job.eta_seconds else "-"
            extra = f"{job.stage} " if job.stage else ""
            extra += f"failed {job.failed}" if job.failed else ""
            progress.update(task, total=job.total or None, completed=job.done + job.failed, rate=job.rate,
                            eta=eta, extra=extra)
    return job


def _job_table(job: gateway_pb2.Job) -> None:
    colour = {"succeeded": "green", "partial": "yellow", "failed": "red"}.get(_state_name(job.state), "white")
    table = Table(title=f"job {job.id}", show_header=False)
    table.add_row("kind", job.kind)
    table.add_row("dataset", job.dataset)
    table.add_row("state", f"[{colour}]{_state_name(job.state)}[/{colour}]")
    table.add_row("done / failed / total", f"{job.done} / {job.failed} / {job.total}")
    table.add_row("rate", f"{job.rate:.1f} items/s")
    if job.duplicates_found:
        table.add_row("near-duplicates", str(job.duplicates_found))
    if job.error:
        table.add_row("error", job.error)
    for f in job.failures[:5]:
        table.add_row("failure", f"{f.item}: {f.reason}")
    if job.round_id:
        table.add_row("round", job.round_id)
    console.print(table)
    if job.HasField("round_summary"):
        s = job.round_summary
        summary = Table(title="round summary", show_header=False)
        for name, value in (("items", s.total), ("human labelled", s.human_labeled), ("propagated", s.propagated),
                            ("uncommitted", s.uncommitted), ("coverage", f"{s.coverage:.1%}"), ("k", s.k),
                            ("labels written", s.labels_written), ("seconds", f"{s.duration_seconds:.1f}")):
            summary.add_row(name, str(value))
        console.print(summary)
        if s.iterations:
            its = Table("iteration", "method", "committed", "changed", "mean conf", "agreement", "clusters",
                        title="refinement")
            for it in s.iterations:
                split = f" ({it.clusters_split} split)" if it.clusters_split else ""
                its.add_row(str(it.iteration), it.method, str(it.labeled), str(it.changed), f"{it.mean_confidence:.3f}",
                            f"{it.agreement:.3f}", f"{it.clusters}{split}")
            console.print(its)


@app.command()
@_handled
def datasets() -> None:
    """List datasets."""
    table = Table("name", "model", "dim", "count", "classes")
    for d in STATE.client.list_datasets():
        table.add_row(d.name, d.model_id, str(d.dim), str(d.count), ", ".join(d.classes))
    console.print(table)


@app.command()
@_handled
def create(
    name: str, classes: list[str] = typer.Option([], "--class", "-c", help="A declared class (repeat).")
) -> None:
    """Create a dataset (idempotent)."""
    d = STATE.client.create_dataset(name, classes)
    console.print(f"dataset [bold]{d.name}[/bold]: model {d.model_id} (dim {d.dim}), {d.count} images")


@app.command()
@_handled
def ingest(
    directory: Path = typer.Argument(..., exists=True, file_okay=False, help="Folder of images (walked)."),
    dataset: str = DatasetOpt,
    labels_from_dirs: bool = typer.Option(False, help="Use each image's folder name as its human label."),
    server_paths: bool = typer.Option(False, help="Let the gateway read the files (under its allowed roots)."),
    check_duplicates: bool = typer.Option(False, help="Report near-duplicates of stored images."),
    wait: bool = typer.Option(True, help="Follow the job until it ends."),
) -> None:
    """Ingest every image under DIR into a dataset (created when missing)."""
    client = STATE.client
    client.create_dataset(dataset)
    items = dir_items(directory, labels_from_dirs, server_paths)
    uploading = not server_paths
    if uploading:
        with Progress(TextColumn("[bold]upload"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console) as progress:
            task = progress.add_task("upload", total=len(items))
            reply = client.ingest(dataset, items, check_duplicates=check_duplicates,
                                  on_item=lambda: progress.advance(task))
    else:
        reply = client.ingest(dataset, items, check_duplicates=check_duplicates)
    console.print(f"job [bold]{reply.job_id}[/bold]: {reply.queued} images queued")
    if wait:
        _job_table(_follow(reply.job_id))


@app.command()
@_handled
def watch(job_id: str) -> None:
    """Follow a job until it ends."""
    _job_table(_follow(job_id))


@app.command()
@_handled
def label(
    dataset: str = DatasetOpt,
    k: int = typer.Option(0, help="Clusters (0: automatic)."),
    review_size: int = typer.Option(0, help="Items to send to review (0: default 50)."),
    confidence: float = typer.Option(
        0.0, help="Commit machine labels whose estimated probability of being right is at least this (0: 0.9)."
    ),
    seed: int = typer.Option(0, help="Random seed."),
    refit_pca: bool = typer.Option(False, help="Fit the PCA basis again instead of reusing the dataset's."),
    recluster: bool = typer.Option(True, help="Let refinement split clusters whose labels disagree."),
    feature_power: float = typer.Option(
        0.0, help="Power transform x^p of non-negative embeddings before PCA, in (0, 1] (0: the service's 0.5; 1: off)."
    ),
    wait: bool = typer.Option(True, help="Follow the round until it ends."),
) -> None:
    """Run a labelling round."""
    reply = STATE.client.start_round(dataset, k=k, review_batch_size=review_size, confidence_threshold=confidence,
                                     seed=seed, refit_pca=refit_pca, disable_recluster=not recluster,
                                     feature_power=feature_power)
    console.print(f"round [bold]{reply.round_id}[/bold] (job {reply.job_id})")
    if wait:
        job = _follow(reply.job_id)
        _job_table(job)
        if job.state == gateway_pb2.JOB_STATE_FAILED:
            raise typer.Exit(1)


@app.command()
@_handled
def review(
    dataset: str = DatasetOpt,
    round_id: str = typer.Option("", "--round", help="Round id (default: the latest)."),
    limit: int = typer.Option(0, help="At most this many (0: all)."),
    pending_only: bool = typer.Option(False, help="Leave out items already labelled by a person."),
    out: Path | None = typer.Option(None, help="Write the queue to a .csv or .jsonl file to fill in."),
) -> None:
    """Print (or export) the review queue of the latest round."""
    queue = STATE.client.review_queue(dataset, round_id, limit, pending_only)
    if out is not None:
        write_review(list(queue.items), out)
        console.print(f"{len(queue.items)} items of round {queue.round_id} written to {out}")
        return
    table = Table("id", "uri", "priority", "guess", "conf", "cluster", "why", title=f"review queue {queue.round_id}")
    for it in queue.items:
        table.add_row(str(it.id), it.uri, f"{it.priority:.3f}", it.predicted_label, f"{it.confidence:.2f}",
                      str(it.cluster_id), it.reason)
    console.print(table)


@app.command("submit-labels")
@_handled
def submit_labels(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, help="CSV/JSONL/JSON with id (or sha256), label."),
    dataset: str = DatasetOpt,
    annotator: str = typer.Option(os.environ.get("USER", ""), help="Who labelled."),
) -> None:
    """Submit human labels from a file (rows with an empty label are skipped)."""
    labels = [(t, lab) for t, lab in read_labels(file) if lab]
    reply = STATE.client.submit_labels(dataset, labels, annotator=annotator)
    console.print(f"applied {reply.applied}, unchanged {reply.unchanged}, unknown ids {len(reply.unknown_ids)}")


def _hits_table(hits: list[common_pb2.Hit], title: str) -> None:
    table = Table("#", "id", "score", "label", "source", "uri", title=title)
    for i, h in enumerate(hits, 1):
        table.add_row(str(i), str(h.id), f"{h.score:.4f}", h.label, _source(h.label_source), h.uri)
    console.print(table)


@app.command()
@_handled
def search(
    text: str = typer.Argument("", help='Query text, e.g. "a red car".'),
    dataset: str = DatasetOpt,
    image: Path | None = typer.Option(None, "--image", exists=True, dir_okay=False, help="Search by this image."),
    top_k: int = typer.Option(10, "--top-k", "-k"),
    label_filter: list[str] = typer.Option([], "--label", help="Only items with this label (repeat)."),
) -> None:
    """Search a dataset by text or by an image."""
    flt = common_pb2.Filter(labels=label_filter) if label_filter else None
    if image is not None:
        _hits_table(STATE.client.search_image(dataset, image, top_k, flt), f"like {image.name}")
    elif text:
        _hits_table(STATE.client.search_text(dataset, text, top_k, flt), f'"{text}"')
    else:
        raise typer.BadParameter("give a TEXT query or --image")


@app.command()
@_handled
def dedup(dataset: str = DatasetOpt, threshold: float = typer.Option(0.0, help="Cosine (0: default 0.95).")) -> None:
    """Near-duplicate groups."""
    groups = STATE.client.find_duplicates(dataset, threshold)
    table = Table("group", "size", "min sim", "uris", title=f"{len(groups)} near-duplicate groups")
    for i, g in enumerate(groups, 1):
        table.add_row(str(i), str(len(g.ids)), f"{g.min_similarity:.3f}", "\n".join(g.uris))
    console.print(table)


@app.command()
@_handled
def project(
    dataset: str = DatasetOpt,
    out: Path = typer.Option(Path("plot.png"), help="PNG scatter coloured by label."),
    method: str = typer.Option("pca", help="pca, tsne or umap."),
    max_points: int = typer.Option(0, help="Sample size (0: default)."),
    projector_dir: Path | None = typer.Option(
        None, help="Folder for vectors.tsv + metadata.tsv (default: beside --out)."
    ),
) -> None:
    """Project a dataset to 2D: a PNG scatter and an Embedding Projector export."""
    reply = STATE.client.project(dataset, method, 2, max_points)
    points = list(reply.points)
    plot_projection(points, out, f"{dataset} ({method}, {len(points)} of {reply.total})")
    vectors, metadata = write_projector(points, projector_dir or out.parent)
    console.print(f"{len(points)} points: {out}, {vectors}, {metadata}")


@app.command()
@_handled
def export(
    dataset: str = DatasetOpt,
    fmt: str = typer.Option("jsonl", "--format", "-f", help="jsonl, csv, coco or label-studio."),
    out: Path = typer.Option(..., "--out", "-o", help="Output file."),
    review_only: bool = typer.Option(False, help="Only the review queue of the latest round."),
    image_url_prefix: str = typer.Option("", help="Label Studio: prefix for image URLs."),
) -> None:
    """Export a dataset's labels."""
    if fmt.lower().replace("_", "-") == "label-studio" and review_only:
        # Review items are uncommitted guesses the store does not hold: add the round's guess and
        # confidence as pre-annotations (tagalong.labelstudio does it through the SDK).
        from tagalong.labelstudio import export_tasks

        tasks = export_tasks(STATE.client, dataset, review_queue_only=True, image_url_prefix=image_url_prefix)
        out.write_text(json.dumps(tasks, ensure_ascii=False, indent=1), encoding="utf-8")
        console.print(f"{len(tasks)} Label Studio tasks written to {out}")
        return
    data = STATE.client.export(dataset, fmt, out=out, review_queue_only=review_only,
                               image_url_prefix=image_url_prefix)
    console.print(f"{len(data)} bytes written to {out}")


@app.command()
@_handled
def outliers(
    dataset: str = DatasetOpt,
    limit: int = typer.Option(20, help="How many."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Also write rank,id,score,label,uri as CSV."),
) -> None:
    """The most unusual images (top-N with scores)."""
    found = STATE.client.outliers(dataset, limit)
    table = Table("#", "id", "score", "label", "uri", title="outliers")
    for i, o in enumerate(found, 1):
        table.add_row(str(i), str(o.id), f"{o.score:.4f}", o.label, o.uri)
    console.print(table)
    if out is not None:
        import csv

        with out.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["rank", "id", "score", "label", "uri"])
            writer.writerows([i, o.id, f"{o.score:.6f}", o.label, o.uri] for i, o in enumerate(found, 1))
        console.print(f"{len(found)} outliers written to {out}")


@app.command()
@_handled
def report(
    dataset: str = DatasetOpt,
    out: Path = typer.Option(Path("report.md"), "--out", "-o", help="Markdown file; PNGs are written beside it."),
    limit: int = typer.Option(20, help="Outliers and suspected label errors listed."),
    round_job: str = typer.Option("", "--round-job", help="Job id of the round whose per-cluster stats to show."),
    projection: str = typer.Option("pca", help="pca, tsne or umap."),
    duplicate_threshold: float = typer.Option(0.0, help="Cosine for near-duplicates (0: default 0.95)."),
) -> None:
    """Dataset health report: class balance, clusters, duplicates, outliers, label errors, projection."""
    from tagalong.report import build_report

    path = build_report(STATE.client, dataset, out, limit=limit, duplicate_threshold=duplicate_threshold,
                        projection=projection, round_job_id=round_job)
    console.print(f"report written to {path}")


@app.command("import-labelstudio")
@_handled
def import_labelstudio(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, help="Label Studio JSON export."),
    dataset: str = DatasetOpt,
    annotator: str = typer.Option("label-studio", help="Recorded as the labels' method."),
    from_name: str = typer.Option("", help="The <Choices> control to read (default: any)."),
    image_url_prefix: str = typer.Option("", help="Prefix the export put before uris (to match tasks by image)."),
) -> None:
    """Import a Label Studio JSON export's choices as human labels (idempotent; all-or-nothing on errors)."""
    from tagalong.labelstudio import import_labels

    summary = import_labels(STATE.client, dataset, file, annotator=annotator, from_name=from_name or None,
                            image_url_prefix=image_url_prefix)
    console.print(summary.line())


@app.command("label-errors")
@_handled
def label_errors(dataset: str = DatasetOpt, limit: int = typer.Option(20, help="How many.")) -> None:
    """Human labels that disagree with their neighbourhood."""
    table = Table("id", "given", "suggested", "score", "uri", title="suspected label errors")
    for c in STATE.client.label_errors(dataset, limit):
        table.add_row(str(c.id), c.given_label, c.suggested_label, f"{c.score:.3f}", c.uri)
    console.print(table)


@app.command("zero-shot")
@_handled
def zero_shot(
    classes: list[str] = typer.Argument(..., help="Class names (two or more)."),
    dataset: str = DatasetOpt,
    write: bool = typer.Option(False, help="Write confident predictions as ZERO_SHOT labels."),
    limit: int = typer.Option(20, help="Predictions shown."),
) -> None:
    """Zero-shot classification from class names (needs a CLIP model)."""
    reply = STATE.client.zero_shot(dataset, classes, write_labels=write, limit=limit)
    table = Table("id", "label", "confidence", "uri", title=f"zero-shot ({reply.labels_written} labels written)")
    for p in reply.predictions:
        table.add_row(str(p.id), p.label, f"{p.confidence:.3f}", p.uri)
    console.print(table)


@app.command()
@_handled
def job(job_id: str, as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Show a job."""
    j = STATE.client.get_job(job_id)
    if as_json:
        from google.protobuf.json_format import MessageToDict

        console.print_json(json.dumps(MessageToDict(j)))
    else:
        _job_table(j)


if __name__ == "__main__":
    app()
