"""A judge model for `nudge-local eval --judge`: it reads a question, the gold answer and a model's
answer and replies {"correct": 1} or {"correct": 0}, in the form the paper's authors asked
GPT-4o-mini for (their judged tasks). The judge is a local GGUF or a model on llama-server, run greedy
through the same engine as everything else, in the nudger's role (a chat model writing alone), or
any server with OpenAI's chat API (vLLM, SGLang, llama-cpp-python, OpenAI itself), asked through
/v1/chat/completions so that the server applies its own chat template."""

from __future__ import annotations

import os
import re
from pathlib import Path

from nudge_local.catalog import is_url
from nudge_local.choose import load_models
from nudge_local.config import Settings
from nudge_local.engine.errors import NudgeError
from nudge_local.engine.events import Done
from nudge_local.engine.generate import generate
from nudge_local.engine.interface import ScoringModel
from nudge_local.engine.prompts import Prompts, render_chat_template
from nudge_local.remote.completions import served_model
from nudge_local.remote.connect import connect, detect_api
from nudge_local.remote.http import Endpoint, Http

MAX_TOKENS = 128  # a verdict is a few tokens; room for a judge that wraps it in a code fence or a line
JUDGE_SYSTEM = "You grade answers to questions. You reply with a single JSON object and nothing else."
JUDGE_PROMPT = """\
Decide whether a model's answer to a question is correct, given the gold answer.

## Question
{question}

## Model's answer
{answer}

## Gold answer
{gold}

## How to decide
- Look only at the final answer the model gives: it is correct when it means the same as the gold \
answer (the same option, value or statement, in any wording).
- Do not grade the reasoning or the steps that lead to it.
- An answer that gives no final answer, or several that disagree, is incorrect.

Reply with {{"correct": 1}} if the model's answer is correct and {{"correct": 0}} if it is not."""

# The "correct" key and its value, inside an object: 0/1, true/false, or either quoted. Read as a
# key-value pair rather than a whole JSON document, so a rationale with unescaped quotes beside it
# (the authors' own parser had to repair those) does not hide the verdict.
_VERDICT = re.compile(
    r"""\\?(["'])correct\\?\1\s*:\s*(?:\\?(["'])\s*(?P<quoted>[^"'\\]*?)\s*\\?\2|(?P<bare>[\w.+-]+))""",
    re.IGNORECASE,
)
_VALUES = {"1": True, "true": True, "0": False, "false": False}


def judge_messages(question: str, gold: str, answer: str) -> list[dict]:
    """The judge's chat: a system message and one user message with the question, the model's
    answer and the gold answer."""
    user = JUDGE_PROMPT.format(question=question.strip(), answer=answer.strip(), gold=gold.strip())
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


def parse_verdict(text: str) -> bool | None:
    """The verdict in a judge's reply: every "correct" key inside braces, valued 0/1 or true/false
    (quoted or not, any case; code fences and text around it allowed). None where there is none,
    where a value is anything else (0.5, "yes", a placeholder), or where two verdicts disagree."""
    found = set()
    for m in _VERDICT.finditer(text):
        if "{" not in text[: m.start()] or "}" not in text[m.end() :]:
            continue  # not inside an object
        value = _VALUES.get((m["quoted"] if m["quoted"] is not None else m["bare"]).lower())
        if value is None:
            return None
        found.add(value)
    return found.pop() if len(found) == 1 else None


def _as_judge(e: NudgeError, ref: str) -> NudgeError:
    """A loading or serving failure as one sentence that names --judge (the engine's sentences
    name the model by its role, here "judge", and a served model's key by the nudger's variable)."""
    message = re.sub(r"\b([Tt]he) judge\b", r"\1 --judge", str(e), count=1)
    message = message.replace("NUDGE_LOCAL_NUDGE_API_KEY", "NUDGE_LOCAL_JUDGE_API_KEY")
    if "--judge" not in message:
        message = f"The --judge model {ref} failed: {message[:1].lower()}{message[1:]}"
    return NudgeError(message)


class Judge:
    """A loaded judge model and its chat template; `verdict` asks it about one answer."""

    def __init__(self, model: ScoringModel, template: str, *, ref: str, max_tokens: int = MAX_TOKENS) -> None:
        self.model, self.template, self.ref, self.max_tokens = model, template, ref, max_tokens
        self.label = model.label  # the manifest's name for the judge
        self._bos = model.piece(model.bos).decode("utf-8", "replace") if model.bos >= 0 else ""
        self._eos = model.piece(model.eos).decode("utf-8", "replace") if model.eos >= 0 else ""

    def prompt(self, question: str, gold: str, answer: str) -> str:
        """The judge's rendered prompt, its chat template's generation prompt opened."""
        messages = judge_messages(question, gold, answer)
        try:
            return render_chat_template(self.template, messages, bos_token=self._bos, eos_token=self._eos)
        except NudgeError as e:
            raise NudgeError(
                str(e).replace("The nudger's chat template", "The --judge model's chat template")
            ) from None

    def reply(self, question: str, gold: str, answer: str) -> str:
        """The judge's whole reply, greedy."""
        prompts = Prompts(base=None, nudge=self.prompt(question, gold, answer))
        try:
            for event in generate(prompts, mode="nudger", nudger=self.model, max_tokens=self.max_tokens):
                if isinstance(event, Done):
                    return event.text
        except NudgeError as e:
            raise _as_judge(e, self.ref) from None
        raise AssertionError("the engine's stream ended without Done")

    def verdict(self, question: str, gold: str, answer: str) -> bool | None:
        """True or False as the judge says; None where its reply holds no clear verdict."""
        return parse_verdict(self.reply(question, gold, answer))

    def close(self) -> None:
        self.model.close()

    def __enter__(self) -> Judge:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ChatJudge:
    """A judge behind OpenAI's chat API: each verdict is one /v1/chat/completions request with the
    judge's messages, greedy, the server applying its own chat template."""

    def __init__(self, http: Http, *, max_tokens: int = MAX_TOKENS) -> None:
        self.http, self.ref, self.max_tokens = http, http.endpoint.url, max_tokens
        self.model = served_model(http)
        self.label = self.model  # the manifest's name for the judge: the served model's

    def reply(self, question: str, gold: str, answer: str) -> str:
        """The judge's whole reply, greedy."""
        body = {"model": self.model, "messages": judge_messages(question, gold, answer),
                "max_tokens": self.max_tokens, "temperature": 0.0, "stream": False}  # fmt: skip
        try:
            r = self.http.post("/v1/chat/completions", body)
        except NudgeError as e:
            raise _as_judge(e, self.ref) from None
        try:
            content = r["choices"][0]["message"].get("content")
        except (KeyError, IndexError, TypeError, AttributeError):
            raise NudgeError(
                f"The --judge server at {self.http.endpoint.root} answered /v1/chat/completions without a "
                f"message; is it OpenAI-compatible?"
            ) from None
        return content if isinstance(content, str) else ""

    def verdict(self, question: str, gold: str, answer: str) -> bool | None:
        """True or False as the judge says; None where its reply holds no clear verdict."""
        return parse_verdict(self.reply(question, gold, answer))

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> ChatJudge:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_judge(
    ref: str,
    settings: Settings,
    chat_template: str | None = None,
    *,
    model_name: str | None = None,
    max_tokens: int = MAX_TOKENS,
) -> Judge | ChatJudge:
    """Load the judge: `ref` is a GGUF path (loaded with the settings' threads, context and GPU
    layers) or a server's URL, its API key from $NUDGE_LOCAL_JUDGE_API_KEY and `model_name` the
    served model where the server lists several. llama-server, or any server given `chat_template`
    (which must then offer /v1/completions), runs through the engine with that template, else the
    GGUF's or llama-server's own; any other server is asked through its chat API (`ChatJudge`).
    Every failure is one NudgeError sentence naming --judge."""
    try:
        if is_url(ref):
            key = os.environ.get("NUDGE_LOCAL_JUDGE_API_KEY") or None
            endpoint = Endpoint(ref, model=model_name, api_key=key, timeout=settings.timeout)
            if chat_template is None:
                http = Http(endpoint, "judge")
                try:
                    if detect_api(http) != "llama-server":
                        return ChatJudge(http, max_tokens=max_tokens)
                except BaseException:
                    http.close()
                    raise
                http.close()
            model = connect(endpoint, "judge")
        else:
            model = load_models({"judge": Path(ref).expanduser()}, settings)["judge"]
    except NudgeError as e:
        raise _as_judge(e, ref) from None
    template = chat_template or model.chat_template
    if not template:
        model.close()
        raise NudgeError(
            f"The --judge model {ref} has no chat template in its {model.kind}; give it a chat template file."
        )
    judge = Judge(model, template, ref=ref, max_tokens=max_tokens)
    try:
        judge.prompt("?", "?", "?")  # a template that cannot render fails here, not on the first item
    except NudgeError:
        judge.close()
        raise
    return judge
