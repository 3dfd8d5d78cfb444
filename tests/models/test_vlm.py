import pytest
import torch
from PIL import Image

from vlkit.chat import ChatProcessor
from vlkit.errors import CheckpointError, ImageTokenError
from vlkit.infer.generate import GenerationConfig, generate
from vlkit.models.vlm import VisionLanguageModel
from vlkit.pipeline import Pipeline, load

from tests.conftest import CONNECTORS
from tests.helpers import perturb


def _prompt(tokenizer, model, n_images=1, text="What color is the circle?"):
    proc = ChatProcessor(tokenizer)
    return proc.encode_prompt(text, n_images, [model.tokens_per_image(64, 64)] * n_images)


@pytest.mark.parametrize("connector", CONNECTORS)
def test_cached_decoding_equals_full_forward(make_model, tokenizer, connector):
    model = perturb(make_model(connector))
    ids = torch.tensor([_prompt(tokenizer, model) + tokenizer.encode(" red green blue")])
    images = [torch.randn(3, 64, 64)]
    full = model(ids, images, return_logits=True)["logits"][0]
    cache = model.new_cache()
    n = ids.shape[1] - 4
    logits, next_pos = model.prefill(ids[:, :n], cache, images=images)
    assert next_pos.tolist() == [n]
    steps = [logits]
    for t in range(n, ids.shape[1]):
        steps.append(model.decode(ids[:, t], cache, torch.tensor([t])))
    torch.testing.assert_close(torch.stack([s[0] for s in steps]), full[n - 1:].float(), atol=1e-5, rtol=0)


def test_prefill_counts_positions_from_the_first_real_token(make_model, tokenizer):
    model = perturb(make_model("mlp"))
    ids = _prompt(tokenizer, model, 0, "What?")
    alone, pos = model.prefill(torch.tensor([ids]), model.new_cache())
    padded = torch.tensor([[tokenizer.pad_id] * 3 + ids])
    mask = torch.tensor([[0] * 3 + [1] * len(ids)])
    cache = model.new_cache()
    left, left_pos = model.prefill(padded, cache, attention_mask=mask)
    assert left_pos.tolist() == pos.tolist() == [len(ids)]
    torch.testing.assert_close(left, alone, atol=1e-5, rtol=0)
    hidden, _ = model.prefill(torch.tensor([ids]), model.new_cache(), hidden=True)
    torch.testing.assert_close(model.logits(hidden).float(), alone, atol=1e-6, rtol=0)


def test_patch_scores_are_the_head_at_image_tokens(make_model, tokenizer):
    model = perturb(make_model("spatial_merge"))
    ids = torch.tensor([_prompt(tokenizer, model)])
    images = [torch.randn(3, 64, 64)]
    cols = [5, 17, 9]
    scores = model.patch_scores(ids, images, cols)
    at = ids[0] == model.cfg.image_token_id
    assert scores.shape == (int(at.sum()), 3)
    full = model(ids, images, return_logits=True)["logits"][0]
    torch.testing.assert_close(scores, full[at][:, cols].float(), atol=1e-5, rtol=0)


def test_code_logits_and_sample_codes(make_model, tokenizer):
    from vlkit.config import ConfigError, VQConfig, tiny_model_config

    with pytest.raises(ConfigError, match="does not predict visual codes"):
        make_model("mlp").code_logits(torch.zeros(1, 64))
    n = len(tokenizer)
    for depth in (1, 2):
        vq = VQConfig(codebook_size=16, code_dim=8, depth=depth, downsample=16, image_size=64)
        cfg = tiny_model_config("spatial_merge", vocab_size=n + 16, vision_target="codes", vq=vq, text_vocab_size=n)
        cfg.image_token_id, cfg.pad_token_id = tokenizer.image_pad_id, tokenizer.pad_id
        model = VisionLanguageModel(cfg).eval()
        hidden = torch.randn(2, model.cfg.text.hidden_size)
        logits = model.code_logits(hidden)
        torch.testing.assert_close(logits, model.logits(hidden)[:, n:].float())
        first = logits.argmax(-1)[:, None]
        codes = model.sample_codes(hidden, first, temperature=0)
        assert codes.shape == (2, depth) and torch.equal(codes[:, :1], first)
        if depth == 2:
            assert torch.equal(codes, model.depth.sample(hidden, temperature=0, prefix=first))
        cache = model.new_cache()
        _, pos = model.prefill(torch.tensor([_prompt(tokenizer, model, 0, "x")] * 2), cache, hidden=True)
        after = model.decode_codes(codes[:1], cache, pos)
        assert after.shape == (2, model.cfg.text.hidden_size) and torch.allclose(after[0], after[1], atol=1e-5)


@pytest.mark.parametrize("connector", ["mlp", "spatial_merge"])
def test_batched_greedy_equals_one_by_one(make_model, tokenizer, connector):
    model = perturb(make_model(connector), seed=3)
    prompts = [_prompt(tokenizer, model, 1, "What?"), _prompt(tokenizer, model, 2, "How many objects are there in it?"),
               _prompt(tokenizer, model, 0, "Describe the image in a few words please."), _prompt(tokenizer, model, 1, "x")]
    g = torch.Generator().manual_seed(0)
    images = [[torch.randn(3, 64, 64, generator=g)] * 1, [torch.randn(3, 64, 64, generator=g) for _ in range(2)], [],
              [torch.randn(3, 64, 64, generator=g)]]
    gen = GenerationConfig(max_new_tokens=12, stop_token_ids=(tokenizer.im_end_id,))
    batched = generate(model, prompts, images, gen, tokenizer.pad_id)
    single = [generate(model, [p], [im], gen, tokenizer.pad_id)[0] for p, im in zip(prompts, images)]
    assert batched == single
    assert any(len(s) > 3 for s in single)  # the comparison covers real decoding, not just instant stops


def test_image_token_count_mismatch(make_model, tokenizer):
    model = make_model("mlp")
    ids = torch.tensor([_prompt(tokenizer, model, 1)])
    with pytest.raises(ImageTokenError, match="64 <\\|image_pad\\|> positions but the images give 128"):
        model(ids, [torch.randn(3, 64, 64), torch.randn(3, 64, 64)])
    with pytest.raises(ImageTokenError, match="give 0 embeddings"):
        model(ids, [])


def test_several_images_land_in_their_slots(make_model, tokenizer):
    model = make_model("resampler")
    ids = torch.tensor([_prompt(tokenizer, model, 3)])
    images = [torch.randn(3, 64, 64) for _ in range(3)]
    feats = model.encode_images(images)
    embeds = model.embed(ids, images)[0]
    starts = (ids[0] == tokenizer.vision_start_id).nonzero().flatten().tolist()
    assert len(starts) == 3
    for k, s in enumerate(starts):
        torch.testing.assert_close(embeds[s + 1:s + 1 + 16], feats[k])
    # images of mixed sizes in one batch
    mixed = [torch.randn(3, 64, 64), torch.randn(3, 96, 64)]
    out = model.encode_images(mixed)
    assert [o.shape[0] for o in out] == [16, 16]


def test_save_load_round_trip_bit_identical(make_model, tokenizer, tmp_path):
    model = perturb(make_model("spatial_merge"))
    pipe = Pipeline(model, tokenizer)
    pipe.save_pretrained(tmp_path / "ckpt")
    again = load(tmp_path / "ckpt")
    ids = torch.tensor([_prompt(tokenizer, model)])
    img = [torch.randn(3, 64, 64)]
    a = model(ids, img, return_logits=True)["logits"]
    b = again.model(ids, img, return_logits=True)["logits"]
    assert torch.equal(a, b)
    assert again.fingerprint() == pipe.fingerprint()
    # saving over an existing checkpoint replaces it atomically, leaving no temp dirs behind
    pipe.save_pretrained(tmp_path / "ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_corrupt_or_missing_checkpoint_files(make_model, tokenizer, tmp_path):
    Pipeline(make_model("mlp"), tokenizer).save_pretrained(tmp_path / "c")
    with pytest.raises(CheckpointError, match="does not exist"):
        load(tmp_path / "nothing")
    w = tmp_path / "c" / "model.safetensors"
    data = w.read_bytes()
    w.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load(tmp_path / "c")
    w.unlink()
    with pytest.raises(CheckpointError, match="missing model.safetensors"):
        load(tmp_path / "c")


def test_mismatched_tensors_are_named(make_model, tokenizer, tmp_path):
    model = make_model("mlp")
    Pipeline(model, tokenizer).save_pretrained(tmp_path / "c")
    import json
    cfg = json.loads((tmp_path / "c" / "config.json").read_text())
    cfg["connector"]["type"] = "linear"
    (tmp_path / "c" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="connector.linear_1.weight"):
        VisionLanguageModel.from_pretrained(tmp_path / "c")


def test_tiny_vlm_overfits_and_answers(make_model, tokenizer):
    """8 image-question-answer samples: loss goes to ~0 and greedy answers reproduce the labels."""
    torch.manual_seed(0)
    model = make_model("mlp").train()
    pipe = Pipeline(model, tokenizer)
    colors = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 220, 30)}
    samples = []
    for i, (name, rgb) in enumerate(list(colors.items()) * 2):
        img = Image.new("RGB", (64, 64), (0, 0, 0))
        img.paste(rgb, (8 * i % 32, 8, 8 * i % 32 + 24, 40))
        q = "What color is the circle?" if i < 4 else "What shape is it?"
        a = name if i < 4 else ["square", "circle", "star", "triangle"][i - 4]
        samples.append((img, q, a))
    proc = ChatProcessor(tokenizer)
    n_tok = model.tokens_per_image(64, 64)
    encs = [proc.encode_sample({"conversations": [{"from": "human", "value": "<image>\n" + q},
                                                  {"from": "gpt", "value": a}]}, [n_tok]) for _, q, a in samples]
    L = max(len(e.input_ids) for e in encs)
    ids = torch.tensor([e.input_ids + [tokenizer.pad_id] * (L - len(e.input_ids)) for e in encs])
    labels = torch.tensor([e.labels + [-100] * (L - len(e.labels)) for e in encs])
    pixels = [pipe.image_tensor(img) for img, _, _ in samples]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(150):
        loss = model(ids, pixels, labels=labels)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05
    model.eval()
    answers = pipe.chat_batch([q for _, q, _ in samples], [[img] for img, _, _ in samples], max_new_tokens=8)
    assert answers == [a for _, _, a in samples]


# -- native resolution: packed rope2d encoder, M-RoPE ------------------------------------------------------
NATIVE_SIZES = [(32, 32), (16, 48), (48, 16), (64, 32)]  # (H, W): square, wide, tall, wide


def _native_model(tokenizer, rope="mrope", seed=0):
    from vlkit.config import ImageProcessorConfig, TextConfig, VisionConfig, tiny_model_config

    torch.manual_seed(seed)
    vision = VisionConfig(position="rope2d", processor=ImageProcessorConfig(min_pixels=16 * 16, max_pixels=64 * 64,
                                                                            merge_size=2))
    cfg = tiny_model_config("spatial_merge", vision=vision, text=TextConfig(vocab_size=len(tokenizer), rope=rope),
                            init="fan_in")
    cfg.image_token_id = tokenizer.image_pad_id
    return VisionLanguageModel(cfg).eval()


def _native_prompt(tokenizer, model, sizes, text="What is in the pictures?"):
    return ChatProcessor(tokenizer).encode_prompt(text, len(sizes), [model.tokens_per_image(h, w) for h, w in sizes])


def test_native_images_encode_packed_as_each_alone(tokenizer):
    model = _native_model(tokenizer)
    g = torch.Generator().manual_seed(0)
    images = [torch.randn(3, h, w, generator=g) for h, w in NATIVE_SIZES]
    feats = model.encode_images(images)
    for (h, w), img, f in zip(NATIVE_SIZES, images, feats):
        assert f.shape == (model.tokens_per_image(h, w), 64) and model.tokens_per_image(h, w) == (h // 16) * (w // 16)
        torch.testing.assert_close(f, model.encode_images([img])[0], atol=1e-5, rtol=0)


def test_mrope_text_only_equals_default_rope(tokenizer):
    mrope, default = _native_model(tokenizer, "mrope"), _native_model(tokenizer, "default")
    default.load_state_dict(mrope.state_dict())
    ids = torch.tensor([_native_prompt(tokenizer, mrope, [], "Describe a red circle.")])
    torch.testing.assert_close(mrope(ids, [], return_logits=True)["logits"],
                               default(ids, [], return_logits=True)["logits"], atol=0, rtol=0)
    # with an image the positions differ (a 2 x 3 token grid spans 3 positions, not 6)
    ids = torch.tensor([_native_prompt(tokenizer, mrope, [(32, 48)])])
    img = [torch.randn(3, 32, 48)]
    a, b = (m(ids, img, return_logits=True)["logits"][0, -1] for m in (mrope, default))
    assert not torch.allclose(a, b, atol=1e-4)


def test_mrope_cached_decoding_and_greedy_generation_equal_full_forward(tokenizer):
    model = perturb(_native_model(tokenizer), seed=2)
    g = torch.Generator().manual_seed(1)
    sizes = [(48, 16), (32, 64)]
    images = [torch.randn(3, h, w, generator=g) for h, w in sizes]
    prompt = _native_prompt(tokenizer, model, sizes)
    gen = GenerationConfig(max_new_tokens=10, stop_token_ids=())
    out = generate(model, [prompt], [images], gen, tokenizer.pad_id)[0]
    assert len(out) == 10
    ids = torch.tensor([prompt + out])
    full = model(ids, images, return_logits=True)["logits"][0]
    assert full[len(prompt) - 1:-1].argmax(-1).tolist() == out  # each greedy token is the full forward's argmax
    cache = model.new_cache()
    logits, next_pos = model.prefill(torch.tensor([prompt]), cache, images=images)
    assert next_pos.item() == int(model.rope_positions(ids, images).max()) + 1 - len(out)
    steps = [logits]
    for i, t in enumerate(out[:-1]):
        steps.append(model.decode(torch.tensor([t]), cache, next_pos + i))
    torch.testing.assert_close(torch.stack([s[0] for s in steps]), full[len(prompt) - 1:-1].float(), atol=1e-5, rtol=0)
    # batched with left padding (another prompt, another image) == alone
    other = _native_prompt(tokenizer, model, [(16, 16)], "x")
    other_img = [torch.randn(3, 16, 16, generator=g)]
    batched = generate(model, [prompt, other], [images, other_img], gen, tokenizer.pad_id)
    assert batched == [out, generate(model, [other], [other_img], gen, tokenizer.pad_id)[0]]


def test_native_model_round_trips_through_a_checkpoint(tokenizer, tmp_path):
    model = _native_model(tokenizer)
    model.save_pretrained(tmp_path)
    again = VisionLanguageModel.from_pretrained(tmp_path)
    assert again.cfg.vision.position == "rope2d" and again.cfg.text.rope == "mrope"
    assert again.cfg.vision.processor.max_pixels == 64 * 64
    ids = torch.tensor([_native_prompt(tokenizer, model, [(16, 48)])])
    img = [torch.randn(3, 16, 48)]
    torch.testing.assert_close(again(ids, img, return_logits=True)["logits"], model(ids, img, return_logits=True)["logits"])


@pytest.mark.parametrize("position", ["learned", "rope2d"])
def test_a_clip_without_temporal_patches_is_its_frames_encoded_as_images(tokenizer, position):
    """vision.temporal_patch_size 1: a clip (T, 3, H, W) gives T x tokens_per_image tokens, its frames' features in
    order (what encoding them as images gives), whether the tower batches (learned) or packs (rope2d) them."""
    from vlkit.config import tiny_model_config

    torch.manual_seed(0)
    cfg = tiny_model_config("spatial_merge", vocab_size=len(tokenizer))
    cfg.vision.position = position
    model = VisionLanguageModel(cfg).eval()
    g = torch.Generator().manual_seed(0)
    clip, image = torch.randn(3, 3, 64, 64, generator=g), torch.randn(3, 64, 64, generator=g)
    with torch.no_grad():
        got = model.encode_images([image, clip])
        want = model.encode_images([image, clip[0], clip[1], clip[2]])
    assert model.tokens_per_clip(3, 64, 64) == 3 * model.tokens_per_image(64, 64) == got[1].shape[0]
    torch.testing.assert_close(got[0], want[0])
    torch.testing.assert_close(got[1], torch.cat(want[1:]), atol=1e-5, rtol=1e-5)
