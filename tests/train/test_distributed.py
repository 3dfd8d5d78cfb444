"""vlkit.train.distributed: the single-process helpers, and train.distributed=fsdp (FSDP2 fully_shard) on CPU with
gloo, against one process and against itself resumed."""
import os

import pytest
import torch
import torch.multiprocessing as mp

from tests.train.test_trainer import _free_port, make_pipe, params, stage, two_process_and_single_params
from vlkit.config import ConfigError, TrainConfig
from vlkit.errors import CheckpointError
from vlkit.train import distributed as dist_utils
from vlkit.train.stage_data import load_examples
from vlkit.train.trainer import Recipe, Trainer, train


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from vlkit.data.synth import generate_dataset

    d = tmp_path_factory.mktemp("synth")
    generate_dataset(d / "train", n=48, tasks=["vqa", "caption", "grounding"], seed=3, progress=False)
    return d / "train"


def test_distributed_option_is_validated_and_one_process_is_not_wrapped(tokenizer):
    assert TrainConfig(distributed="fsdp").distributed == "fsdp"
    with pytest.raises(ConfigError, match="train.distributed='zero'.*'ddp', 'fsdp'"):
        TrainConfig(distributed="zero")
    model = make_pipe(tokenizer).model
    assert dist_utils.wrap_model(model, "fsdp", torch.device("cpu")) is model  # no process group: nothing to shard
    with pytest.raises(ConfigError):
        dist_utils.wrap_model(model, "zero", torch.device("cpu"))
    layers = dist_utils.shard_units(model)
    assert len(layers) == model.cfg.text.num_layers + len(model.vision.encoder.layers)


def test_single_process_helpers_pass_values_through():
    assert dist_utils.setup()[:2] == (0, 1) and dist_utils.is_main()
    assert dist_utils.all_reduce_sum(2.5, torch.device("cpu")) == 2.5
    assert dist_utils.resolve_precision("fp32", torch.device("cuda")) == "fp32"  # an explicit choice is kept
    assert dist_utils.resolve_precision("auto", torch.device("cpu")) in ("bf16", "fp32")


def test_an_optimizer_state_from_the_other_strategy_is_refused(tokenizer):
    model = make_pipe(tokenizer).model
    opt = torch.optim.AdamW(model.parameters())
    plain = opt.state_dict()
    dist_utils.load_optimizer_state(model, opt, plain)  # same kind: loads
    sharded = {"state": {}, "param_groups": [{**plain["param_groups"][0], "params": ["language.norm.weight"]}]}
    with pytest.raises(CheckpointError, match="comes from an FSDP run and cannot resume a single-process or DDP run"):
        dist_utils.load_optimizer_state(model, opt, sharded)


def _init(rank, world, port):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)


def _stage_worker(rank, world, port, data_dir, tok_path, out):
    _init(rank, world, port)
    from vlkit.tokenizer import Tokenizer

    pipe = make_pipe(Tokenizer.from_file(tok_path))
    st = stage(data_dir, steps=3, batch_size=8, grad_accum=2)  # grad_accum: FSDP2's no_sync path too
    trainer = Trainer(pipe, TrainConfig(precision="fp32", distributed="fsdp", save_every=2), out)
    seen = []
    trainer.callbacks = (lambda t, step: seen.append(dist_utils.is_fsdp(t.pipe.model)),)
    trainer.run_stage(0, st, load_examples(pipe, st.data, 0))
    assert seen == [True] * 3  # sharded while training
    assert not dist_utils.is_fsdp(pipe.model)  # a plain module again after the stage, full weights on every rank
    assert all(type(p) is torch.nn.Parameter for p in pipe.model.parameters())
    lm = pipe.model.language
    assert pipe.config.text.tie_word_embeddings and lm.lm_head.weight is lm.embed_tokens.weight  # still tied
    assert torch.equal(lm.rotary.inv_freq, make_pipe(pipe.tokenizer).model.language.rotary.inv_freq)  # buffers
    if rank == 0:
        torch.save(params(pipe.model), out / "params.pt")
    dist_utils.cleanup()


def test_two_process_fsdp_equals_single_process(tokenizer, data_dir, tmp_path):
    fsdp, single = two_process_and_single_params(_stage_worker, "fsdp", tokenizer, data_dir, tmp_path)
    assert fsdp.keys() == single.keys()
    for k in single:
        torch.testing.assert_close(fsdp[k], single[k], atol=1e-4, rtol=1e-3)  # AdamW amplifies fp32 noise
    assert any(not torch.equal(single[k], params(make_pipe(tokenizer).model)[k]) for k in single)

    # the mid-stage checkpoint (step 2) was gathered on rank 0: a plain loadable model and the full optimizer state
    from vlkit.pipeline import load
    from vlkit.train.checkpoint import load_trainer_state

    ckpt = tmp_path / "fsdp" / "checkpoints" / "step-0000002"
    model = load(ckpt).model
    assert model.state_dict().keys() == single.keys()
    _, opt_state, _ = load_trainer_state(ckpt)
    for name, p in model.named_parameters():
        assert opt_state["state"][name]["exp_avg"].shape == p.shape, name


def _recipe(data_dir, out, save_every=0):
    return Recipe(model={}, tokenizer={}, train=TrainConfig(out=str(out), precision="fp32", save_every=save_every,
                                                            keep_last=2, log_every=1, distributed="fsdp"),
                  stages=[stage(data_dir, train="align", steps=2), stage(data_dir, steps=4, grad_accum=2)])


class Kill(Exception):
    pass


def _resume_worker(rank, world, port, data_dir, tok_path, out):
    _init(rank, world, port)
    from vlkit.tokenizer import Tokenizer

    tok = Tokenizer.from_file(tok_path)
    full = train(_recipe(data_dir, out / "a"), pipe=make_pipe(tok))

    def kill_at_5(trainer, global_step):
        if global_step == 5:
            raise Kill()

    with pytest.raises(Kill):
        train(_recipe(data_dir, out / "b", save_every=2), pipe=make_pipe(tok), callbacks=(kill_at_5,))
    resumed = train(_recipe(data_dir, out / "b", save_every=2), resume=True)
    if rank == 0:
        torch.save({"full": str(full), "resumed": str(resumed)}, out / "done.pt")
    dist_utils.cleanup()


def test_fsdp_run_killed_and_resumed_matches_uninterrupted(tokenizer, data_dir, tmp_path):
    tok_path = tmp_path / "tok.json"
    tokenizer.save(tok_path)
    mp.start_processes(_resume_worker, args=(2, _free_port(), data_dir, tok_path, tmp_path), nprocs=2,
                       start_method="spawn")
    done = torch.load(tmp_path / "done.pt", weights_only=True)
    assert sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir())[-1] == "step-0000006"
    from vlkit.pipeline import load

    a, b = load(done["full"]).model.state_dict(), load(done["resumed"]).model.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _native_pipe(tok, seed=0):
    """Native resolution: 2D RoPE patches (packed encoder), smart_resize within 32x32..64x64 pixels, 2x2 merge."""
    from vlkit.config import tiny_model_config
    from vlkit.models.vlm import VisionLanguageModel
    from vlkit.pipeline import Pipeline

    torch.manual_seed(seed)
    cfg = tiny_model_config("spatial_merge", vocab_size=len(tok))
    cfg.image_token_id = tok.image_pad_id
    cfg.vision.position = "rope2d"
    cfg.vision.processor.min_pixels, cfg.vision.processor.max_pixels = 32 * 32, 64 * 64
    cfg.vision.processor.merge_size = cfg.connector.merge_size = 2
    cfg.validate()
    return Pipeline(VisionLanguageModel(cfg), tok)


def _native_recipe(out, save_every=0):
    from vlkit.config import DataConfig, StageConfig

    synth = {"tasks": ["ocr", "doc", "vqa"], "aspect": "mixed", "aspect_ratio": 2.0}
    data = DataConfig(train=[{"synth": synth}], max_length=200, packing=True)
    return Recipe(model={}, tokenizer={}, train=TrainConfig(out=str(out), precision="fp32", save_every=save_every,
                                                            keep_last=2, log_every=1),
                  stages=[StageConfig(name="m", train="multitask", steps=4, lr=3e-3, warmup_steps=1, batch_size=4,
                                      data=data)])


def _native_resume_worker(rank, world, port, tok_path, out):
    _init(rank, world, port)
    from vlkit.tokenizer import Tokenizer

    from vlkit.models.vlm import VisionLanguageModel

    tok = Tokenizer.from_file(tok_path)
    sizes, encode = set(), VisionLanguageModel.encode_images

    def spy(model, images):  # the image sizes the packed encoder gets
        sizes.update(tuple(im.shape[-2:]) for im in images)
        return encode(model, images)

    VisionLanguageModel.encode_images = spy  # this spawned process only
    full = train(_native_recipe(out / "a"), pipe=_native_pipe(tok))

    def kill_at_3(trainer, global_step):
        if global_step == 3:
            raise Kill()

    with pytest.raises(Kill):
        train(_native_recipe(out / "b", save_every=2), pipe=_native_pipe(tok), callbacks=(kill_at_3,))
    resumed = train(_native_recipe(out / "b", save_every=2), resume=True)
    if rank == 0:
        torch.save({"full": str(full), "resumed": str(resumed), "sizes": sorted(sizes)}, out / "done.pt")
    dist_utils.cleanup()


def test_ddp_packed_native_resolution_run_killed_and_resumed_matches_uninterrupted(tokenizer, tmp_path):
    """Two gloo DDP ranks on packed batches of variable-size images (rope2d + smart_resize, synthetic text images
    of mixed aspect): killed after step 3 (checkpoint at 2) and resumed, the weights equal the uninterrupted run's."""
    from tests.train.test_trainer import _metrics

    tok_path = tmp_path / "tok.json"
    tokenizer.save(tok_path)
    mp.start_processes(_native_resume_worker, args=(2, _free_port(), tok_path, tmp_path), nprocs=2,
                       start_method="spawn")
    done = torch.load(tmp_path / "done.pt", weights_only=True)
    from vlkit.pipeline import load

    a, b = load(done["full"]).model.state_dict(), load(done["resumed"]).model.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert _metrics(tmp_path / "b") == _metrics(tmp_path / "a")
    assert any(not torch.equal(a[k], _native_pipe(tokenizer).model.state_dict()[k]) for k in a)  # it trained
    sizes = [tuple(s) for s in done["sizes"]]
    assert len(sizes) > 1 and any(h != w for h, w in sizes), sizes  # images of several sizes and aspects, packed
