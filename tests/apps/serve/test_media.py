"""Image URLs -> bytes / images: every way a URL can fail is an APIError naming its param."""
import asyncio

import pytest

from vlkit.apps.serve.errors import APIError
from vlkit.apps.serve.media import MediaLoader, data_url_payload
from vlkit.apps.serve.schemas import ChatMessage

from tests.apps.serve.helpers import vision_messages

P = "messages[0].content[0].image_url.url"


def _loader(root=None, remote=False):
    return MediaLoader(engine=None, local_root=root, allow_remote=remote, remote_timeout=1.0, remote_max_bytes=10)


def _fails(code, call, status=400):
    with pytest.raises(APIError) as exc:
        call()
    assert (exc.value.status, exc.value.param, exc.value.code) == (status, P, code)
    return exc.value.message


def test_data_urls():
    assert data_url_payload("data:image/png;base64,QUJD", P) == "QUJD"
    assert data_url_payload("data:IMAGE/PNG; base64 ,QUJD", P) == "QUJD"
    assert "malformed" in _fails(None, lambda: data_url_payload("data:image/png;base64", P))
    assert "text/plain" in _fails("unsupported_mime", lambda: data_url_payload("data:text/plain;base64,QUJD", P))
    assert "base64" in _fails(None, lambda: data_url_payload("data:image/png,QUJD", P))


def test_local_files_only_inside_the_allowed_folder(tmp_path):
    root = tmp_path / "media"
    root.mkdir()
    (root / "a.png").write_bytes(b"png bytes")
    (tmp_path / "secret.png").write_bytes(b"secret")
    assert _loader(root).read_local(f"file://{root}/a.png", P) == b"png bytes"
    assert "--allowed-local-media-path" in _fails("local_media_disabled",
                                                  lambda: _loader().read_local(f"file://{root}/a.png", P))
    _fails("path_not_allowed", lambda: _loader(root).read_local(f"file://{root}/../secret.png", P), status=403)
    _fails("image_not_found", lambda: _loader(root).read_local(f"file://{root}/missing.png", P))
    assert "host" in _fails(None, lambda: _loader(root).read_local(f"file://evil.example{root}/a.png", P))


def test_remote_urls_and_other_schemes_need_permission():
    assert "--allow-remote-media" in _fails(
        "remote_media_disabled", lambda: asyncio.run(_loader().load("https://example.com/a.png", P)))
    assert "ftp" in _fails("unsupported_url_scheme", lambda: asyncio.run(_loader().load("ftp://x/a.png", P)))


def test_too_many_images_is_refused_before_any_is_loaded():
    messages = [ChatMessage.model_validate(m) for m in vision_messages("https://example.com/a.png") * 3]
    with pytest.raises(APIError) as exc:
        asyncio.run(_loader().resolve(messages, max_images=2))
    assert (exc.value.param, exc.value.code) == ("messages", "too_many_images") and "3 images" in exc.value.message
