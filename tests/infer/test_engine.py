"""The serving engine: continuous batching gives every request the tokens it gets alone."""
import io
import threading
import time

import pytest
from PIL import Image

from vlkit.errors import ImageTokenError, UserError
from vlkit.infer.engine import ContextLengthError, Engine, QueueFullError, SamplingParams, TooManyImagesError
from vlkit.infer.generate import generate

from tests.apps.serve import helpers

QUESTIONS = ["Describe the image.", "What color is the circle?", "How many objects are there?", "What?",
             "Where is the blue star?", "What shape is it? Describe it in a few words please."]


@pytest.fixture(autouse=True)
def one_torch_thread():
    yield from helpers.one_torch_thread()


@pytest.fixture(scope="module")
def pipe():
    return helpers.random_pipeline()


def _image(seed):
    colors = [(200, 30, 30), (20, 180, 40), (30, 40, 220), (230, 230, 230)]
    return Image.open(io.BytesIO(helpers.image_png(colors[seed % 4], size=(40 + 8 * seed, 48), seed=seed)))


def _request(engine, k):
    images = [_image(k)] if k % 3 != 2 else []  # some requests have no image
    return engine.prepare(QUESTIONS[k % len(QUESTIONS)], images)


def _block(engine):
    """Occupy the model thread until the returned event is set (requests meanwhile wait in the queue)."""
    started, gate = threading.Event(), threading.Event()
    engine.call(lambda: (started.set(), gate.wait(10)))
    assert started.wait(10)
    return gate


def _alone(pipe, ids, pixels, max_new_tokens, **kw):
    gen = pipe.generation_config(max_new_tokens=max_new_tokens, **kw)
    return generate(pipe.model, [ids], [pixels], gen, pipe.tokenizer.pad_id)[0]


def test_concurrent_requests_equal_alone(pipe):
    with Engine(pipe, max_batch_size=8) as engine:
        reqs = [_request(engine, k) for k in range(8)]
        budgets = [5 + 3 * k for k in range(8)]  # different lengths: rows leave at different steps
        results = [None] * 8

        def run(k):
            results[k] = engine.generate(*reqs[k], SamplingParams(max_new_tokens=budgets[k]), timeout=60)

        threads = [threading.Thread(target=run, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert engine.max_rows_seen > 1  # they really shared batches
    for k, ((ids, px), res) in enumerate(zip(reqs, results)):
        alone = _alone(pipe, ids, px, budgets[k])
        assert res.token_ids == alone, k
        assert res.prompt_tokens == len(ids)
        assert res.finish_reason in ("stop", "length")
    assert len({tuple(r.token_ids[:5]) for r in results}) > 2  # the answers differ: a row mix-up would show


def test_request_joining_mid_decode_gets_its_own_tokens(pipe):
    with Engine(pipe, max_batch_size=4) as engine:
        # A must still be answering at step 6: the first request whose answer alone is longer (random weights)
        a = next(k for k in range(len(QUESTIONS)) if len(_alone(pipe, *_request(engine, k), 40)) > 7)
        a_ids, a_px = _request(engine, a)
        b_ids, b_px = _request(engine, a + 1)
        gate = threading.Event()
        # hold the model thread after the 6th decode step so that B surely joins while A is mid-answer
        original = engine._decode_step

        def decode_step():
            original()
            if engine.steps == 6:
                gate.wait(10)

        engine._decode_step = decode_step
        out = {}
        ta = threading.Thread(target=lambda: out.setdefault("a", engine.generate(a_ids, a_px, SamplingParams(40))))
        ta.start()
        deadline = time.monotonic() + 30
        while engine.steps < 6 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert engine.num_running == 1
        tb = threading.Thread(target=lambda: out.setdefault("b", engine.generate(b_ids, b_px, SamplingParams(12))))
        tb.start()
        while engine.num_waiting == 0 and "b" not in out and time.monotonic() < deadline:
            time.sleep(0.005)
        gate.set()
        ta.join(30)
        tb.join(30)
        assert engine.max_rows_seen == 2
    assert out["a"].token_ids == _alone(pipe, a_ids, a_px, 40)
    assert out["b"].token_ids == _alone(pipe, b_ids, b_px, 12)
    assert len(out["a"].token_ids) > 6  # A was mid-answer when B joined (the gate held it at step 6)


def test_finished_rows_leave_the_batch(pipe):
    with Engine(pipe, max_batch_size=4) as engine:
        sizes = []
        original = pipe.model.forward_step

        def recording(embeds, cache, *args, **kw):
            out = original(embeds, cache, *args, **kw)
            sizes.append((embeds.shape[0], cache.length))
            return out

        pipe.model.forward_step = recording
        try:
            (ids_a, px_a), (ids_b, px_b) = _request(engine, 0), _request(engine, 2)
            gate = _block(engine)  # both requests queue up and are prefilled together
            res = {}
            ts = [threading.Thread(target=lambda: res.setdefault("a", engine.generate(ids_a, px_a, SamplingParams(3)))),
                  threading.Thread(target=lambda: res.setdefault("b", engine.generate(ids_b, px_b, SamplingParams(10))))]
            for t in ts:
                t.start()
            while engine.num_waiting < 2:
                time.sleep(0.005)
            gate.set()
            for t in ts:
                t.join(30)
        finally:
            del pipe.model.forward_step
    # prefill (2 rows), 2 decode steps with both, then B alone for its remaining 7 tokens
    assert [s for s, _ in sizes] == [2, 2, 2] + [1] * 7
    # after A left, the cache keeps only B's columns (the left padding B had for A's longer prompt is trimmed)
    assert sizes[3][1] == len(ids_b) + 3
    assert len(res["a"].token_ids) == 3 and len(res["b"].token_ids) == 10
    assert res["b"].token_ids == _alone(pipe, ids_b, px_b, 10)


def test_queue_full_is_an_error_and_the_engine_recovers(pipe):
    with Engine(pipe, max_batch_size=1, max_queue=2) as engine:
        ids, px = _request(engine, 2)
        gate = _block(engine)  # the model thread is busy: requests wait in the queue
        results = []
        for _ in range(2):
            engine.submit(ids, px, SamplingParams(4), results.append)
        with pytest.raises(QueueFullError, match="queue is full"):
            engine.submit(ids, px, SamplingParams(4), results.append)
        gate.set()
        deadline = time.monotonic() + 30
        while sum(e.finish_reason is not None for e in results) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        finals = [e for e in results if e.finish_reason is not None]
        assert [e.finish_reason for e in finals] == ["length", "length"]
        assert finals[0].token_ids == finals[1].token_ids == _alone(pipe, ids, px, 4)
        assert engine.generate(ids, px, SamplingParams(4)).token_ids == finals[0].token_ids


def test_stop_strings_streaming_and_seeded_sampling(pipe):
    with Engine(pipe, max_batch_size=4) as engine:
        ids, px = _request(engine, 0)
        full = engine.generate(ids, px, SamplingParams(24))
        assert len(full.text) > 8
        stop = full.text[4:7]
        cut = full.text.find(stop)
        stopped = engine.generate(ids, px, SamplingParams(24, stop=(stop,)))
        assert stopped.text == full.text[:cut] and stopped.finish_reason == "stop"
        # seeded sampling: the same tokens as plain generate with that seed, also next to a greedy request
        other = threading.Thread(target=engine.generate, args=(*_request(engine, 1), SamplingParams(20)))
        other.start()
        sampled = engine.generate(ids, px, SamplingParams(16, temperature=0.9, top_p=0.9, seed=7))
        other.join(30)
        assert sampled.token_ids == _alone(pipe, ids, px, 16, temperature=0.9, top_p=0.9, seed=7)


def test_user_errors_and_cancel(pipe):
    with Engine(pipe, max_batch_size=2) as engine:
        ids, px = _request(engine, 0)
        limit = pipe.config.text.max_position_embeddings
        with pytest.raises(ContextLengthError, match="exceed the context"):
            engine.generate(ids, px, SamplingParams(limit))
        with pytest.raises(TooManyImagesError, match="at most 2"):
            engine.prepare("x", [_image(0)] * 3)
        events = []
        handle = engine.submit(ids, px, SamplingParams(200), events.append)
        while not events:
            time.sleep(0.002)
        handle.cancel()
        deadline = time.monotonic() + 30
        while not handle.done and time.monotonic() < deadline:
            time.sleep(0.005)
        assert events[-1].finish_reason == "cancelled"
        assert engine.generate(ids, px, SamplingParams(3)).finish_reason == "length"  # still serving


def test_requests_the_batch_could_not_run_are_refused_at_submit_alone(pipe):
    """Checked before joining a batch: a wrong number of image positions (it would fail the batch's image merge,
    or move image features into another row), ids outside the vocabulary, a malformed image, a seed torch
    cannot take. The requests queued with them are served as if alone."""
    with Engine(pipe, max_batch_size=8) as engine:
        good = [_request(engine, k) for k in range(3)]
        ids, px = good[0]
        pad = pipe.tokenizer.image_pad_id
        gate = _block(engine)
        results = {k: [] for k in range(3)}
        for k, (i, p) in enumerate(good):
            engine.submit(i, p, SamplingParams(6), results[k].append)
        bad = [(ImageTokenError, ids + [pad], px, {}), (ImageTokenError, ids, [], {}),
               (UserError, ids + [len(pipe.tokenizer) + 10 ** 6], px, {}),
               (UserError, ids, [px[0][:2]], {}), (UserError, ids, px, {"seed": 2 ** 64})]
        for error, i, p, kw in bad:
            with pytest.raises(error):
                engine.submit(i, p, SamplingParams(6, **kw), print)
        assert engine.num_waiting == 3
        gate.set()
        deadline = time.monotonic() + 30
        while not all(r and r[-1].finish_reason for r in results.values()) and time.monotonic() < deadline:
            time.sleep(0.01)
        for k, (i, p) in enumerate(good):  # served (to the end: stop or length, as alone) with the tokens alone gives
            assert results[k][-1].finish_reason in ("stop", "length")
            assert results[k][-1].token_ids == _alone(pipe, i, p, 6)


def test_queue_slot_is_given_back_on_every_way_out(pipe):
    with Engine(pipe, max_batch_size=1, max_queue=2) as engine:
        ids, px = _request(engine, 2)
        for _ in range(5):  # failures while holding the slot: the with block gives it back
            with pytest.raises(RuntimeError), engine.reserve():
                raise RuntimeError("preprocessing failed")
            with pytest.raises(UserError), engine.reserve() as slot:
                engine.submit(ids, px, SamplingParams(4, seed=-2 ** 64), print, slot=slot)
        assert engine._reserved == 0
        with engine.reserve() as slot:  # submit takes the place over: the queue counts the request instead
            done = []
            engine.submit(ids, px, SamplingParams(4), done.append, slot=slot)
            assert not slot.held
        assert engine._reserved == 0
        deadline = time.monotonic() + 30
        while not (done and done[-1].finish_reason) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert done[-1].finish_reason == "length"

