"""Score held-out Wikipedia text with a language model: perplexity and next-token predictions.

    python launch/perplexity.py                       # the embedded SmolLM2, 8 paragraphs
    python launch/perplexity.py --model=/path/to/hf_folder --num_docs=32

Runs fully offline: the default model and text ship inside pip packages.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from absl import app, flags  # noqa: E402

_MODEL = flags.DEFINE_string("model", None, "Hugging Face model folder (default: embedded SmolLM2)")
_NUM_DOCS = flags.DEFINE_integer("num_docs", 8, "held-out Wikipedia paragraphs to score")
_MAX_TOKENS = flags.DEFINE_integer("max_tokens", 128, "tokens per paragraph (truncated)")
_SHOW = flags.DEFINE_integer("show", 12, "next-token predictions to print for the first doc")


def main(argv):
    del argv
    from rlpt_jax import launch_utils

    launch_utils.set_cpu_xla_defaults()
    from rlpt_jax.models import lm_eval

    lm_eval.report(
        model_dir=_MODEL.value,
        num_docs=_NUM_DOCS.value,
        max_tokens=_MAX_TOKENS.value,
        show=_SHOW.value,
    )


if __name__ == "__main__":
    app.run(main)
