"""Generation settings (vlkit.config.generation): checked when built and again by validate() after a change."""
import pytest

from vlkit.config import SEED_RANGE, ConfigError, GenerationConfig, ImageGenerationConfig, SamplingParams


@pytest.mark.parametrize("cls,kwargs,message", [
    (GenerationConfig, {"max_new_tokens": 0}, "max_new_tokens=0 must be > 0"),
    (GenerationConfig, {"temperature": -0.5}, "temperature=-0.5 must be in [0, 100]"),
    (GenerationConfig, {"top_p": 0.0}, "top_p=0.0 must be in (0, 1]"),
    (GenerationConfig, {"top_k": -1}, "top_k=-1 must be >= 0"),
    (GenerationConfig, {"seed": SEED_RANGE[1] + 1}, f"seed={SEED_RANGE[1] + 1} must be in [{SEED_RANGE[0]}, "),
    (GenerationConfig, {"max_new_tokens": True}, "max_new_tokens=True must be an integer"),
    (ImageGenerationConfig, {"cfg_scale": 60}, "cfg_scale=60.0 must be in [0, 50]"),
    (ImageGenerationConfig, {"temperature": 101}, "temperature=101.0 must be in [0, 100]"),
    (SamplingParams, {"max_new_tokens": -3}, "max_new_tokens=-3 must be > 0"),
    (SamplingParams, {"seed": -2 ** 64}, f"seed={-2 ** 64} must be in"),
])
def test_bad_settings_name_the_argument(cls, kwargs, message):
    with pytest.raises(ConfigError) as err:
        cls(**kwargs)
    assert str(err.value).startswith(message)


def test_validate_sees_a_change_after_construction():
    gen = GenerationConfig(max_new_tokens=4, stop_token_ids=(7,))
    gen.validate()
    gen.top_p = 1.5
    with pytest.raises(ConfigError, match=r"^top_p=1.5 must be in \(0, 1\]$"):
        gen.validate()
    assert ImageGenerationConfig(cfg_scale=1, seed=3).cfg_scale == 1.0 and SamplingParams(8, stop=("\n",)).stop == ("\n",)
