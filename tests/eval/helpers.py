"""A model whose answer depends on the image, and data for it: the colour of a plain image."""
import json

from PIL import Image

COLORS = {"red": (220, 30, 30), "green": (30, 160, 60), "blue": (40, 60, 220), "yellow": (230, 200, 40)}
GREY = (128, 128, 128)


def write_color_data(root, colors, questions=None, answers=None, size=(24, 16), extra=()):
    """One vqa sample per colour (id vqa-i, image images/i.png of that colour); `answers` default to the colours.
    `extra`: more sample dicts appended as they are. Returns the samples."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    samples = []
    for i, color in enumerate(colors):
        Image.new("RGB", size, COLORS[color]).save(root / "images" / f"{i}.png")
        question = questions[i] if questions else "What color is the image?"
        answer = answers[i] if answers else color
        samples.append({"id": f"vqa-{i}", "image": f"images/{i}.png", "task": "vqa",
                        "meta": {"answers": [answer], "question_type": "color"},
                        "conversations": [{"from": "human", "value": f"<image>\n{question}"},
                                          {"from": "gpt", "value": answer}]})
    samples += list(extra)
    (root / "test.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    return samples


class ColorPipe:
    """Answers with the colour name of the first image's top-left pixel ("grey" for a blank image), except for a
    prompt with "Read: WORD", answered WORD whatever the image (a task the text alone solves)."""

    def __init__(self, fingerprint="color-model"):
        self.fp = fingerprint
        self.calls = []  # (prompt, [PIL images]) per sample asked

    def fingerprint(self):
        return self.fp

    def chat_batch(self, prompts, images, max_new_tokens=64, temperature=0.0):
        self.calls += list(zip(prompts, images))
        return [self.answer(p, ims) for p, ims in zip(prompts, images)]

    @staticmethod
    def answer(prompt, images):
        if "Read: " in prompt:
            return prompt.split("Read: ", 1)[1].split()[0]
        pixel = images[0].convert("RGB").getpixel((0, 0))
        names = {rgb: name for name, rgb in COLORS.items()}
        return names.get(pixel, "grey" if pixel == GREY else "unknown")
