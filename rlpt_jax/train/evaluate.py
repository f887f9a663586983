"""Stand-alone evaluation of a model folder with an experiment's evaluation protocol."""

from __future__ import annotations

import dataclasses

from flax import nnx

from rlpt_jax import parallel
from rlpt_jax.models.hf_io import load_hf
from rlpt_jax.models.tokenizer import Tokenizer
from rlpt_jax.rollout.policy import Policy
from rlpt_jax.train import methods
from rlpt_jax.train.experiment import from_config_dict
from rlpt_jax.train.loop import with_cold_start


def evaluate_model(config, model_path: str | None = None, limit: int | None = None) -> dict:
    """The held-out metrics of ``config``'s method for the model at ``model_path``."""
    exp = from_config_dict(config)
    if model_path:
        exp = dataclasses.replace(
            exp, model=dataclasses.replace(exp.model, path=model_path), cold_start=None
        )
    exp = with_cold_start(exp)
    if limit is not None:
        exp = dataclasses.replace(exp, eval=dataclasses.replace(exp.eval, num_prompts=limit))
    mesh = parallel.make_mesh(exp.mesh)
    model = load_hf(
        exp.model.resolve(),
        mesh=mesh,
        **exp.model.model_config_fields(),
    )
    tok = Tokenizer(exp.model.resolve_tokenizer())
    use_chat = exp.chat_template and tok.has_chat_template
    graphdef, params = nnx.split(model, nnx.Param)
    policy = Policy(
        graphdef, tok, mesh=mesh, cache_dtype=exp.rollout.cache_dtype, use_chat_template=use_chat
    )
    policy.set_params(params)
    method = methods.build_data(exp, tok, use_chat)
    return method.evaluate(policy, params, graphdef).metrics
