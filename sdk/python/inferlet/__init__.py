"""The `inferlet` SDK: write Pie inferlets in Python.

    import inferlet

    async def main(input: dict) -> str:
        model = inferlet.Model.load()
        ctx = inferlet.Context(model)
        ctx.system("You are a helpful assistant.")
        ctx.user(input.get("prompt", "Hello"))
        ctx.cue()
        return await ctx.generate_text(inferlet.Sampler.argmax(), max_tokens=64)

The SDK runs inside the engine's sandbox (a WebAssembly guest): every call reaches the host
through the `pie:inferlet` WIT world. Generations are asyncio coroutines; several of them
(e.g. forks of one prompt) run concurrently and share the engine's batches.
"""

from . import chat, messaging, reasoning, runtime, scheduling, session
from ._errors import PieError
from .constrain import AnyJson, Grammar, GrammarConstraint, JsonSchema, Matcher, Regex
from .context import Context
from .forward import Forward, Output
from .generation import Generator, GenStep, StepOutput
from .model import Model, Tokenizer, models
from .runtime import set_return
from .sampler import Probe, Sampler

__all__ = [
    "AnyJson", "Context", "Forward", "GenStep", "Generator", "Grammar", "GrammarConstraint",
    "JsonSchema", "Matcher", "Model", "Output", "PieError", "Probe", "Regex", "Sampler",
    "StepOutput", "Tokenizer", "chat", "messaging", "models", "reasoning", "runtime",
    "scheduling", "session", "set_return",
]
