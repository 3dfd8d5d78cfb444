"""Tiny checkpoints for the serving tests: built from config in seconds, nothing downloaded."""
from __future__ import annotations

import base64
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vlkit.chat import ChatProcessor
from vlkit.config import tiny_model_config
from vlkit.models.vlm import VisionLanguageModel
from vlkit.pipeline import Pipeline
from vlkit.tokenizer import Tokenizer

from tests.conftest import CORPUS

BOX_QUESTION = "Where is the red circle?"
BOX_ANSWER = "<ref>the red circle</ref><box>(120,45),(300,999)</box>"


def tokenizer() -> Tokenizer:
    return Tokenizer.train(CORPUS * 10 + [BOX_QUESTION + " " + BOX_ANSWER] * 5, vocab_size=320)


def _model(tok: Tokenizer, seed: int, context: int = 512, video: bool = False) -> VisionLanguageModel:
    torch.manual_seed(seed)
    cfg = tiny_model_config("mlp", vocab_size=len(tok))
    cfg.image_token_id = tok.image_pad_id
    cfg.text.max_position_embeddings = context
    cfg.max_images = 2
    if video:  # clips whole into <|video_pad|> slots, as models trained now have (else: frame by frame)
        cfg.video_token_id, cfg.max_images = tok.video_pad_id, 8
    return VisionLanguageModel(cfg).eval()


def random_pipeline(seed: int = 0, context: int = 512, video: bool = False) -> Pipeline:
    """Random weights, perturbed so greedy answers are long, varied token strings (they rarely stop); `video`:
    with a video token."""
    tok = tokenizer()
    model = _model(tok, seed, context, video)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.3)
    return Pipeline(model, tok)


def image_png(color=(200, 30, 30), size=(48, 40), seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    arr = np.zeros((size[1], size[0], 3), np.uint8) + np.array(color, np.uint8)
    arr = np.clip(arr.astype(int) + rng.integers(-20, 20, arr.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, "PNG")
    return buf.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def vision_messages(url: str, text: str = BOX_QUESTION) -> list:
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": text}]}]


def png_with_size(width: int, height: int) -> bytes:
    """A small valid PNG whose header claims width x height (a decompression bomb's header)."""
    png = bytearray(image_png())
    ihdr = png[12:29]  # type + 13 data bytes
    ihdr[4:12] = struct.pack(">II", width, height)
    png[12:29] = ihdr
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(png)


def box_pipeline(steps: int = 100) -> Pipeline:
    """Trained a few dozen steps to answer BOX_QUESTION about an image with BOX_ANSWER (a grounding answer
    that the server parses and the playground draws)."""
    tok = tokenizer()
    model = _model(tok, 0).train()
    pipe = Pipeline(model, tok)
    proc = ChatProcessor(tok)
    n = model.tokens_per_image(model.cfg.vision.image_size, model.cfg.vision.image_size)
    colors = [(200, 30, 30), (20, 180, 40), (30, 40, 220), (230, 230, 230), (10, 10, 10), (200, 200, 0)]
    pixels = [pipe.image_tensor(Image.open(io.BytesIO(image_png(c, seed=s)))) for s, c in enumerate(colors)]
    samples = [([("user", "<image>\n" + BOX_QUESTION), ("assistant", BOX_ANSWER)], 1)]
    enc = [proc.encode(turns, [n] * k) for turns, k in samples]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is several times faster than contended threads
    for step in range(steps):
        for (turns, k), e in zip(samples, enc):
            ids = torch.tensor([e.input_ids])
            labels = torch.tensor([e.labels])
            loss = model(ids, [pixels[step % len(pixels)]] * k, labels=labels)["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
    torch.set_num_threads(threads)
    model.eval()
    return pipe


def save(pipe: Pipeline, path: Path) -> Path:
    return pipe.save_pretrained(path)


class ServerThread:
    """uvicorn serving `app` on 127.0.0.1 (a free port) in a background thread, configured as `vlkit serve`."""

    def __init__(self, app):
        import socket

        import uvicorn

        from vlkit.apps.serve.app import uvicorn_config

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn_config(app, log_level="warning", lifespan="on"))  # as `vlkit serve`
        self.thread = None

    def __enter__(self) -> "ServerThread":
        import threading
        import time

        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()


def one_torch_thread():
    """Fixture body: tiny matrices run much faster on one intra-op thread when the 2 cores are contended;
    the previous setting is restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
