"""vlkit.train.grpo: the objective's pieces on hand-made cases, the config's errors, and the grpo stage end to end: a
tiny model learns a colour it can only see, a LoRA stage merges, an interrupted run resumes exactly."""
import json
import math
import random

import pytest
import torch
from PIL import Image

from tests.conftest import CORPUS
from vlkit.config import ANSWER_FORMAT_NAMES, ConfigError, DataConfig, GRPOConfig, Recipe, StageConfig, TrainConfig, \
    from_dict, tiny_model_config
from vlkit.eval.rewards import ANSWER_FORMATS, REWARDS, reward
from vlkit.models.vlm import VisionLanguageModel
from vlkit.pipeline import Pipeline
from vlkit.tokenizer import Tokenizer
from vlkit.train.grpo import check_stage, clipped_objective, group_advantages, kl_estimate, loss_sum
from vlkit.train.trainer import train

COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
QUESTION = "What color is the image?"


@reward("test_color_match")
def color_match(rollout):
    """1 when the answer is exactly the image's colour."""
    return float((rollout.answer or "").lower() == rollout.sample["meta"]["answers"][0])


@reward("test_grpo_short")
def short(rollout):
    """Shorter answers score higher: a reward that varies among an untrained model's answers."""
    return 1.0 / (1.0 + len(rollout.text))


# ---------------------------------------------------------------------------------------------------------
# the objective


def test_group_advantages_centre_and_scale_within_each_group():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0], [0.0, 1.0, 2.0, 3.0]])
    a = group_advantages(r, scale=True)
    for g in range(3):
        centred = r[g] - r[g].mean()
        torch.testing.assert_close(a[g], centred / (r[g].std() + 1e-4))
    assert torch.all(a[1] == 0)  # equal rewards: nothing to learn, and no NaN
    torch.testing.assert_close(a.sum(1), torch.zeros(3), atol=1e-6, rtol=0)
    torch.testing.assert_close(a[0], torch.tensor([1.0, -1.0, -1.0, 1.0]) * 0.5 / (0.5 / math.sqrt(3 / 4) + 1e-4))
    d = group_advantages(r, scale=False)  # Dr. GRPO: no division
    torch.testing.assert_close(d, r - r.mean(1, keepdim=True))
    assert torch.all(d[1] == 0)


def _grad_of_logp(advantage: float, logp_old_shift: float = 0.0, eps: float = 0.2, eps_high: float = 0.2) -> float:
    """d loss / d logp for one token whose logp is 0 and whose logp_old is `logp_old_shift` below it."""
    logp = torch.zeros(1, requires_grad=True)
    loss, _ = clipped_objective(logp, torch.tensor([-logp_old_shift]), torch.tensor([advantage]), eps, eps_high)
    loss.sum().backward()
    return float(logp.grad)


def test_clipped_objective_pushes_logp_with_the_advantage_and_stops_in_the_clipped_region():
    # ratio 1 (one update per rollout batch): a gradient step (-grad) raises logp for A > 0 and lowers it for A < 0
    assert _grad_of_logp(2.0) < 0 and _grad_of_logp(-2.0) > 0
    assert _grad_of_logp(2.0) == pytest.approx(-2.0)  # at ratio 1 the gradient is -A
    # ratio e^0.5 > 1 + eps with A > 0: clipped, no gradient; with A < 0 the unclipped term is the min, it still pushes
    assert _grad_of_logp(1.0, logp_old_shift=0.5) == 0.0
    assert _grad_of_logp(-1.0, logp_old_shift=0.5) > 0
    # ratio e^-0.5 < 1 - eps with A < 0: clipped; asymmetric clipping (epsilon_high) moves only the upper bound
    assert _grad_of_logp(-1.0, logp_old_shift=-0.5) == 0.0
    assert _grad_of_logp(1.0, logp_old_shift=0.1, eps_high=0.05) == 0.0
    assert _grad_of_logp(1.0, logp_old_shift=0.1, eps_high=0.28) < 0
    _, clipped = clipped_objective(torch.tensor([0.0, 0.0]), torch.tensor([-0.5, 0.0]), torch.tensor([1.0, 1.0]),
                                   0.2, 0.2)
    assert clipped.tolist() == [True, False]


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_kl_is_zero_when_the_policy_is_the_reference_and_positive_after_a_change(estimator):
    torch.manual_seed(0)
    logits = torch.randn(50, 11)
    tokens = torch.multinomial(logits.softmax(-1), 1).squeeze(1)  # sampled from the policy, as rollouts are
    logp = logits.log_softmax(-1).gather(1, tokens[:, None]).squeeze(1)
    assert torch.all(kl_estimate(logp, logp.clone(), estimator) == 0)
    moved = (logits + 1.5 * torch.randn(50, 11)).log_softmax(-1).gather(1, tokens[:, None]).squeeze(1)
    assert float(kl_estimate(logp, moved, estimator).mean()) > 0.05
    if estimator == "k3":  # k3 is >= 0 token by token
        assert torch.all(kl_estimate(logp, moved, estimator) >= 0)


def test_token_and_sequence_averaging_differ_as_defined():
    # completion 0 has one token of loss 1; completion 1 has three tokens of loss 0
    per_token = torch.tensor([1.0, 0.0, 0.0, 0.0])
    seq = torch.tensor([0, 1, 1, 1])
    lengths = torch.tensor([1, 3])
    assert float(loss_sum(per_token, seq, lengths, "token")) / 4 == pytest.approx(0.25)  # DAPO: / all tokens
    assert float(loss_sum(per_token, seq, lengths, "sequence")) / 2 == pytest.approx(0.5)  # GRPO: / completions
    per_token = torch.tensor([0.0, 3.0, 3.0, 3.0])
    assert float(loss_sum(per_token, seq, lengths, "token")) / 4 == pytest.approx(2.25)
    assert float(loss_sum(per_token, seq, lengths, "sequence")) / 2 == pytest.approx(1.5)


# ---------------------------------------------------------------------------------------------------------
# config


def test_the_answer_formats_config_allows_are_the_registry():
    assert ANSWER_FORMAT_NAMES == tuple(ANSWER_FORMATS)


@pytest.mark.parametrize("bad,message", [
    ({"num_generations": 1}, r"stages.0.grpo.num_generations=1 must be >= 2"),
    ({"loss_type": "mean"}, r"stages.0.grpo.loss_type='mean' is not allowed; choose one of \['sequence', 'token'\]"),
    ({"kl_estimator": "k2"}, r"stages.0.grpo.kl_estimator='k2' is not allowed; choose one of \['k1', 'k3'\]"),
    ({"answer_format": "xml"}, r"stages.0.grpo.answer_format='xml' is not allowed"),
    ({"rewards": {"test_color_match": "high"}}, r"grpo.rewards: 'test_color_match': 'high' must map a reward name"),
    ({"temperature": 0}, r"stages.0.grpo.temperature=0.0 must be in \(0, 100\]"),
    ({"epsilon": 0}, r"stages.0.grpo.epsilon=0.0 must be in \(0, 1\]"),
    ({"beta": -0.1}, r"stages.0.grpo.beta=-0.1 must be >= 0"),
    ({"rewardz": {}}, r"stages.0.grpo: unknown key\(s\) \['rewardz'\]"),
])
def test_bad_grpo_settings_name_the_key(bad, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(StageConfig, {"name": "rl", "train": "grpo", "grpo": bad}, "stages.0")


def test_grpo_settings_belong_to_grpo_stages_and_rewards_must_be_registered():
    st = from_dict(StageConfig, {"train": "grpo"}, "stages.0")
    assert st.grpo == GRPOConfig()  # defaults when the key is absent
    with pytest.raises(ConfigError, match=r"stage 'sft': `grpo:` settings need `train: grpo`"):
        from_dict(StageConfig, {"name": "sft", "train": "sft", "grpo": {}}, "stages.0")
    with pytest.raises(ConfigError, match=r"stage 'rl': unknown reward\(s\) \['no_such_reward'\]; registered"):
        check_stage(StageConfig(name="rl", train="grpo", grpo=GRPOConfig(rewards={"no_such_reward": 1.0})),
                    TrainConfig())
    with pytest.raises(ConfigError, match=r"stage 'rl': grpo.rewards is empty"):
        check_stage(StageConfig(name="rl", train="grpo"), TrainConfig())
    with pytest.raises(ConfigError, match=r"train: grpo runs under train.distributed=ddp only"):
        check_stage(StageConfig(name="rl", train="grpo", grpo=GRPOConfig(rewards={"test_color_match": 1})),
                    TrainConfig(distributed="fsdp"))
    assert "test_color_match" in REWARDS


# ---------------------------------------------------------------------------------------------------------
# end to end: a colour only the image tells


def write_colors(folder, n, seed, every_label=False):
    """n single-colour images (red, green, blue in turn, shades jittered) asked "What color is the image?";
    `every_label`: each image three times, once with each colour as the answer (a blind target: the best answer
    ignores the image). meta.answers always holds the true colour."""
    rng = random.Random(seed)
    (folder / "images").mkdir(parents=True)
    with open(folder / "data.jsonl", "w") as f:
        for i in range(n):
            color = list(COLORS)[i % len(COLORS)]
            rgb = tuple(max(0, min(255, v + rng.randint(-20, 20))) for v in COLORS[color])
            Image.new("RGB", (64, 64), rgb).save(folder / "images" / f"{i}.png")
            for answer in (list(COLORS) if every_label else [color]):
                f.write(json.dumps({"id": f"{i}-{answer}", "image": f"images/{i}.png", "task": "vqa",
                                    "conversations": [{"from": "human", "value": f"<image>\n{QUESTION}"},
                                                      {"from": "gpt", "value": answer}],
                                    "meta": {"answers": [color]}}) + "\n")
    return folder


@pytest.fixture(scope="module")
def colors(tmp_path_factory):
    root = tmp_path_factory.mktemp("colors")
    return {"blind": write_colors(root / "blind", 30, 1, every_label=True),
            "train": write_colors(root / "train", 60, 2), "held": write_colors(root / "held", 30, 3)}


@pytest.fixture(scope="module")
def color_tokenizer():
    # the colour names as single tokens: an answer is one token and the stop token
    return Tokenizer.train(CORPUS * 10 + ["red", "green", "blue"] * 50, vocab_size=320)


def color_pipe(tok, seed):
    torch.manual_seed(seed)
    cfg = tiny_model_config("spatial_merge", vocab_size=len(tok))
    cfg.image_token_id = tok.image_pad_id
    return Pipeline(VisionLanguageModel(cfg), tok)


def greedy_accuracy(pipe, folder) -> float:
    """Share of the folder's images whose greedy answer is exactly their colour."""
    rows = [json.loads(line) for line in (folder / "data.jsonl").read_text().splitlines()]
    was_training = pipe.model.training
    pipe.model.eval()
    answers = pipe.chat_batch([QUESTION] * len(rows), [[str(folder / r["image"])] for r in rows], max_new_tokens=4)
    pipe.model.train(was_training)
    return sum(a.lower() == r["meta"]["answers"][0] for a, r in zip(answers, rows)) / len(rows)


def grpo_stage(data, steps, lr=2e-3, batch_size=6, **grpo):
    settings = dict(dict(num_generations=8, max_new_tokens=4, rewards={"test_color_match": 1.0}), **grpo)
    return StageConfig(name="rl", train="grpo", steps=steps, lr=lr, warmup_steps=0, batch_size=batch_size,
                       data=DataConfig(train=[{"path": str(data)}], max_length=128), grpo=GRPOConfig(**settings))


def blind_stage(data, steps=60):
    return StageConfig(name="warm", train="sft", steps=steps, lr=5e-3, warmup_steps=0, batch_size=16,
                       data=DataConfig(train=[{"path": str(data)}], max_length=128))


LEARNING_SEED = 0  # seeds 0, 1, 2: held-out greedy accuracy 0.33 -> 1.0, 0.33 -> 0.67, 0.33 -> 1.0 (docs/rl.md)


def test_grpo_raises_the_reward_on_a_task_that_needs_the_image(colors, color_tokenizer, tmp_path):
    """A short SFT warm-up on blind targets (every colour for every image) teaches the answer format but not the
    colour: greedy answers name one colour for every image (1/3 right). GRPO with a reward for the right colour
    must make the model look: held-out greedy accuracy rises by at least 0.3."""
    pipe = color_pipe(color_tokenizer, LEARNING_SEED)
    before = {}

    def after_warmup(trainer, global_step):
        if global_step == 60:
            before["accuracy"] = greedy_accuracy(trainer.pipe, colors["held"])

    recipe = Recipe(train=TrainConfig(out=str(tmp_path), precision="fp32", log_every=5, seed=LEARNING_SEED),
                    stages=[blind_stage(colors["blind"]), grpo_stage(colors["train"], steps=60)])
    train(recipe, pipe=pipe, callbacks=(after_warmup,))
    after = greedy_accuracy(pipe, colors["held"])
    print(f"held-out greedy accuracy: {before['accuracy']:.3f} -> {after:.3f}")
    assert before["accuracy"] < 0.5  # blind: about 1/3
    assert after >= before["accuracy"] + 0.3
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    rl = [r for r in rows if r["stage"] == "rl"]
    assert len(rl) == 12 and all(k in rl[0] for k in ("reward", "reward_std", "reward/test_color_match",
                                                      "clip_fraction", "entropy", "completion_length", "loss",
                                                      "lr", "grad_norm"))
    assert "kl" not in rl[0]  # beta 0: no reference, no KL
    assert all(r["clip_fraction"] == 0.0 for r in rl)  # one update per rollout batch: the ratio is 1
    assert all(1.0 <= r["completion_length"] <= 4.0 for r in rl)
    assert rl[0]["reward"] == rl[0]["reward/test_color_match"]  # one reward of weight 1


def _grpo_recipe(colors, out, save_every=0, **grpo):
    settings = dict(num_generations=3, rewards={"test_color_match": 1.0, "test_grpo_short": 1.0})
    stage = grpo_stage(colors["train"], steps=4, lr=1e-3, batch_size=2, **dict(settings, **grpo))
    return Recipe(train=TrainConfig(out=str(out), precision="fp32", log_every=1, save_every=save_every, keep_last=2,
                                    seed=5), stages=[stage])


def _rows(run):
    return [{k: v for k, v in json.loads(line).items() if not k.endswith("_per_s")}  # rates depend on the clock
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_an_interrupted_grpo_stage_resumes_exactly(colors, color_tokenizer, tmp_path):
    """beta > 0: the checkpoint carries the reference policy; rollouts are seeded by (seed, step, rank)."""
    settings = dict(beta=0.1, kl_estimator="k3", loss_type="token", epsilon_high=0.28)
    start = color_pipe(color_tokenizer, 1).model.state_dict()
    full = train(_grpo_recipe(colors, tmp_path / "a", **settings), pipe=color_pipe(color_tokenizer, 1))

    def kill_at_3(trainer, global_step):
        if global_step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(_grpo_recipe(colors, tmp_path / "b", save_every=2, **settings), pipe=color_pipe(color_tokenizer, 1),
              callbacks=(kill_at_3,))
    assert (tmp_path / "b" / "checkpoints" / "step-0000002" / "trainer_state" / "reference.safetensors").is_file()
    resumed = train(_grpo_recipe(colors, tmp_path / "b", save_every=2, **settings), resume=True)
    from vlkit.pipeline import load

    a, b = load(full).model.state_dict(), load(resumed).model.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert any(not torch.equal(a[k], start[k]) for k in a if k.startswith("language."))  # it did learn
    assert _rows(tmp_path / "a") == _rows(tmp_path / "b")
    kls = [r["kl"] for r in _rows(tmp_path / "a")]
    assert kls[0] == 0.0 and kls[-1] > 0  # the policy starts as its reference, then moves away


def test_a_lora_grpo_stage_trains_adapters_and_merges(colors, color_tokenizer, tmp_path):
    pipe = color_pipe(color_tokenizer, 2)
    before = {k: v.clone() for k, v in pipe.model.state_dict().items()}
    recipe = _grpo_recipe(colors, tmp_path, lora=True, beta=0.05)
    recipe.stages[0].lora_r = 4
    final = train(recipe, pipe=pipe)
    from vlkit.pipeline import load

    after = load(final).model.state_dict()
    assert set(after) == set(before)  # merged: the plain parameter names
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("vision."))
    assert any(not torch.equal(before[k], after[k]) for k in before if ".self_attn.q_proj" in k)
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("connector."))
    # the LM's norms and embeddings are not adapted: frozen in a LoRA stage
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("language.") and "norm" in k)


def test_a_grpo_stage_asks_for_its_answer_format_in_the_prompt():
    from vlkit.train.stage_data import ask_format

    sample = {"id": "s", "conversations": [{"from": "system", "value": "Be brief."},
                                           {"from": "human", "value": "<image>\nWhat color?"},
                                           {"from": "gpt", "value": "red"}, {"from": "human", "value": "Sure?"}]}
    asked = ask_format(sample, "visionary")
    turns = [t["value"] for t in asked["conversations"]]
    assert turns == ["Be brief.", f"<image>\nWhat color?\n{ANSWER_FORMATS['visionary'].instruction}", "red", "Sure?"]
    assert sample["conversations"][1]["value"] == "<image>\nWhat color?"  # the sample itself is not changed
    assert ask_format(sample, "plain") == sample
