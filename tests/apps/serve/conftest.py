import pytest

import vlkit.pipeline
from vlkit.apps.serve.app import create_app

from tests.apps.serve import helpers


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("media")
    (d / "red.png").write_bytes(helpers.image_png((200, 30, 30), seed=11))
    return d


@pytest.fixture(scope="session")
def box_ckpt(tmp_path_factory):
    """A checkpoint on disk that answers BOX_QUESTION with a grounding answer."""
    return helpers.save(helpers.box_pipeline(), tmp_path_factory.mktemp("ckpt") / "box")


@pytest.fixture(scope="session")
def box_server(box_ckpt, media_dir):
    app = create_app(vlkit.pipeline.load(box_ckpt), allowed_local_media_path=media_dir, max_batch_size=16,
                     max_body_bytes=2 * 1024 * 1024)
    with helpers.ServerThread(app) as srv:
        yield srv


@pytest.fixture(autouse=True)
def _one_torch_thread(one_torch_thread):
    yield
