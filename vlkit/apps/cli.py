"""The `vlkit` command. Argument parsing only; every handler lives in the layer that does the work."""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Iterable, Iterator

from vlkit.apps.quickstart import VISION_TARGETS
from vlkit.data.sources import FORMATS
from vlkit.config.synth import ASPECTS, SPLITS
from vlkit.eval.answer_formats import ANSWER_FORMATS


def _csv(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def cmd_quickstart(a: argparse.Namespace) -> None:
    from vlkit.apps.quickstart import quickstart

    quickstart(out=a.out, fast=a.fast, seed=a.seed, vision_target=a.vision_target)


def cmd_data_synth(a: argparse.Namespace) -> None:
    from vlkit.data.synth import generate_dataset

    generate_dataset(a.out, n=a.n, tasks=_csv(a.tasks), split=a.split, seed=a.seed, size=a.size,
                     fmt=a.format, heldout=a.heldout, aspect=a.aspect, video_frames=a.video_frames)


def cmd_data_inspect(a: argparse.Namespace) -> None:
    from vlkit.data.synth import inspect_dataset

    inspect_dataset(a.dir, out_png=a.out)


def cmd_train(a: argparse.Namespace) -> None:
    from vlkit.train.trainer import train_from_recipe

    train_from_recipe(a.recipe, overrides=a.overrides, resume=a.resume)


def cmd_eval(a: argparse.Namespace) -> None:
    import logging

    import vlkit
    from vlkit.eval.runner import run_eval

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    pipe = vlkit.load(a.ckpt)
    run_eval(pipe, a.data, tasks=_csv(a.tasks), batch_size=a.batch_size, limit=a.limit, out_dir=a.out,
             blind=a.blind, answer_format=a.answer_format)


def cmd_inspect(a: argparse.Namespace) -> None:
    import json

    import vlkit
    from vlkit.eval.diagnose import inspect_checkpoint

    print(json.dumps(inspect_checkpoint(vlkit.load(a.ckpt), a.data, n=a.n, blind_limit=a.blind_limit), indent=2))


def cmd_chat(a: argparse.Namespace) -> None:
    from vlkit.apps.repl import repl

    repl(a.ckpt, image=a.image, max_new_tokens=a.max_new_tokens, temperature=a.temperature)


def cmd_serve(a: argparse.Namespace) -> None:
    from vlkit.apps.serve.app import serve

    serve(a.ckpt, host=a.host, port=a.port, api_key=a.api_key, allowed_local_media_path=a.allowed_local_media_path,
          allow_remote_media=a.allow_remote_media, max_batch_size=a.max_batch_size)


def cmd_generate_image(a: argparse.Namespace) -> None:
    import vlkit

    pipe = vlkit.load(a.ckpt)
    given = {k: getattr(a, k) for k in ("cfg_scale", "temperature", "top_k", "top_p") if getattr(a, k) is not None}
    img = pipe.generate_image(a.prompt, seed=a.seed, **given)  # unset flags: the library's defaults
    img.save(a.output)
    print(f"wrote {a.output}")


def cmd_segment(a: argparse.Namespace) -> None:
    import vlkit
    from vlkit.infer.segment import save_mask

    pipe = vlkit.load(a.ckpt)
    classes = _csv(a.classes) or []
    mask = pipe.segment(a.image, classes=classes, refine=not a.no_refine)
    save_mask(mask, a.image, classes, a.output)


def cmd_export(a: argparse.Namespace) -> None:
    import vlkit

    vlkit.export(vlkit.load(a.ckpt), a.output, format=a.format)
    print(f"exported to {a.output}")


def cmd_build(a: argparse.Namespace) -> None:
    from vlkit.hf import build_from_backbones

    build_from_backbones(a.vision, a.lm, connector=a.connector, out=a.output)


class _Keys:
    """argparse choices read from a registry only when a value is checked or listed: the model registries import
    torch, which `vlkit --help` need not wait for. The argument needs a metavar (argparse lists choices otherwise)."""

    def __init__(self, registry: Callable[[], Iterable[str]]):
        self._registry = registry

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._registry()))

    def __contains__(self, key: object) -> bool:
        return key in self._registry()


def _connectors() -> Iterable[str]:
    from vlkit.models.connectors import CONNECTORS

    return CONNECTORS


def _exporters() -> Iterable[str]:
    from vlkit.hf.export import EXPORTERS

    return EXPORTERS


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vlkit", description="Build, train, evaluate and serve vision-language models.")
    sub = p.add_subparsers(dest="command", required=True)
    for add in (_add_quickstart, _add_data, _add_train, _add_eval, _add_inspect, _add_chat, _add_serve,
                _add_generate_image, _add_segment, _add_export, _add_build):
        add(sub)
    return p


def _add_quickstart(sub) -> None:
    q = sub.add_parser("quickstart", help="synthetic data -> tokenizer -> train -> eval -> report")
    q.add_argument("--out", default="runs/quickstart")
    q.add_argument("--fast", action="store_true", help="tiny settings (a smoke run of a minute or two)")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--vision-target", choices=VISION_TARGETS, default="none",
                   help="codes: also train a visual tokenizer and a VLUAS model (text-to-image, segmentation)")
    q.set_defaults(func=cmd_quickstart)


def _add_data(sub) -> None:
    d = sub.add_parser("data", help="synthetic data and data inspection")
    dsub = d.add_subparsers(dest="data_command", required=True)
    s = dsub.add_parser("synth", help="generate synthetic samples")
    s.add_argument("--out", required=True)
    s.add_argument("--n", type=int, default=1000)
    s.add_argument("--tasks", default=None, help="comma-separated, e.g. vqa,grounding,ocr (default: all)")
    s.add_argument("--split", choices=SPLITS, default="train")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--size", type=int, default=64)
    s.add_argument("--format", choices=FORMATS, default="jsonl")
    s.add_argument("--heldout", default="default", help="held-out (color,shape) set: default | none")
    s.add_argument("--aspect", choices=ASPECTS, default="square",
                   help="canvas of the text images (ocr, chart, doc): wide/tall at native resolution, mixed: one "
                        "per sample (default square)")
    s.add_argument("--video-frames", type=int, default=8, help="frames per video_qa clip (4..64, default 8)")
    s.set_defaults(func=cmd_data_synth)
    i = dsub.add_parser("inspect", help="counts per task and a PNG grid of samples")
    i.add_argument("dir")
    i.add_argument("--out", default=None, help="PNG path (default DIR/inspect.png)")
    i.set_defaults(func=cmd_data_inspect)


def _add_train(sub) -> None:
    t = sub.add_parser("train", help="train from a YAML recipe")
    t.add_argument("recipe")
    t.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    t.add_argument("--resume", action="store_true")
    t.set_defaults(func=cmd_train)


def _add_eval(sub) -> None:
    e = sub.add_parser("eval", help="evaluate a checkpoint")
    e.add_argument("ckpt")
    e.add_argument("--data", required=True)
    e.add_argument("--tasks", default=None)
    e.add_argument("--batch-size", type=int, default=32)
    e.add_argument("--limit", type=int, default=None)
    e.add_argument("--out", default=None, help="results folder (default CKPT/eval)")
    e.add_argument("--blind", action="store_true",
                   help="also score with every image replaced by a mid-grey one of the same size; report with "
                        "images vs blind, the difference with a 95%% paired CI, and flag tasks not beating blind")
    e.add_argument("--answer-format", default="plain", choices=sorted(ANSWER_FORMATS),
                   help="ask for this completion format and read the answer from its <answer> part; completions "
                        "not following it score as wrong and are counted (docs/rl.md); default plain")
    e.set_defaults(func=cmd_eval)


def _add_inspect(sub) -> None:
    n = sub.add_parser("inspect", help="does a checkpoint look at its images? image-token scale and "
                                       "image dependence, blind-baseline gap")
    n.add_argument("ckpt")
    n.add_argument("--data", required=True, help="a data folder whose images (and samples) to use")
    n.add_argument("--n", type=int, default=64, help="images to compare")
    n.add_argument("--blind-limit", type=int, default=None,
                   help="also score this many samples per task with images and blind")
    n.set_defaults(func=cmd_inspect)


def _add_chat(sub) -> None:
    c = sub.add_parser("chat", help="chat in the terminal")
    c.add_argument("ckpt")
    c.add_argument("--image", default=None)
    c.add_argument("--max-new-tokens", type=int, default=128)
    c.add_argument("--temperature", type=float, default=0.0)
    c.set_defaults(func=cmd_chat)


def _add_serve(sub) -> None:
    v = sub.add_parser("serve", help="OpenAI-compatible server")
    v.add_argument("ckpt")
    v.add_argument("--host", default="127.0.0.1")
    v.add_argument("--port", type=int, default=8000)
    v.add_argument("--api-key", default=None)
    v.add_argument("--allowed-local-media-path", default=None)
    v.add_argument("--allow-remote-media", action="store_true")
    v.add_argument("--max-batch-size", type=int, default=16)
    v.set_defaults(func=cmd_serve)


def _add_generate_image(sub) -> None:
    g = sub.add_parser("generate-image", help="text-to-image (VLUAS models)")
    g.add_argument("ckpt")
    g.add_argument("prompt")
    g.add_argument("-o", "--output", default="out.png")
    for flag, kind in (("--cfg-scale", float), ("--temperature", float), ("--top-k", int), ("--top-p", float)):
        g.add_argument(flag, type=kind, help="default: pipe.generate_image's (docs/vision_as_target.md)")
    g.add_argument("--seed", type=int, default=0)
    g.set_defaults(func=cmd_generate_image)


def _add_segment(sub) -> None:
    m = sub.add_parser("segment", help="dense prediction (NTP-M)")
    m.add_argument("ckpt")
    m.add_argument("image")
    m.add_argument("--classes", required=True)
    m.add_argument("-o", "--output", default="mask.png")
    m.add_argument("--no-refine", action="store_true",
                   help="skip the edge-aware refinement: plain bilinear upsampling of the per-patch scores")
    m.set_defaults(func=cmd_segment)


def _add_export(sub) -> None:
    x = sub.add_parser("export", help="export a checkpoint")
    x.add_argument("ckpt")
    x.add_argument("--format", default="llava-hf", choices=_Keys(_exporters), metavar="FORMAT",
                   help="one of %(choices)s (default llava-hf)")
    x.add_argument("-o", "--output", required=True)
    x.set_defaults(func=cmd_export)


def _add_build(sub) -> None:
    b = sub.add_parser("build", help="compose a VLM from real backbones")
    b.add_argument("--vision", required=True)
    b.add_argument("--lm", required=True)
    b.add_argument("--connector", default="mlp", choices=_Keys(_connectors), metavar="CONNECTOR",
                   help="one of %(choices)s (default mlp)")
    b.add_argument("-o", "--output", required=True)
    b.set_defaults(func=cmd_build)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from vlkit.errors import UserError

    try:
        args.func(args)
    except UserError as exc:  # a mistake the user can fix: one clear line, no traceback
        print(f"vlkit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vlkit: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
