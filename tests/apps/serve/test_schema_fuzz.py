"""Schema-driven fuzzing: schemathesis generates requests, valid and invalid, for every operation of the app's own
OpenAPI schema and sends them to the server on loopback. No answer is a 5xx, every error is in OpenAI's shape,
and afterwards a good request still gets its answer. Bounded and deterministic: a fixed number of examples,
derandomized, no example database."""
import httpx
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from vlkit.apps.serve.app import create_app

from tests.apps.serve import helpers

EXAMPLES = 300


def test_generated_requests_never_get_a_server_error():
    pipe = helpers.random_pipeline(context=128)  # short answers: valid requests are cheap to serve
    app = create_app(pipe, max_batch_size=4)
    schema = schemathesis.openapi.from_dict(app.openapi())
    cases = st.one_of(schema.as_strategy(GenerationMode.POSITIVE), schema.as_strategy(GenerationMode.NEGATIVE))
    good = {"messages": [{"role": "user", "content": "What color is the circle?"}], "temperature": 0,
            "max_tokens": 8}
    seen: dict[int, int] = {}
    with helpers.ServerThread(app) as srv, httpx.Client(base_url=srv.url, timeout=60) as client:
        want = client.post("/v1/chat/completions", json=good).json()["choices"]

        @settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=cases)
        def no_server_error(case):
            r = case.call(base_url=srv.url, timeout=60)
            seen[r.status_code] = seen.get(r.status_code, 0) + 1
            assert r.status_code < 500, (case.method, case.path, case.body, r.status_code, r.text[:300])
            if r.status_code >= 400:
                assert set(r.json()["error"]) == {"message", "type", "param", "code"}, r.text[:300]

        no_server_error()
        assert client.get("/health").json()["waiting"] == 0 and app.state.engine._reserved == 0
        r = client.post("/v1/chat/completions", json=good)
        assert r.status_code == 200 and r.json()["choices"] == want
    assert seen.get(200, 0) > 10 and sum(n for code, n in seen.items() if 400 <= code < 500) > 50, seen
