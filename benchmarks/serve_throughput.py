"""Serving throughput: the OpenAI-compatible server (continuous batching) against a sequential baseline.

Baseline: one request at a time through plain `generate` (no engine, no HTTP). Server: `vlkit serve` in a
subprocess on 127.0.0.1, driven by concurrent clients at concurrency 1, 4 and 16; during the concurrency-16 run
a probe measures GET /health latency. Prints one JSON object.

    python benchmarks/serve_throughput.py                 # tiny random model built on the fly
    python benchmarks/serve_throughput.py --ckpt runs/quickstart/final --requests 64 --max-tokens 64
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

QUESTIONS = ["Describe the image.", "What color is the circle?", "How many objects are there?",
             "Where is the blue star?", "What shape is it?"]


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def build_tiny_checkpoint(directory: Path) -> Path:
    """A width-64 model with perturbed random weights: answers run to max_tokens, like a long generation."""
    import torch

    from vlkit.config import tiny_model_config
    from vlkit.models.vlm import VisionLanguageModel
    from vlkit.pipeline import Pipeline
    from vlkit.tokenizer import Tokenizer

    corpus = QUESTIONS + ["red green blue yellow circle square triangle star left right above below 0 1 2 3 4 5"]
    tok = Tokenizer.train(corpus * 20, vocab_size=320)
    torch.manual_seed(0)
    cfg = tiny_model_config("mlp", vocab_size=len(tok))
    cfg.image_token_id, cfg.pad_token_id = tok.image_pad_id, tok.pad_id
    model = VisionLanguageModel(cfg).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.3)
    return Pipeline(model, tok).save_pretrained(directory)


def make_requests(n: int, max_tokens: int) -> list[dict]:
    rng = np.random.default_rng(0)
    out = []
    for k in range(n):
        arr = rng.integers(0, 255, (48 + 8 * (k % 4), 64, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr, "RGB").save(buf, "PNG")
        url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
        out.append({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": QUESTIONS[k % len(QUESTIONS)]}]}],
            "temperature": 0, "max_tokens": max_tokens})
    return out


def baseline(ckpt: Path, requests: list[dict]) -> dict:
    """Sequential: decode the image, build the prompt, plain generate; one request after the other."""
    import vlkit
    from vlkit.chat import normalize_messages
    from vlkit.images import decode_base64
    from vlkit.infer.generate import generate

    pipe = vlkit.load(ckpt)
    latencies, tokens = [], 0
    start = time.perf_counter()
    for req in requests:
        t0 = time.perf_counter()
        _, refs = normalize_messages(req["messages"])
        images = [decode_base64(r["url"].split(",", 1)[1]) for r in refs]
        pixels = [pipe.image_tensor(im) for im in images]
        ids = pipe.prompt_ids(req["messages"], pixels)
        gen = pipe.generation_config(max_new_tokens=req["max_tokens"])
        out = generate(pipe.model, [ids], [pixels], gen, pipe.tokenizer.pad_id)[0]
        pipe.tokenizer.decode(out)
        tokens += len(out) + (1 if len(out) < req["max_tokens"] else 0)  # the stop token counts, as in usage
        latencies.append(time.perf_counter() - t0)
    wall = time.perf_counter() - start
    return summary(latencies, tokens, wall)


def summary(latencies: list[float], tokens: int, wall: float) -> dict:
    return {"requests": len(latencies), "wall_s": round(wall, 3), "requests_per_s": round(len(latencies) / wall, 2),
            "generated_tokens_per_s": round(tokens / wall, 1),
            "latency_p50_ms": round(1000 * percentile(latencies, 50), 1),
            "latency_p99_ms": round(1000 * percentile(latencies, 99), 1)}


async def run_clients(url: str, requests: list[dict], concurrency: int, probe_health: bool) -> dict:
    import httpx

    queue: asyncio.Queue = asyncio.Queue()
    for r in requests:
        queue.put_nowait(r)
    latencies: list[float] = []
    tokens = 0
    health: list[float] = []
    done = asyncio.Event()

    async def worker(client):
        nonlocal tokens
        while True:
            try:
                req = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            t0 = time.perf_counter()
            r = await client.post("/v1/chat/completions", json=req)
            r.raise_for_status()
            latencies.append(time.perf_counter() - t0)
            tokens += r.json()["usage"]["completion_tokens"]

    async def prober(client):
        await asyncio.sleep(0.2)  # let the batch fill up first
        while not done.is_set():
            t0 = time.perf_counter()
            (await client.get("/health")).raise_for_status()
            health.append(time.perf_counter() - t0)
            await asyncio.sleep(0.02)

    limits = httpx.Limits(max_connections=concurrency + 2)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client, \
            httpx.AsyncClient(base_url=url, timeout=60) as probe_client:
        probe = asyncio.create_task(prober(probe_client)) if probe_health else None
        start = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        wall = time.perf_counter() - start
        done.set()
        if probe is not None:
            await probe
    out = summary(latencies, tokens, wall)
    if probe_health:
        out["health_probes"] = len(health)
        out["health_p50_ms"] = round(1000 * percentile(health, 50), 2)
        out["health_p99_ms"] = round(1000 * percentile(health, 99), 2)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", default=None, help="checkpoint (default: a tiny random model built here)")
    ap.add_argument("--requests", type=int, default=96)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads for baseline and server")
    args = ap.parse_args()

    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(args.ckpt) if args.ckpt else build_tiny_checkpoint(Path(tmp) / "tiny")
        requests = make_requests(args.requests, args.max_tokens)
        result: dict = {"device": "cpu", "torch_threads": args.threads, "max_tokens": args.max_tokens,
                        "baseline_sequential": baseline(ckpt, requests)}
        port = free_port()
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        server = subprocess.Popen([sys.executable, "-m", "vlkit", "serve", str(ckpt), "--port", str(port),
                                   "--max-batch-size", "16"], env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE)
        url = f"http://127.0.0.1:{port}"
        try:
            import httpx

            deadline = time.monotonic() + 120
            while True:
                try:
                    if httpx.get(url + "/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the server did not start: " + server.stderr.read().decode()[-2000:])
                time.sleep(0.2)
            asyncio.run(run_clients(url, requests[:4], 4, False))  # warm-up
            for c in (1, 4, 16):
                result[f"server_concurrency_{c}"] = asyncio.run(run_clients(url, requests, c, probe_health=c == 16))
        finally:
            server.terminate()
            server.wait(30)
    base = result["baseline_sequential"]["generated_tokens_per_s"]
    for c in (1, 4, 16):
        r = result[f"server_concurrency_{c}"]
        r["speedup_vs_baseline"] = round(r["generated_tokens_per_s"] / base, 2)
    result["goal_4x_at_16"] = result["server_concurrency_16"]["speedup_vs_baseline"] >= 4.0
    result["goal_health_p99_below_50ms"] = result["server_concurrency_16"]["health_p99_ms"] < 50.0
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
