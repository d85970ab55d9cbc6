"""arcvq_plugin.validation: what each check accepts, and its one message format
``<name> must be <allowed>, got <value>``."""
import math

import numpy as np
import pytest

from arcvq_plugin.validation import check_bool, check_choice, check_int, check_optional_int, check_real


@pytest.mark.parametrize("call,accepted", [
    (lambda: check_int("n", 3, minimum=1), 3),
    (lambda: check_int("n", np.int64(3), minimum=1), 3),
    (lambda: check_int("n", 0, minimum=0), 0),
    (lambda: check_int("k", 5, minimum=3, parity="odd"), 5),
    (lambda: check_int("c", 2, minimum=2, parity="even"), 2),
    (lambda: check_optional_int("n", None, minimum=1), None),
    (lambda: check_optional_int("n", 4, minimum=1), 4),
    (lambda: check_real("x", 0, minimum=0.0), 0.0),
    (lambda: check_real("x", 0.5, minimum=0.0, exclusive=True, below=1.0), 0.5),
    (lambda: check_int("steps", 1, minimum=1, maximum=1000), 1),
    (lambda: check_int("steps", 1000, minimum=1, maximum=1000), 1000),
    (lambda: check_int("rank", 0, minimum=0, maximum=0), 0),
    (lambda: check_int("k", 7, minimum=3, maximum=7, parity="odd"), 7),
    (lambda: check_real("cos", 1, minimum=-1.0, exclusive=True, maximum=1.0), 1.0),
    (lambda: check_real("cos", -0.999, minimum=-1.0, exclusive=True, maximum=1.0), -0.999),
    (lambda: check_real("p", 0.0, minimum=0.0, maximum=1.0), 0.0),
    (lambda: check_real("p", 1.0, minimum=0.0, maximum=1.0), 1.0),
    (lambda: check_bool("flag", False), False),
    (lambda: check_choice("d", "l2", ("cos", "l2")), "l2"),
    (lambda: check_choice("channels", 3, (1, 3)), 3),
])
def test_accepted_values_come_back(call, accepted):
    value = call()
    assert value == accepted and type(value) is type(accepted)


@pytest.mark.parametrize("call,message", [
    (lambda: check_int("n_e", True, minimum=1), "n_e must be an integer >= 1, got True"),
    (lambda: check_int("n_e", 2.0, minimum=1), "n_e must be an integer >= 1, got 2.0"),
    (lambda: check_int("n_e", "4", minimum=1), "n_e must be an integer >= 1, got '4'"),
    (lambda: check_int("disc_start", -1, minimum=0), "disc_start must be an integer >= 0, got -1"),
    (lambda: check_int("kernel_size", 4, minimum=3, parity="odd"), "kernel_size must be an odd integer >= 3, got 4"),
    (lambda: check_int("kernel_size", 1, minimum=3, parity="odd"), "kernel_size must be an odd integer >= 3, got 1"),
    (lambda: check_int("hidden_channels", 7, minimum=2, parity="even"),
     "hidden_channels must be an even integer >= 2, got 7"),
    (lambda: check_optional_int("limit", 0, minimum=1), "limit must be None or an integer >= 1, got 0"),
    (lambda: check_real("lr", math.inf, minimum=0.0, exclusive=True), "lr must be a finite number > 0, got inf"),
    (lambda: check_real("lr", 0.0, minimum=0.0, exclusive=True), "lr must be a finite number > 0, got 0.0"),
    (lambda: check_real("m", 3.2, minimum=0.0, below=math.pi, below_text="pi"), r"m must be a number in [0, pi), got 3.2"),
    (lambda: check_int("steps", 0, minimum=1, maximum=1000), "steps must be an integer in [1, 1000], got 0"),
    (lambda: check_int("steps", 1001, minimum=1, maximum=1000), "steps must be an integer in [1, 1000], got 1001"),
    (lambda: check_int("steps", True, minimum=1, maximum=1000), "steps must be an integer in [1, 1000], got True"),
    (lambda: check_int("rank", 4, minimum=0, maximum=3), "rank must be an integer in [0, 3], got 4"),
    (lambda: check_int("k", 9, minimum=3, maximum=7, parity="odd"), "k must be an odd integer in [3, 7], got 9"),
    (lambda: check_int("k", 6, minimum=3, maximum=7, parity="odd"), "k must be an odd integer in [3, 7], got 6"),
    (lambda: check_real("cos", 1.0000001, minimum=-1.0, exclusive=True, maximum=1.0),
     "cos must be a number in (-1, 1], got 1.0000001"),
    (lambda: check_real("cos", -1.0, minimum=-1.0, exclusive=True, maximum=1.0),
     "cos must be a number in (-1, 1], got -1.0"),
    (lambda: check_real("cos", True, minimum=-1.0, exclusive=True, maximum=1.0),
     "cos must be a number in (-1, 1], got True"),
    (lambda: check_real("cos", math.nan, minimum=-1.0, exclusive=True, maximum=1.0),
     "cos must be a number in (-1, 1], got nan"),
    (lambda: check_real("p", -0.5, minimum=0.0, maximum=1.0), "p must be a number in [0, 1], got -0.5"),
    (lambda: check_real("p", 1.5, minimum=0.0, maximum=1.0), "p must be a number in [0, 1], got 1.5"),
    (lambda: check_bool("legacy", "yes"), "legacy must be True or False, got 'yes'"),
    (lambda: check_choice("distance", "cosine", ("cos", "l2")), "distance must be one of ('cos', 'l2'), got 'cosine'"),
    (lambda: check_choice("channels", 2, (1, 3)), "channels must be one of (1, 3), got 2"),
])
def test_refusals_name_the_argument_and_what_is_allowed(call, message):
    with pytest.raises(ValueError) as error:
        call()
    assert str(error.value) == message


def test_check_real_takes_one_upper_bound():
    with pytest.raises(TypeError, match="below or maximum, not both"):
        check_real("x", 0.5, minimum=0.0, below=1.0, maximum=1.0)
