"""`make demo`: the main job end to end on real photos, through the public API only.

Starts the local stack when no gateway answers, ingests a real labelled collection (Fashion-MNIST from
Debian by default; `--data DIR` for any folder with one sub-folder per class, e.g. CIFAR-10), reveals a
few labels per class as the "human" input, runs labelling rounds whose review queue is answered by the
held-back true labels, and prints per round: labels committed, accuracy against the truth, coverage.
Then a search, a duplicate report and a projection PNG.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import grpc
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from tagalong.cli.files import plot_projection
from tagalong.datasets import LabeledImage, fashion_mnist, folder_per_class
from tagalong.runtime.ids import content_id, content_sha256
from tagalong.sdk import Client, TagalongError
from tagalong.v1 import gateway_pb2

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "var" / "demo"
console = Console()


def _gateway_up(address: str) -> bool:
    from tagalong.devstack.__main__ import wait_serving

    return wait_serving(address, timeout=1.0)


def _load(args: argparse.Namespace) -> list[LabeledImage]:
    if args.data:
        items = folder_per_class(Path(args.data), per_class=args.per_class)
        console.print(f"data: {len(items)} images from {args.data} (folder per class)")
    else:
        items = fashion_mnist("test", per_class=args.per_class)
        console.print(f"data: {len(items)} Fashion-MNIST test images (Debian dataset-fashion-mnist), "
                      f"{args.per_class} per class")
    # Identical bytes are one stored image; keep the first.
    seen: set[str] = set()
    unique = []
    for item in items:
        digest = content_sha256(item.data)
        if digest not in seen:
            seen.add(digest)
            unique.append(item)
    return unique


def _model_note(client: Client) -> tuple[str, bool]:
    """The embedding model in use and whether it has a text tower."""
    reply = client.embed_images([_tiny_png()])
    model = reply.model_id
    try:
        client.embed_texts(["a photo"])
        return model, True
    except TagalongError as err:
        if err.code == grpc.StatusCode.FAILED_PRECONDITION:
            return model, False
        raise


def _tiny_png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (120, 40, 200)).save(buf, format="PNG")
    return buf.getvalue()


def _source_name(value: object) -> str:
    return str(value).lower().removeprefix("label_source_")


def _score(client: Client, dataset: str, truth: dict[int, str]) -> dict[str, float]:
    """Accuracy of machine labels against the truth, and coverage, from the dataset's export."""
    rows = [json.loads(line) for line in client.export(dataset, "jsonl").decode().splitlines() if line.strip()]
    human = machine = correct = 0
    for row in rows:
        source = _source_name(row.get("label_source", ""))
        if source == "human":
            human += 1
        elif source in ("propagated", "zero_shot") and row.get("label"):
            machine += 1
            correct += int(truth.get(int(row["id"])) == row["label"])
    total = max(len(rows), 1)
    return {"rows": len(rows), "human": human, "machine": machine,
            "accuracy": correct / machine if machine else 0.0, "coverage": (human + machine) / total}


def _ingest(client: Client, dataset: str, items: list[LabeledImage]) -> None:
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeRemainingColumn(), console=console) as progress:
        send = progress.add_task("upload", total=len(items))
        reply = client.ingest(dataset, [gateway_pb2.IngestItem(content=i.data, name=i.name) for i in items],
                              on_item=lambda: progress.advance(send))
        stored = progress.add_task("embed + store", total=len(items))
        job = client.wait(reply.job_id, on_update=lambda j: progress.update(stored, completed=j.done + j.failed))
    console.print(f"ingest job {job.id}: {job.done} stored, {job.failed} failed, {job.rate:.0f} images/s")
    if job.failed:
        for failure in job.failures[:5]:
            console.print(f"  failed: {failure.item}: {failure.reason}")


def run(args: argparse.Namespace) -> int:
    items = _load(args)
    truth = {content_id(i.data): i.label for i in items}
    classes = sorted({i.label for i in items})
    started_stack = False
    if not _gateway_up(args.address):
        console.print("no gateway answers: starting the local stack (make up)")
        subprocess.run([sys.executable, "-m", "tagalong.devstack", "up"], check=True, cwd=ROOT)
        started_stack = True
    try:
        with Client(args.address, timeout=120) as client:
            return _demo(client, args, items, truth, classes)
    finally:
        if started_stack and not args.keep_up:
            subprocess.run([sys.executable, "-m", "tagalong.devstack", "down"], check=False, cwd=ROOT)


def _demo(client: Client, args: argparse.Namespace, items: list[LabeledImage], truth: dict[int, str],
          classes: list[str]) -> int:
    model, has_text = _model_note(client)
    if has_text:
        console.print(f"embedding model: [bold]{model}[/] (CLIP: text search and zero-shot available)")
    else:
        console.print(f"embedding model: [bold]{model}[/] (offline EfficientNet-Lite0, image-only). Text search and "
                      "zero-shot need a CLIP model: export one with `python -m services.embedder.export "
                      "openai/clip-vit-base-patch32 --out DIR` where the weights are available, and set "
                      "TAGALONG_EMBEDDER_MODEL_DIR.")
    dataset = args.dataset or f"demo_{int(time.time())}"
    client.create_dataset(dataset, classes)
    console.print(f"dataset: {dataset} ({len(classes)} classes)")
    _ingest(client, dataset, items)

    rng = random.Random(args.seed)
    by_class: dict[str, list[LabeledImage]] = defaultdict(list)
    for item in items:
        by_class[item.label].append(item)
    revealed = [x for label in classes for x in rng.sample(by_class[label], min(args.labels_per_class,
                                                                                  len(by_class[label])))]
    client.submit_labels(dataset, [(content_sha256(x.data), x.label) for x in revealed], annotator="demo-seed")
    console.print(f"human input: {len(revealed)} labels revealed ({args.labels_per_class} per class); "
                  f"the other {len(items) - len(revealed)} are held back as the truth")

    table = Table(title="labelling rounds (review queue answered by the held-back truth)")
    for col in ("round", "human labels", "machine labels", "accuracy of machine labels", "coverage", "k",
                "seconds"):
        table.add_column(col, justify="right")
    for round_no in range(1, args.rounds + 1):
        start = client.start_round(dataset, review_batch_size=args.review_size, seed=args.seed + round_no)
        with console.status(f"round {round_no}") as status:
            job = client.wait(start.job_id, on_update=lambda j, s=status, n=round_no: s.update(
                f"round {n}: {j.stage or 'queued'}"))
        summary = job.round_summary
        score = _score(client, dataset, truth)
        table.add_row(str(round_no), str(score["human"]), str(score["machine"]), f"{score['accuracy']:.1%}",
                      f"{score['coverage']:.1%}", str(summary.k), f"{summary.duration_seconds:.1f}")
        queue = client.review_queue(dataset, round_id=start.round_id)
        answers = [(r.id, truth[r.id]) for r in queue.items if r.id in truth]
        if answers and round_no < args.rounds:
            client.submit_labels(dataset, answers, annotator="demo-review")
            reasons = Counter(r.reason.split(" ")[0] for r in queue.items)
            console.print(f"  round {round_no}: {len(answers)} review items answered ({dict(reasons)})")
    console.print(table)

    probe = items[0]
    hits = client.search_image(dataset, content_id(probe.data), top_k=6)
    same = sum(truth.get(h.id) == probe.label for h in hits[1:])
    console.print(f"search by image ({probe.name}, a {probe.label}): {same} of {len(hits) - 1} nearest neighbours "
                  f"are also {probe.label}: " + ", ".join(f"{truth.get(h.id, '?')} {h.score:.2f}" for h in hits[1:]))
    if has_text:
        text_hits = client.search_text(dataset, f"a photo of a {classes[0]}", top_k=5)
        console.print(f"search by text 'a photo of a {classes[0]}': "
                      + ", ".join(truth.get(h.id, "?") for h in text_hits))
    groups = client.find_duplicates(dataset, threshold=args.dup_threshold)
    console.print(f"near-duplicates (cosine >= {args.dup_threshold}): {len(groups)} groups, "
                  f"{sum(len(g.ids) for g in groups)} images"
                  + (f"; largest: {', '.join(g.uris[0] for g in groups[:3])}" if groups else ""))
    projection = client.project(dataset, "pca", dims=2)
    OUT.mkdir(parents=True, exist_ok=True)
    png = OUT / f"{dataset}_projection.png"
    plot_projection(list(projection.points), png, f"{dataset}: PCA projection coloured by label")
    console.print(f"projection: {len(projection.points)} points -> {png}")
    export = OUT / f"{dataset}.jsonl"
    client.export(dataset, "jsonl", out=export)
    console.print(f"labels exported to {export}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tagalong.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="folder with one sub-folder per class (default: Fashion-MNIST)")
    parser.add_argument("--per-class", type=int, default=200, help="images per class")
    parser.add_argument("--labels-per-class", type=int, default=3, help="labels revealed as human input")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--review-size", type=int, default=30)
    parser.add_argument("--dup-threshold", type=float, default=0.97)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dataset", default="", help="dataset name (default: demo_<time>)")
    parser.add_argument("--address", default="127.0.0.1:50050")
    parser.add_argument("--keep-up", action="store_true", help="leave the stack running afterwards")
    return run(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
