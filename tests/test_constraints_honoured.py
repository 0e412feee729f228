"""A constraint asked of a method that does not apply it is refused, never silently dropped."""

import pytest

from underbudget.config import load_config
from underbudget.errors import ConfigError


@pytest.mark.parametrize("method", ["lottery", "d2sparse", "compress_transfer"])
@pytest.mark.parametrize("override", ["stream.megabatches=4", "precision.mode=qat"])
def test_methods_without_the_constraint_refuse_it(method, override):
    with pytest.raises(ConfigError, match="does not apply"):
        load_config("tiny", [f"method.name={method}", override])


@pytest.mark.parametrize("method", ["train", "anytime"])
def test_train_and_anytime_take_stream_and_qat(method):
    cfg = load_config("tiny", [f"method.name={method}", "stream.megabatches=4",
                               "precision.mode=qat", "precision.weight_bits=4"])
    assert cfg.stream.megabatches == 4 and cfg.precision.mode == "qat"
