import json
import math
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from vlkit.config import ConfigError, DataConfig, StageConfig, TrainConfig, tiny_model_config
from vlkit.models.vlm import VisionLanguageModel
from vlkit.pipeline import Pipeline
from vlkit.train.stage_data import load_examples
from vlkit.train.trainer import Recipe, Trainer, TrainingError, train


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from vlkit.data.synth import generate_dataset

    d = tmp_path_factory.mktemp("synth")
    generate_dataset(d / "train", n=48, tasks=["vqa", "caption", "grounding"], seed=3, progress=False)
    return d / "train"


def make_pipe(tokenizer, seed=0):
    torch.manual_seed(seed)
    cfg = tiny_model_config("spatial_merge", vocab_size=len(tokenizer))
    cfg.image_token_id = tokenizer.image_pad_id
    return Pipeline(VisionLanguageModel(cfg), tokenizer)


def stage(data_dir, train="multitask", steps=4, batch_size=8, grad_accum=1, **kw):
    return StageConfig(name=train, train=train, steps=steps, lr=3e-3, warmup_steps=1, batch_size=batch_size,
                       grad_accum=grad_accum, data=DataConfig(train=[{"path": str(data_dir)}], max_length=200), **kw)


def params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_freezing_keeps_frozen_modules_bit_identical(tokenizer, data_dir, tmp_path):
    pipe = make_pipe(tokenizer)
    before = params(pipe.model)
    st = stage(data_dir, train="align")
    trainer = Trainer(pipe, TrainConfig(precision="fp32", log_every=1), tmp_path)
    trainer.run_stage(0, st, load_examples(pipe, st.data, 0))
    after = params(pipe.model)
    for k in before:
        same = torch.equal(before[k], after[k])
        if k.startswith("connector."):
            assert not same, f"{k} should have trained"
        else:
            assert same, f"{k} is frozen in `align` but changed"
    rows = [json.loads(r) for r in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(math.isfinite(r["loss"]) for r in rows)


def test_grad_accumulation_equals_one_big_batch(tokenizer, data_dir, tmp_path):
    results = []
    for accum in (1, 4):
        pipe = make_pipe(tokenizer)
        st = stage(data_dir, steps=2, grad_accum=accum)
        Trainer(pipe, TrainConfig(precision="fp32"), tmp_path / str(accum)).run_stage(0, st, load_examples(pipe, st.data, 0))
        results.append(params(pipe.model))
    for k in results[0]:  # as the DDP test: AdamW amplifies fp32 summation-order noise where a gradient is ~0
        torch.testing.assert_close(results[0][k], results[1][k], atol=1e-4, rtol=1e-3)


def _recipe(data_dir, out, steps=6, save_every=0):
    return Recipe(model={}, tokenizer={}, train=TrainConfig(out=str(out), precision="fp32", save_every=save_every,
                                                            keep_last=2, log_every=1),
                  stages=[stage(data_dir, train="align", steps=2), stage(data_dir, steps=steps)])


def test_killed_and_resumed_run_matches_uninterrupted(tokenizer, data_dir, tmp_path):
    full = train(_recipe(data_dir, tmp_path / "a"), pipe=make_pipe(tokenizer))

    class Kill(Exception):
        pass

    def kill_at_5(trainer, global_step):
        if global_step == 5:
            raise Kill()

    with pytest.raises(Kill):
        train(_recipe(data_dir, tmp_path / "b", save_every=2), pipe=make_pipe(tokenizer), callbacks=(kill_at_5,))
    ckpts = sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir())
    assert ckpts[-1] == "step-0000004" and len(ckpts) <= 2  # keep_last
    assert max(_metrics(tmp_path / "b")) == 5  # a row past the checkpoint, which the resumed run logs again
    resumed = train(_recipe(data_dir, tmp_path / "b", save_every=2), resume=True)
    from vlkit.pipeline import load

    a, b = load(full).model.state_dict(), load(resumed).model.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # metrics.jsonl: each step once, as in the uninterrupted run (the rows after the checkpoint were dropped)
    assert list(_metrics(tmp_path / "b")) == list(range(1, 9))
    assert _metrics(tmp_path / "b") == _metrics(tmp_path / "a")


def _synth_recipe(out, save_every=0, **data_kw):
    data = DataConfig(train=[{"synth": {"tasks": ["vqa", "grounding"]}}], max_length=200, **data_kw)
    return Recipe(model={}, tokenizer={}, train=TrainConfig(out=str(out), precision="fp32", save_every=save_every,
                                                            keep_last=2, log_every=1),
                  stages=[StageConfig(name="m", train="multitask", steps=6, lr=3e-3, warmup_steps=1, batch_size=4,
                                      data=data)])


def test_synth_stream_stage_resumes_exactly_and_never_repeats_a_sample(tokenizer, tmp_path, monkeypatch):
    from vlkit.data import feed as feed_mod

    seen = []
    real = feed_mod.StreamFeed.next_batch

    def spy(self, batch_size, rank, world):
        out = real(self, batch_size, rank, world)
        seen.extend(e.sample_id for e in out)
        return out

    monkeypatch.setattr(feed_mod.StreamFeed, "next_batch", spy)
    full = train(_synth_recipe(tmp_path / "a"), pipe=make_pipe(tokenizer))
    assert len(seen) == len(set(seen)) == 24  # 6 steps x 4 fresh samples

    def kill_at_3(trainer, global_step):
        if global_step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(_synth_recipe(tmp_path / "b", save_every=2), pipe=make_pipe(tokenizer), callbacks=(kill_at_3,))
    resumed = train(_synth_recipe(tmp_path / "b", save_every=2), resume=True)
    from vlkit.pipeline import load

    a, b = load(full).model.state_dict(), load(resumed).model.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert _metrics(tmp_path / "b") == _metrics(tmp_path / "a")


def test_a_length_grouped_stage_resumes_exactly_from_the_middle_of_a_window(tokenizer, tmp_path):
    """group_by_length: the killed run stops at step 3 (checkpoint at 2) inside a 4-batch look-ahead window; the
    resumed run must take the same batches as the uninterrupted one, and grouping must change the batches."""
    grouped = dict(group_by_length=True, group_window=4)
    full = train(_synth_recipe(tmp_path / "a", **grouped), pipe=make_pipe(tokenizer))
    plain = train(_synth_recipe(tmp_path / "p"), pipe=make_pipe(tokenizer))

    def kill_at_3(trainer, global_step):
        if global_step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(_synth_recipe(tmp_path / "b", save_every=2, **grouped), pipe=make_pipe(tokenizer),
              callbacks=(kill_at_3,))
    resumed = train(_synth_recipe(tmp_path / "b", save_every=2, **grouped), resume=True)
    from vlkit.pipeline import load

    a, b = load(full).model.state_dict(), load(resumed).model.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert _metrics(tmp_path / "b") == _metrics(tmp_path / "a")
    assert _metrics(tmp_path / "p") != _metrics(tmp_path / "a")


def _metrics(run) -> dict:
    """{global_step: (stage, step, loss)} of a run's metrics.jsonl, in file order; a repeated step is an error."""
    rows = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        assert r["global_step"] not in rows, f"global step {r['global_step']} logged twice"
        rows[r["global_step"]] = (r["stage"], r["step"], r["loss"])
    return rows


def test_corrupt_line_mid_epoch_is_skipped_and_counted(tokenizer, data_dir, tmp_path):
    import shutil

    d = tmp_path / "data"
    shutil.copytree(data_dir, d)
    lines = (d / "data.jsonl").read_text().splitlines()
    lines.insert(len(lines) // 2, '{"id": "broken", "conversations": [')  # a truncated line in the middle
    first = json.loads(lines[3])
    (d / first["images"][0]).write_bytes(b"\x89PNG not really")  # and a corrupt image
    (d / "data.jsonl").write_text("\n".join(lines) + "\n")
    pipe = make_pipe(tokenizer)
    st = stage(d, steps=3)
    from vlkit.data.sources import DataError

    with pytest.warns(UserWarning, match="skipped"), pytest.raises(DataError, match=r"1 of 49 .*reading.*max_skip"):
        load_examples(pipe, st.data, 0)  # the bad line, found by indexing: 2% > the default max_skip (1%)
    st.data.train[0]["max_skip"] = 0.05
    with pytest.warns(UserWarning, match="skipped"):
        examples = load_examples(pipe, st.data, 0)
    assert len(examples) == len(lines) - 2  # the corrupt image is found when it is decoded
    Trainer(pipe, TrainConfig(precision="fp32"), tmp_path / "run").run_stage(0, st, examples)
    from vlkit.errors import UserError

    st.data.strict = True
    with pytest.raises(UserError):
        load_examples(pipe, st.data, 0)


def test_nan_guard_skips_then_stops(tokenizer, data_dir, tmp_path, monkeypatch):
    pipe = make_pipe(tokenizer)
    st = stage(data_dir, steps=6)
    examples = load_examples(pipe, st.data, 0)
    real = pipe.model.forward
    calls = {"n": 0}

    def flaky(*a, **kw):
        out = real(*a, **kw)
        calls["n"] += 1
        if calls["n"] in (2, 3):
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(pipe.model, "forward", flaky)
    trainer = Trainer(pipe, TrainConfig(precision="fp32", log_every=1), tmp_path)
    trainer.run_stage(0, st, examples)
    assert trainer.bad_steps_total == 2
    assert all(math.isfinite(p.detach().sum().item()) for p in pipe.model.parameters())

    monkeypatch.setattr(pipe.model, "forward", lambda *a, **kw: {**real(*a, **kw), "loss": torch.tensor(float("nan"), requires_grad=True)})
    with pytest.raises(TrainingError, match="3 consecutive non-finite"):
        Trainer(pipe, TrainConfig(precision="fp32", max_bad_steps=3), tmp_path / "2").run_stage(0, st, examples)


def _ddp_worker(rank, world, port, data_dir, tok_path, out):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from vlkit.tokenizer import Tokenizer
    from vlkit.train import distributed

    pipe = make_pipe(Tokenizer.from_file(tok_path))
    st = stage(data_dir, steps=3, batch_size=8)
    trainer = Trainer(pipe, TrainConfig(precision="fp32"), out)
    trainer.run_stage(0, st, load_examples(pipe, st.data, 0))
    if rank == 0:
        torch.save(params(pipe.model), out / "params.pt")
    distributed.cleanup()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_process_and_single_params(worker, name, tokenizer, data_dir, tmp_path) -> tuple[dict, dict]:
    """Parameters after `worker` ran a 3-step stage on 2 spawned gloo processes, and after the same stage
    (global batch 8) in this one process."""
    tok_path = tmp_path / "tok.json"
    tokenizer.save(tok_path)
    (tmp_path / name).mkdir()
    mp.start_processes(worker, args=(2, _free_port(), data_dir, tok_path, tmp_path / name), nprocs=2,
                       start_method="spawn")
    multi = torch.load(tmp_path / name / "params.pt", weights_only=True)
    pipe = make_pipe(tokenizer)
    st = stage(data_dir, steps=3, batch_size=8)
    Trainer(pipe, TrainConfig(precision="fp32"), tmp_path / "single").run_stage(0, st, load_examples(pipe, st.data, 0))
    return multi, params(pipe.model)


def test_two_process_ddp_equals_single_process(tokenizer, data_dir, tmp_path):
    ddp, single = two_process_and_single_params(_ddp_worker, "ddp", tokenizer, data_dir, tmp_path)
    for k in single:
        torch.testing.assert_close(ddp[k], single[k], atol=1e-4, rtol=1e-3)  # AdamW amplifies fp32 noise
    assert any(not torch.equal(single[k], params(make_pipe(tokenizer).model)[k]) for k in single)


def test_lora_stage_trains_adapters_then_merges(tokenizer, data_dir, tmp_path):
    pipe = make_pipe(tokenizer)
    before = params(pipe.model)
    st = stage(data_dir, train="lora", steps=3, lora_r=4)
    trainer = Trainer(pipe, TrainConfig(precision="fp32"), tmp_path)
    trainer.run_stage(0, st, load_examples(pipe, st.data, 0))
    after = params(pipe.model)
    assert set(after) == set(before)  # merged: plain parameter names again
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("vision."))
    assert any(not torch.equal(before[k], after[k]) for k in before if ".self_attn.q_proj" in k)
    from vlkit.pipeline import load

    assert load(tmp_path / "checkpoints" / "step-0000003").model.state_dict().keys() == before.keys()


def test_recipe_grows_an_init_checkpoint_into_vluas(tokenizer, data_dir, tmp_path):
    """Stage-wise VLUAS: a vision-as-input checkpoint (as `vlkit build` writes) + `vision_target: codes` + `vq:`."""
    from vlkit.config import ConfigError, VQConfig
    from vlkit.data.synth import generate_dataset
    from vlkit.models.vq import VisualTokenizer, lm_grid_downsample
    from vlkit.pipeline import load
    from vlkit.train.trainer import build_pipeline

    base = make_pipe(tokenizer)
    base.save_pretrained(tmp_path / "init")
    vq_cfg = VQConfig(codebook_size=16, code_dim=8, hidden_size=16, num_layers=1,
                      downsample=lm_grid_downsample(base.config), image_size=base.config.vision.image_size)
    VisualTokenizer(vq_cfg).save_pretrained(tmp_path / "vq")
    gen = tmp_path / "gen"
    generate_dataset(gen, n=16, tasks=["generation"], seed=0, progress=False)

    def recipe(model, vq=str(tmp_path / "vq"), init=tmp_path / "init"):
        return Recipe(model=model, init=str(init), vq=vq,
                      train=TrainConfig(out=str(tmp_path / "run"), precision="fp32", log_every=1),
                      stages=[StageConfig(name="gen", train="multitask", steps=2, lr=3e-3, batch_size=4,
                                          data=DataConfig(train=[{"path": str(gen)}], max_length=200))])

    spec = {"vision_target": "codes", "vision_loss_weight": 0.5}
    grown = build_pipeline(recipe(spec), corpus=None)
    n = len(tokenizer)
    assert grown.config.vision_target == "codes" and grown.config.text_vocab_size == n
    assert grown.config.vision_loss_weight == 0.5 and grown.vq is not None
    assert torch.equal(grown.model.language.embed_tokens.weight[:n], base.model.language.embed_tokens.weight)
    final = load(train(recipe(spec)))
    assert final.config.vision_target == "codes" and final.can_generate_images
    assert final.generate_image("a red circle", seed=0).size == (64, 64)
    # other overrides ride along; what would change the model's shape, or drop its codes, is refused
    assert build_pipeline(recipe({"dense_loss_weight": 3.0}, vq=None), corpus=None).config.dense_loss_weight == 3.0
    with pytest.raises(ConfigError, match="text"):
        build_pipeline(recipe({"text": {"num_layers": 4}}), corpus=None)
    with pytest.raises(ConfigError, match="vq: DIR"):
        build_pipeline(recipe(spec, vq=None), corpus=None)
    with pytest.raises(ConfigError, match="can only add visual codes"):
        build_pipeline(recipe({"vision_target": "none"}, init=tmp_path / "run" / "final"), corpus=None)
    with pytest.raises(ConfigError, match="can only add visual codes"):
        build_pipeline(recipe({"vision_target": "pixels"}), corpus=None)


def _stream_recipe(data_dir, out, num_workers, save_every=0):
    st = stage(data_dir, steps=5, batch_size=6)
    st.data.packing = True  # packed rows (block-diagonal attention) from streamed, worker-encoded batches
    return Recipe(model={}, tokenizer={}, train=TrainConfig(out=str(out), precision="fp32", save_every=save_every,
                                                            keep_last=2, log_every=1, num_workers=num_workers),
                  stages=[st])


def test_file_stream_with_workers_and_packing_resumes_to_the_uninterrupted_run(tokenizer, data_dir, tmp_path,
                                                                                 monkeypatch):
    from vlkit.data import feed as feed_mod
    from vlkit.pipeline import load

    pids = tmp_path / "pids"
    real = feed_mod.StreamFeed.make_batch

    def spy(self, *a, **kw):
        with open(pids, "a") as f:
            f.write(f"{os.getpid()}\n")
        return real(self, *a, **kw)

    monkeypatch.setattr(feed_mod.StreamFeed, "make_batch", spy)
    full = train(_stream_recipe(data_dir, tmp_path / "a", num_workers=0), pipe=make_pipe(tokenizer))
    assert set(pids.read_text().split()) == {str(os.getpid())}
    pids.unlink()

    def kill_at_3(trainer, global_step):
        if global_step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(_stream_recipe(data_dir, tmp_path / "b", 2, save_every=2), pipe=make_pipe(tokenizer),
              callbacks=(kill_at_3,))
    workers = set(pids.read_text().split())
    assert str(os.getpid()) not in workers and len(workers) == 2  # batches were made in 2 worker processes
    resumed = train(_stream_recipe(data_dir, tmp_path / "b", 2, save_every=2), resume=True)
    a, b = load(full).model.state_dict(), load(resumed).model.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert _metrics(tmp_path / "b") == _metrics(tmp_path / "a")


def test_train_gives_a_fresh_tokenizer_every_stages_data(tmp_path, monkeypatch):
    """train() hands build_pipeline the corpus of all its stages (stage_data.tokenizer_corpus)."""
    from vlkit.train import trainer as trainer_mod

    seen = {}

    class Stop(Exception):
        pass

    def capture(recipe, corpus):
        seen["text"] = list(corpus())
        raise Stop

    monkeypatch.setattr(trainer_mod, "build_pipeline", capture)
    monkeypatch.setattr(trainer_mod, "tokenizer_corpus", lambda stages, seed: [s.name for s in stages] + [seed])
    stage = {"train": "multitask", "steps": 1, "batch_size": 2, "data": {"train": ["d"]}}
    recipe = Recipe.from_dict({"train": {"out": str(tmp_path), "seed": 7},
                               "stages": [{**stage, "name": "a"}, {**stage, "name": "b"}]})
    with pytest.raises(Stop):
        trainer_mod.train(recipe, out=tmp_path)
    assert seen["text"] == ["a", "b", 7]


def test_an_unknown_preset_names_the_presets():
    from vlkit.train.trainer import build_pipeline

    recipe = Recipe.from_dict({"model": {"preset": "huge"}, "stages": [{"train": "sft"}]})
    with pytest.raises(ConfigError, match=r"model.preset='huge' is unknown; choose one of \['tiny'\]"):
        build_pipeline(recipe, lambda: ["a b c"])


def test_the_checkpoint_records_the_video_sampling_chat_and_eval_use(tokenizer, data_dir, tmp_path):
    """A stage's data.video lands in the checkpoint's config (ModelConfig.video); a later stage that keeps the
    default leaves it; the loaded pipeline samples clips with it (video_frames: chat, eval's video_qa, and the
    server's MediaLoader). A config.json without the key (older checkpoints) loads the default VideoConfig."""
    from PIL import Image

    from vlkit.config.video import VideoConfig
    from vlkit.pipeline import load

    recipe = _recipe(data_dir, tmp_path / "run", steps=1)
    recipe.stages[0].steps = 1
    recipe.stages[0].data.video = VideoConfig(fps=1.0, max_frames=3, max_total_pixels=3 * 20 * 20)
    out = train(recipe, pipe=make_pipe(tokenizer))
    pipe = load(out)
    assert (pipe.config.video.fps, pipe.config.video.max_frames, pipe.config.video.max_total_pixels) == (1.0, 3, 1200)
    frames = [Image.new("RGB", (40, 40), (25 * k, 0, 0)) for k in range(8)]
    sampled = pipe.video_frames(frames)
    assert len(sampled) == 3
    config = json.loads((out / "config.json").read_text())
    del config["video"]
    (out / "config.json").write_text(json.dumps(config))
    old = load(out)
    assert old.config.video == VideoConfig() and len(old.video_frames(frames)) == 8
