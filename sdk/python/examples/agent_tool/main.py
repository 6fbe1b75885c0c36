"""An agent loop with a tool that runs inside the inferlet (no round trip to the client).

Each turn the model must either call the calculator or answer. The call is forced into a
parseable shape with a regex constraint (`CALL calc(<expression>)` or `ANSWER <text>`), the
calculator runs in the guest, and its result goes back into the same KV context as a tool
message, so nothing is re-prefilled. Input: {"question": str, "max_turns": int}.
"""

import ast
import operator
import re

import inferlet

TOOL_GRAMMAR = r"(CALL calc\([0-9+\-*/ ().]{1,40}\)|ANSWER [A-Za-z0-9 .,]{1,60})"
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
        ast.Div: operator.truediv, ast.USub: operator.neg}


def calc(expression: str) -> str:
    """Evaluate arithmetic safely (numbers and + - * / only)."""
    def ev(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.operand))
        raise ValueError("unsupported expression")
    try:
        return str(ev(ast.parse(expression, mode="eval").body))
    except Exception as e:  # noqa: BLE001 - the failure is information for the model
        return f"error: {e}"


async def main(input: dict) -> dict:
    model = inferlet.Model.load()
    ctx = inferlet.Context(model)
    ctx.system("You can use a calculator. Reply with `CALL calc(<expression>)` to use it, "
               "or `ANSWER <text>` when you know the answer.")
    ctx.user(input.get("question", "What is 12 * 7?"))
    transcript = []
    for _ in range(int(input.get("max_turns", 3))):
        ctx.cue()
        reply = await ctx.generate_text(inferlet.Sampler.argmax(), max_tokens=64,
                                        constrain=inferlet.Regex(TOOL_GRAMMAR))
        transcript.append(reply)
        call = re.fullmatch(r"CALL calc\((.*)\)", reply.strip())
        if call is None:
            return {"answer": reply.strip()[len("ANSWER "):], "transcript": transcript}
        result = calc(call.group(1))
        transcript.append(f"calc -> {result}")
        ctx.user(f"calc returned {result}")
    return {"answer": None, "transcript": transcript}
