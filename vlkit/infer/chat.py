"""ChatBundle: a Bundle (a model with its tokenizer and processor) that answers, draws and segments. It sits
below the pipeline layer so that the trainer's learning curve and evaluation can chat with the model they
train; `vlkit.pipeline.Pipeline`, the user facade, is a ChatBundle."""
from __future__ import annotations

from typing import Any, Iterator, Optional, Sequence

from vlkit.chat import IMAGE_PROMPT
from vlkit.config import GenerationConfig, ImageGenerationConfig
from vlkit.errors import UserError
from vlkit.images import ImageLike
from vlkit.infer.generate import TextStreamer, generate, generate_codes, generate_stream
from vlkit.infer.segment import segment
from vlkit.models.bundle import Bundle
from vlkit.models.vq import tensor_to_pil
from vlkit.video import VideoLike, load_video



class ChatBundle(Bundle):
    def generation_config(self, **kwargs: Any) -> GenerationConfig:
        """GenerationConfig(**kwargs) that stops at the tokenizer's stop tokens and samples text tokens only."""
        gen = GenerationConfig(**kwargs)
        if not gen.stop_token_ids:
            gen.stop_token_ids = tuple(self.tokenizer.stop_ids)
        if self.config.text_vocab_size is not None:
            gen.vocab_limit = self.config.text_vocab_size
        return gen

    # -- chat ------------------------------------------------------------------------------------------
    def chat_batch(self, prompts: Sequence[str | Sequence[dict]], images: Sequence[Sequence[ImageLike]] = (),
                   max_new_tokens: int = 64, temperature: float = 0.0, videos: Sequence[Sequence[VideoLike]] = (),
                   **kwargs: Any) -> list[str]:
        """Answers for several prompts at once (each prompt: the user text, or a list of chat messages); `images`
        and `videos` give each prompt's images and clips (a clip: a video file, a frame folder or a list of
        frames, sampled by vlkit.video as the model was trained: ModelConfig.video)."""
        images = list(images) or [[] for _ in prompts]
        videos = list(videos) or [[] for _ in prompts]
        ids, pixels = [], []
        for p, row, clips in zip(prompts, images, videos):
            i, px = self.media_prompt(p, [self.image_tensor(im) for im in row], [self.video_frames(c) for c in clips])
            ids.append(i)
            pixels.append(px)
        gen = self.generation_config(max_new_tokens=max_new_tokens, temperature=temperature, **kwargs)
        out = generate(self.model, ids, pixels, gen, self.tokenizer.pad_id)
        return [self.tokenizer.decode(o).strip() for o in out]

    def video_frames(self, clip: VideoLike) -> list:
        """A clip's frames as model inputs, sampled as the model was trained (ModelConfig.video: fps, max_frames,
        max_total_pixels; the default VideoConfig for checkpoints that do not record one)."""
        return [self.image_tensor(f) for f in load_video(clip, self.config.video)]

    def chat(self, prompt: str | Sequence[dict], images: Sequence[ImageLike] = (), max_new_tokens: int = 64,
             temperature: float = 0.0, videos: Sequence[VideoLike] = (), **kwargs: Any) -> str:
        return self.chat_batch([prompt], [list(images)], max_new_tokens, temperature, [list(videos)], **kwargs)[0]

    def chat_stream(self, prompt: str | Sequence[dict], images: Sequence[ImageLike] = (), max_new_tokens: int = 64,
                    temperature: float = 0.0, **kwargs: Any) -> Iterator[str]:
        """Text pieces as they are generated."""
        pixels = [self.image_tensor(im) for im in images]
        ids = self.prompt_ids(prompt, pixels)
        gen = self.generation_config(max_new_tokens=max_new_tokens, temperature=temperature, **kwargs)
        streamer = TextStreamer(self.tokenizer.decode)
        stops = set(gen.stop_token_ids)
        for _, tok in generate_stream(self.model, [ids], [pixels], gen, self.tokenizer.pad_id):
            if tok in stops:
                break
            piece = streamer.push(tok)
            if piece:
                yield piece
        rest = streamer.flush()
        if rest:
            yield rest

    # -- vision as target ------------------------------------------------------------------------------
    def image_prompt_ids(self, text: str) -> list[int]:
        """A user turn, then the assistant opening an image: `... assistant\n<|gen_start|><|vision_start|>`."""
        t = self.tokenizer
        ids = self.processor.encode([("user", text)], [], add_generation_prompt=True).input_ids
        return ids + [t.gen_start_id, t.vision_start_id]

    def generate_image(self, prompt: str, cfg_scale: float = ImageGenerationConfig.cfg_scale,
                       temperature: float = ImageGenerationConfig.temperature, top_k: int = ImageGenerationConfig.top_k,
                       top_p: float = ImageGenerationConfig.top_p, seed: Optional[int] = None):
        """Text -> PIL image (VLUAS models): visual codes sampled with classifier-free guidance against the blank
        prompt the model saw under prompt dropout, then decoded by the visual tokenizer."""
        if not self.can_generate_images:
            raise UserError("this model cannot generate images: it needs vision_target='codes' and a visual "
                            "tokenizer (vq/ in the checkpoint)")
        if not isinstance(prompt, str) or not prompt.strip():
            raise UserError("the image prompt must be a non-empty string")
        gen = ImageGenerationConfig(cfg_scale=cfg_scale, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
        cond = self.image_prompt_ids(IMAGE_PROMPT.format(prompt.strip()))
        codes = generate_codes(self.model, cond, self.image_prompt_ids(""), self.vq.num_codes, gen,
                               self.tokenizer.pad_id)
        return tensor_to_pil(self.vq.decode_codes(codes[None]))[0]

    def segment(self, image: ImageLike, classes: Sequence[str], refine: bool = True):
        """-> numpy uint8 mask at the image's size (NTP-M). Values index `classes` if it lists "background",
        else 0 = background and k = classes[k - 1]. `refine`: edge-aware refinement guided by the image
        (vlkit.infer.segment); False gives the plain bilinear upsampling of the per-patch scores."""
        if not self.can_segment:
            raise UserError("this model was not trained for dense prediction (model.dense_prediction is false)")
        return segment(self.model, self.processor, self.tokenizer, image, classes, refine=refine)
