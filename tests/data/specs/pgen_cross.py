"""A Maestro-style custom parameter generator (used with pgen_study.yaml)."""

import itertools

from maestrowf.datastructures.core import ParameterGenerator


def get_custom_generator(env, **kwargs):
    """Cross SIZE (from SMIN, or the 'smin' parg) with ITER values."""
    smin = int(kwargs.get("smin", env.find("SMIN").value))
    iters = [int(x) for x in kwargs.get("iters", "1,2").split(",")]
    sizes = [smin, smin * 2]
    pairs = list(itertools.product(sizes, iters))
    p_gen = ParameterGenerator()
    p_gen.add_parameter("SIZE", [s for s, _ in pairs], "SIZE.%%", "size")
    p_gen.add_parameter("ITER", [i for _, i in pairs], "IT.%%")
    return p_gen
