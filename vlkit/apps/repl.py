"""`vlkit chat CKPT [--image PATH]`: a terminal chat with streaming output.

The running conversation is kept as OpenAI-style messages (image parts where images were attached) and sent
whole to `Pipeline.chat_stream` at each turn. Commands: /image PATH (attach to the next message), /reset,
/quit (or Ctrl-D). A bad image path prints an error and the chat goes on.
"""
from __future__ import annotations

import sys
from typing import Any, Callable, Optional, TextIO

from vlkit.errors import UserError
from vlkit.images import load_image

HELP = "commands: /image PATH (attach an image to your next message), /reset, /quit"


class ChatSession:
    """The conversation state of the REPL (also usable on its own)."""

    def __init__(self, pipe, max_new_tokens: int = 128, temperature: float = 0.0):
        self.pipe = pipe
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.reset()

    def reset(self) -> None:
        self.messages: list[dict] = []
        self.images: list[Any] = []  # every image of the conversation, in order
        self.pending: list[Any] = []  # attached, not yet sent

    def attach(self, path: str) -> None:
        """Decode now so a bad path or file is reported at once (raises ImageError)."""
        max_images = self.pipe.config.max_images
        if len(self.images) + len(self.pending) >= max_images:
            raise UserError(f"this model accepts at most {max_images} images per conversation; /reset to start over")
        self.pending.append(load_image(path))

    def ask(self, text: str):
        """Yields the answer's text pieces; the turn is kept only once the answer is complete."""
        content = [{"type": "image_url", "image_url": {"url": "attached"}} for _ in self.pending]
        content.append({"type": "text", "text": text})
        messages = self.messages + [{"role": "user", "content": content}]
        images = self.images + self.pending
        pieces = []
        for piece in self.pipe.chat_stream(messages, images=images, max_new_tokens=self.max_new_tokens,
                                           temperature=self.temperature):
            pieces.append(piece)
            yield piece
        self.messages = messages + [{"role": "assistant", "content": "".join(pieces)}]
        self.images, self.pending = images, []


def repl(ckpt, image: Optional[str] = None, max_new_tokens: int = 128, temperature: float = 0.0,
         input_fn: Callable[[str], str] = input, out: TextIO = sys.stdout) -> None:
    """Run the chat loop. `ckpt` is a checkpoint directory or an already loaded Pipeline."""
    if isinstance(ckpt, (str, bytes)) or hasattr(ckpt, "__fspath__"):
        import vlkit

        pipe = vlkit.load(ckpt)
    else:
        pipe = ckpt
    session = ChatSession(pipe, max_new_tokens, temperature)
    print(f"vlkit chat ({HELP})", file=out)
    if image:
        _attach(session, image, out)
    while True:
        try:
            line = input_fn("you> ")
        except (EOFError, KeyboardInterrupt):
            print(file=out)
            return
        text = line.strip()
        if not text:
            continue
        if text in ("/quit", "/exit"):
            return
        if text == "/reset":
            session.reset()
            print("(conversation cleared)", file=out)
            continue
        if text.startswith("/image"):
            path = text[len("/image"):].strip()
            if not path:
                print("usage: /image PATH", file=out)
            else:
                _attach(session, path, out)
            continue
        if text.startswith("/"):
            print(f"unknown command {text.split()[0]!r}; {HELP}", file=out)
            continue
        print("vlkit> ", end="", file=out, flush=True)
        try:
            for piece in session.ask(text):
                print(piece, end="", file=out, flush=True)
        except UserError as exc:
            print(f"\nerror: {exc}", file=out)
            continue
        except KeyboardInterrupt:
            print("\n(interrupted)", file=out)
            continue
        print(file=out)


def _attach(session: ChatSession, path: str, out: TextIO) -> None:
    try:
        session.attach(path)
        print(f"(image {path} attached to your next message)", file=out)
    except UserError as exc:
        print(f"error: {exc}", file=out)
