"""Vision as target (VLUAS): code targets in the data, the loss split, text-to-image with CFG, NTP-M."""
import math
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from vlkit.chat import ChatProcessor, class_token_ids
from vlkit.config import VQConfig, tiny_model_config
from vlkit.data.collate import FILLERS, Collator, TargetSpec, encode_samples, image_spans, insert_fillers
from vlkit.errors import UserError
from vlkit.infer.segment import scores_to_mask
from vlkit.infer.generate import ImageGenerationConfig, generate_codes
from vlkit.models.vlm import IGNORE, VisionLanguageModel, ntp_m_loss
from vlkit.models.vq import VisualTokenizer
from vlkit.pipeline import Pipeline

from tests.helpers import tiny_vq, vluas_pipe

SEG_CLASSES = ["background", "circle", "square"]


def _spec(pipe, **kw):
    vq = pipe.vq

    def encode(images):
        return vq.encode(torch.stack(images).float() / 127.5 - 1).reshape(len(images), -1, vq.cfg.depth)

    return TargetSpec(code_offset=pipe.config.text_vocab_size, encode_codes=encode, **kw)


def _drawing(color, shape, where=(32, 32)):
    img = Image.new("RGB", (64, 64), "black")
    d = ImageDraw.Draw(img)
    x, y = where
    box = [x - 14, y - 14, x + 14, y + 14]
    (d.ellipse if shape == "circle" else d.rectangle)(box, fill=color)
    return img


def _gen_sample(i, prompt, img):
    return {"id": f"g{i}", "image_objects": [img],
            "conversations": [{"from": "human", "value": f"Draw: {prompt}"}, {"from": "gpt", "value": "<image>"}]}


def _encode(pipe, samples, **spec_kw):
    return encode_samples(samples, pipe.processor, 64, pipe.model.tokens_per_image, 256, strict=True,
                          spec=_spec(pipe, **spec_kw))


def _train(pipe, examples, steps, lr=3e-3):
    model = pipe.model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    v = pipe.config.vision
    batch = Collator(pipe.tokenizer.pad_id, v.image_mean, v.image_std)(examples)
    for _ in range(steps):
        out = model(batch.input_ids, batch.images, **batch.model_inputs())
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    return model.eval(), out["loss"].item()


# -- data ---------------------------------------------------------------------------------------------------

def test_generation_sample_becomes_code_tokens_and_input_images_get_code_labels(tokenizer):
    pipe = vluas_pipe(tokenizer)
    red = _drawing("red", "circle")
    q = {"id": "q", "image_objects": [red],
         "conversations": [{"from": "human", "value": "<image>\nWhat color?"}, {"from": "gpt", "value": "red"}]}
    gen, ask = _encode(pipe, [_gen_sample(0, "a red circle", red), q])
    pixels = torch.from_numpy(np.asarray(red).copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
    codes = pipe.vq.encode(pixels).flatten().tolist()
    off = pipe.config.text_vocab_size
    # the generated image: its tokens are the code ids in the input and in the labels, and it is not an input image
    assert gen.images == [] and image_spans(gen.input_ids, tokenizer.image_pad_id) == []
    start = gen.input_ids.index(tokenizer.vision_start_id) + 1
    assert gen.input_ids[start:start + 16] == [off + c for c in codes]
    assert gen.labels[start:start + 16] == [off + c for c in codes]
    assert gen.input_ids[start - 2] == tokenizer.gen_start_id
    # an input image keeps its pads (filled with features) but its tokens are labelled with codes
    (a, b), = image_spans(ask.input_ids, tokenizer.image_pad_id)
    assert ask.labels[a:b] == [off + c for c in codes] and len(ask.images) == 1


def test_generation_samples_need_codes_and_prompt_dropout_blanks_the_prompt(tokenizer):
    pipe = vluas_pipe(tokenizer)
    samples = [_gen_sample(i, "a red circle", _drawing("red", "circle")) for i in range(40)]
    plain = encode_samples(samples[:1], pipe.processor, 64, pipe.model.tokens_per_image, 256)
    assert plain == []  # no code encoder: skipped (and counted), not silently trained as an input image
    with pytest.raises(UserError, match="vision_target: codes"):
        encode_samples(samples[:1], pipe.processor, 64, pipe.model.tokens_per_image, 256, strict=True)
    dropped = _encode(pipe, samples, prompt_dropout=0.5)
    blank = pipe.image_prompt_ids("")
    n_blank = sum(ex.input_ids[:len(blank)] == blank for ex in dropped)
    assert 8 <= n_blank <= 32
    again = _encode(pipe, samples, prompt_dropout=0.5)
    assert [e.input_ids for e in again] == [e.input_ids for e in dropped]  # deterministic per sample id


def test_prompt_noise_only_inserts_filler_words_into_generation_prompts(tokenizer):
    prompt = "a red circle to the left of a blue square"
    sample = _gen_sample(0, prompt, _drawing("red", "circle"))
    noisy = insert_fillers(sample, seed=0)["conversations"]
    words, orig = noisy[0]["value"].split(" "), f"Draw: {prompt}".split(" ")
    assert 1 <= len(words) - len(orig) <= 2 and noisy[1] == sample["conversations"][1]
    it = iter(words)
    assert all(w in it for w in orig)  # the original words, in order
    assert set((Counter(words) - Counter(orig)).elements()) <= set(FILLERS)  # and filler words between them
    pipe = vluas_pipe(tokenizer)
    samples = [_gen_sample(i, prompt, _drawing("red", "circle")) for i in range(40)]
    plain = _encode(pipe, samples, prompt_dropout=0.0)
    noised = _encode(pipe, samples, prompt_dropout=0.0, prompt_noise=0.5)
    changed = [a.input_ids != b.input_ids for a, b in zip(plain, noised)]
    assert 8 <= sum(changed) <= 32
    assert all(len(b) > len(a) for a, b, c in zip(plain, noised, changed) if c)
    assert [e.labels[-8:] for e in noised] == [e.labels[-8:] for e in plain]  # the image codes are untouched
    again = _encode(pipe, samples, prompt_dropout=0.0, prompt_noise=0.5)
    assert [e.input_ids for e in again] == [e.input_ids for e in noised]  # deterministic per sample id
    from vlkit.config import ConfigError, DataConfig
    from vlkit.train.stage_data import target_spec
    assert target_spec(pipe, DataConfig(prompt_noise=1.0), seed=0).prompt_noise == 1.0
    with pytest.raises(ConfigError, match="data.prompt_noise=1.5"):
        target_spec(pipe, DataConfig(prompt_noise=1.5), seed=0)


# -- the loss -----------------------------------------------------------------------------------------------

def test_loss_is_text_ce_plus_weighted_code_ce(tokenizer):
    pipe = vluas_pipe(tokenizer, vision_loss_weight=1.0)
    examples = _encode(pipe, [_gen_sample(0, "a red circle", _drawing("red", "circle"))])
    v = pipe.config.vision
    batch = Collator(tokenizer.pad_id, v.image_mean, v.image_std)(examples)
    out1 = pipe.model(batch.input_ids, batch.images, **batch.model_inputs())
    pipe.model.cfg.vision_loss_weight = 0.25
    out2 = pipe.model(batch.input_ids, batch.images, **batch.model_inputs())
    n = out1["num_tokens"]
    n_code = 16
    assert n == examples[0].num_targets
    text_sum = float(out1["text_loss"]) * (n - n_code)
    vision_sum = float(out1["vision_loss"]) * n_code
    assert out1["loss"].item() == pytest.approx((text_sum + vision_sum) / n, rel=1e-5)
    assert out2["loss"].item() == pytest.approx((text_sum + 0.25 * vision_sum) / n, rel=1e-5)


def test_vision_target_none_has_no_code_loss(make_model, tokenizer):
    model = make_model("spatial_merge")
    ids = torch.tensor([ChatProcessor(tokenizer).encode([("user", "<image>hi"), ("assistant", "red")], [16]).input_ids])
    labels = ids.clone()
    labels[ids == tokenizer.image_pad_id] = IGNORE
    out = model(ids, [torch.zeros(3, 64, 64)], labels=labels)
    assert "vision_loss" not in out and model.code_offset is None


# -- generation ---------------------------------------------------------------------------------------------

def test_tiny_model_overfits_text_to_image_pairs_and_regenerates_them_exactly(tokenizer):
    pipe = vluas_pipe(tokenizer)
    pairs = [("a red circle", _drawing("red", "circle", (20, 40))), ("a blue square", _drawing("blue", "square", (44, 24)))]
    examples = _encode(pipe, [_gen_sample(i, p, im) for i, (p, im) in enumerate(pairs)])
    _, loss = _train(pipe, examples, steps=150)
    assert loss < 0.05
    for prompt, img in pairs:
        want = pipe.vq.encode(pipe.vq.preprocess([img]))
        got = generate_codes(pipe.model, pipe.image_prompt_ids(f"Draw: {prompt}"), pipe.image_prompt_ids(""), 16,
                             ImageGenerationConfig(cfg_scale=1.0, temperature=0.0), tokenizer.pad_id)
        assert got.flatten().tolist() == want.flatten().tolist()
        out = pipe.generate_image(prompt, cfg_scale=1.0, temperature=0.0)
        expected = pipe.vq.decode_codes(want)
        assert np.array_equal(np.asarray(out), ((expected[0] + 1) * 127.5).round().byte().permute(1, 2, 0).numpy())
    assert pipe.generate_image("a red circle", cfg_scale=1.0, temperature=0.0).tobytes() != \
        pipe.generate_image("a blue square", cfg_scale=1.0, temperature=0.0).tobytes()


def test_cfg_scale_zero_equals_unconditional_sampling(tokenizer):
    pipe = vluas_pipe(tokenizer, seed=3)
    cond, uncond = pipe.image_prompt_ids("Draw: a red circle"), pipe.image_prompt_ids("")
    for seed in range(3):
        guided = generate_codes(pipe.model, cond, uncond, 16, ImageGenerationConfig(cfg_scale=0.0, seed=seed),
                                tokenizer.pad_id)
        alone = generate_codes(pipe.model, uncond, cond, 16, ImageGenerationConfig(cfg_scale=1.0, seed=seed),
                               tokenizer.pad_id)
        assert guided.tolist() == alone.tolist()
    # and the scale matters: the same draws (seed) from the conditional (scale 1) and the unconditional (scale 0)
    # distributions differ (greedy codes of an untrained model can agree everywhere, one code's bias dominating)
    a = generate_codes(pipe.model, cond, uncond, 16, ImageGenerationConfig(cfg_scale=1.0, seed=0), 0)
    b = generate_codes(pipe.model, cond, uncond, 16, ImageGenerationConfig(cfg_scale=0.0, seed=0), 0)
    assert a.tolist() != b.tolist()


def test_residual_codes_train_the_depth_transformer_and_generate_all_depths(tokenizer):
    pipe = vluas_pipe(tokenizer, depth=2)
    assert pipe.model.depth is not None
    img = _drawing("green", "circle")
    examples = _encode(pipe, [_gen_sample(0, "a green circle", img)])
    assert examples[0].depth_codes and len(examples[0].depth_codes[0][1]) == 2
    v = pipe.config.vision
    batch = Collator(tokenizer.pad_id, v.image_mean, v.image_std)(examples)
    assert batch.depth_codes.shape[-1] == 2
    out = pipe.model(batch.input_ids, batch.images, **batch.model_inputs())
    out["loss"].backward()
    assert pipe.model.depth.head.weight.grad.abs().sum() > 0
    # the deeper code is part of the input embedding: changing it changes the hidden states after it
    e1 = pipe.model.embed(batch.input_ids, batch.images, depth_codes=batch.depth_codes)
    other = batch.depth_codes.clone()
    other[..., 1] = torch.where(other[..., 1] >= 0, (other[..., 1] + 1) % 16, other[..., 1])
    e2 = pipe.model.embed(batch.input_ids, batch.images, depth_codes=other)
    assert not torch.allclose(e1, e2)
    _train(pipe, examples, steps=120)
    want = pipe.vq.encode(pipe.vq.preprocess([img])).reshape(16, 2)
    got = generate_codes(pipe.model, pipe.image_prompt_ids("Draw: a green circle"), pipe.image_prompt_ids(""), 16,
                         ImageGenerationConfig(cfg_scale=1.0, temperature=0.0), tokenizer.pad_id)
    assert got.shape == (16, 2) and got.tolist() == want.tolist()


# -- NTP-M --------------------------------------------------------------------------------------------------

def test_ntp_m_loss_ignores_labels_outside_positives_and_sampled_negatives():
    torch.manual_seed(0)
    logits = torch.randn(5, 40, requires_grad=True)
    positives = torch.tensor([[3, 7], [1, -1], [0, -1], [39, 2], [5, -1]])
    k = 4
    loss = ntp_m_loss(logits, positives, k)
    loss.backward()
    g = logits.grad
    for row in range(5):
        pos = {int(p) for p in positives[row] if p >= 0}
        others = logits[row].detach().clone()
        others[list(pos)] = float("-inf")
        negs = set(others.topk(k).indices.tolist())
        touched = set(g[row].nonzero().flatten().tolist())
        assert touched == pos | negs
        assert all(g[row, p] < 0 for p in pos) and all(g[row, n] > 0 for n in negs)
    # value: mean BCE over the chosen labels, summed over patches
    row = 1
    chosen = [1] + logits[row].detach().clone().index_fill(0, torch.tensor([1]), float("-inf")).topk(k).indices.tolist()
    target = torch.tensor([1.0] + [0.0] * k)
    want = torch.nn.functional.binary_cross_entropy_with_logits(logits[row, chosen], target)
    single = ntp_m_loss(logits[row:row + 1], positives[row:row + 1], k)
    assert float(single) == pytest.approx(float(want), rel=1e-6)


def test_segmentation_decoding_is_restricted_to_the_requested_classes(tokenizer):
    scores = torch.tensor([[0.0, 5.0, -5.0], [9.0, -1.0, -1.0], [-3.0, -3.0, 4.0], [-1.0, 2.0, 0.0]])
    mask = scores_to_mask(scores, (8, 8))
    assert set(np.unique(mask)) <= {0, 1, 2}
    assert mask[0, 0] == 1 and mask[0, 7] == 0 and mask[7, 0] == 2 and mask[7, 7] == 1
    # through the pipeline: only the asked-for class tokens are compared, whatever else the head prefers
    pipe = vluas_pipe(tokenizer, dense_prediction=True)
    img = _drawing("red", "circle")
    with torch.no_grad():  # make a class that is not asked for win everywhere: it must never appear
        tok = class_token_ids(tokenizer, ["square"])[0]
        pipe.model.language.lm_head.weight[tok] += 50.0 * pipe.model.language.norm.weight.sign()
    mask = pipe.segment(img, ["circle"])
    assert mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 1}
    mask = pipe.segment(img, SEG_CLASSES)
    assert set(np.unique(mask)) <= {0, 1, 2}
    with pytest.raises(UserError):
        pipe.segment(img, [])


def test_tiny_model_learns_a_mask_with_ntp_m(tokenizer):
    pipe = vluas_pipe(tokenizer, dense_prediction=True)
    samples = []
    for i, (shape, where) in enumerate([("circle", (18, 18)), ("square", (46, 46)), ("circle", (46, 18))]):
        img = _drawing("white", shape, where)
        mask = (np.asarray(img)[..., 0] > 0).astype(np.uint8) * SEG_CLASSES.index(shape)
        samples.append({"id": f"s{i}", "image_objects": [img], "mask_object": mask, "meta": {"classes": SEG_CLASSES},
                        "conversations": [{"from": "human", "value": "<image>\nSegment the image. Classes: circle, square."},
                                          {"from": "gpt", "value": shape}]})
    examples = _encode(pipe, samples, dense=True)
    assert all(len(e.dense) == 16 for e in examples)
    assert examples[0].num_targets == 16 + sum(t != IGNORE for t in examples[0].labels[1:])
    _train(pipe, examples, steps=150)
    tokens = class_token_ids(tokenizer, SEG_CLASSES)
    for s, ex in zip(samples, examples):
        pred = pipe.segment(s["image_objects"][0], SEG_CLASSES)
        # what perfectly learned targets decode to: +6 on the positive class tokens, -6 elsewhere
        oracle = torch.full((16, len(SEG_CLASSES)), -6.0)
        for n, (_, positive) in enumerate(ex.dense):
            for t in positive:  # later pieces of a split class word are positives too, but decoding reads first tokens
                if t in tokens:
                    oracle[n, tokens.index(t)] = 6.0
        want = scores_to_mask(oracle, (64, 64), s["image_objects"][0])
        assert (pred == want).mean() > 0.9
        assert set(np.unique(pred)) == {0, int(s["mask_object"].max())}


@pytest.mark.parametrize("connector", ["linear", "mlp", "resampler", "spatial_merge"])
def test_vluas_trains_with_every_connector(tokenizer, connector):
    from vlkit.models.vq import check_code_grid, lm_grid_downsample

    base = tiny_model_config(connector)
    down = lm_grid_downsample(base)
    torch.manual_seed(0)
    vq = VisualTokenizer(VQConfig(codebook_size=16, code_dim=8, hidden_size=16, num_layers=1, downsample=down,
                                  image_size=64)).eval()
    cfg = tiny_model_config(connector, vocab_size=len(tokenizer) + 16, vision_target="codes", vq=vq.cfg,
                            text_vocab_size=len(tokenizer))
    cfg.image_token_id = tokenizer.image_pad_id
    check_code_grid(cfg)
    pipe = Pipeline(VisionLanguageModel(cfg), tokenizer, vq=vq)
    red = _drawing("red", "circle")
    ask = {"id": "q", "image_objects": [red],
           "conversations": [{"from": "human", "value": "<image>\nWhat color?"}, {"from": "gpt", "value": "red"}]}
    examples = _encode(pipe, [_gen_sample(0, "a red circle", red), ask])
    n_codes = vq.num_codes
    assert sum(t >= len(tokenizer) for t in examples[0].labels) == n_codes  # the generated image's codes
    assert sum(t >= len(tokenizer) for t in examples[1].labels) == n_codes  # the input image's codes
    v = pipe.config.vision
    batch = Collator(tokenizer.pad_id, v.image_mean, v.image_std)(examples)
    out = pipe.model.train()(batch.input_ids, batch.images, **batch.model_inputs())
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and float(out["vision_loss"]) > 0
    assert next(pipe.model.connector.parameters()).grad is not None
    pipe.model.eval()
    assert pipe.generate_image("a red circle", seed=0).size == (64, 64)


# -- growing a vision-as-input model into VLUAS ----------------------------------------------------------------

@pytest.mark.parametrize("tied", [False, True])
def test_growing_into_vluas_keeps_text_logits_and_adds_code_rows(tokenizer, tied):
    from vlkit.config import ConfigError

    torch.manual_seed(0)
    cfg = tiny_model_config("spatial_merge", vocab_size=len(tokenizer))
    cfg.text.tie_word_embeddings = tied  # tied as in SmolLM2, untied as in Qwen2.5-7B
    cfg.image_token_id = tokenizer.image_pad_id
    base = VisionLanguageModel(cfg).eval()
    vq = tiny_vq()
    grown = base.with_visual_codes(vq.cfg, vision_loss_weight=0.5).eval()
    n = len(tokenizer)
    assert grown.code_offset == n and grown.cfg.text.vocab_size == n + 16 and grown.cfg.vision_loss_weight == 0.5
    assert base.cfg.vision_target == "none"  # the original is untouched
    ids = torch.tensor([tokenizer.encode("Draw: a red circle above a blue square")])
    with torch.no_grad():
        before = base.logits(base.language(base.embed(ids)))
        after = grown.logits(grown.language(grown.embed(ids)))
    torch.testing.assert_close(after[..., :n], before, atol=1e-5, rtol=1e-5)  # every old weight kept
    emb = grown.language.embed_tokens.weight.detach()
    codes, text = emb[n:], emb[:n]
    assert len(set(map(tuple, codes.tolist()))) == 16  # distinct rows
    spread = (text - text.mean(0)).norm(dim=1).mean()
    assert (codes - text.mean(0)).norm(dim=1).max() < 0.5 * spread  # near the mean text embedding
    assert (grown.language.lm_head.weight is grown.language.embed_tokens.weight) == tied
    with pytest.raises(ConfigError, match="already predicts visual codes"):
        grown.with_visual_codes(vq.cfg)
    wrong = VQConfig(codebook_size=16, code_dim=8, hidden_size=16, num_layers=1, downsample=8, image_size=64)
    with pytest.raises(ConfigError, match="downsample"):
        base.with_visual_codes(wrong)
    # the grown model trains on code targets and draws
    pipe = Pipeline(grown, tokenizer, vq=vq)
    _, loss = _train(pipe, _encode(pipe, [_gen_sample(0, "a red circle", _drawing("red", "circle"))]), steps=3)
    assert math.isfinite(loss)
    assert pipe.generate_image("a red circle", seed=0).size == (64, 64)


@pytest.mark.parametrize("dense_from", ["lm", "connector"])
def test_dense_from_says_which_image_tokens_ntp_m_trains(tokenizer, dense_from):
    """`dense_from: connector` scores the connector's output with the LM head: the per-patch loss teaches the
    vision path directly and never reaches the LM's layers; `lm` scores what the LM outputs at image tokens."""
    pipe = vluas_pipe(tokenizer, dense_prediction=True, dense_from=dense_from)
    img = _drawing("white", "circle")
    mask = (np.asarray(img)[..., 0] > 0).astype(np.uint8) * SEG_CLASSES.index("circle")
    sample = {"id": "s", "image_objects": [img], "mask_object": mask, "meta": {"classes": SEG_CLASSES},
              "conversations": [{"from": "human", "value": "<image>\nSegment the image. Classes: circle, square."},
                                {"from": "gpt", "value": "circle"}]}
    v = pipe.config.vision
    batch = Collator(pipe.tokenizer.pad_id, v.image_mean, v.image_std)(_encode(pipe, [sample], dense=True))
    inputs = batch.model_inputs()
    inputs["labels"] = torch.full_like(inputs["labels"], IGNORE)  # the per-patch loss alone
    out = pipe.model.train()(batch.input_ids, batch.images, **inputs)
    out["loss"].backward()
    lm_grad = sum(float(p.grad.abs().sum()) for p in pipe.model.language.layers.parameters() if p.grad is not None)
    vision_grad = sum(float(p.grad.abs().sum()) for p in pipe.model.vision.parameters() if p.grad is not None)
    assert float(out["loss"]) > 0 and vision_grad > 0
    assert (lm_grad == 0) == (dense_from == "connector")
