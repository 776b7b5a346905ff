"""The engine on an OpenAI-compatible server: llama-server, vLLM, Ollama's /v1, `python -m llama_cpp.server`.

Same interface as `engine.Engine`, so every stage runs on either. What stays as it is locally:
- prompts are rendered here, with the model's own chat template and tokenizer read from the local
  GGUF (a vocab-only load), and sent as raw completions: a remote judge reads byte for byte the
  prompt a local one would. The server's tokenizer is checked against ours once, where it has a
  tokenize endpoint;
- scores come from the server's next-token log-probabilities (`top_logprobs` candidates), digits
  with and without a leading space merged, the covered probability mass recorded;
- held-out NLL and the likelihood signals come from prompt log-probabilities (`echo` with
  `logprobs`), which vLLM and llama_cpp.server return and llama-server does not (a clear error);
- an adapter is asked for by the name of the model it makes (`backward`, `M0`, `M1`, ...): the
  server serves the run's adapters under those names (`humpback serve-config` writes the
  llama_cpp.server config; vLLM takes them as `--lora-modules`), or, on llama-server, has it
  loaded (`--lora`, listed by GET /lora-adapters) and gets it per request in the `lora` field;
- each item's seed travels with its request, sampling is plain top-p + temperature (the server's
  extra samplers switched off), and up to `parallel` requests are in flight.

The openai client does the HTTP part: retries with exponential backoff on 429, 5xx, timeouts and
dropped connections, and timeouts, which is why it is used rather than a hand-rolled client.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .crashguard import quiet_stderr
from .engine import DigitScore, Prompting
from .models import ContextError, ModelError

if TYPE_CHECKING:
    from .recipe import EngineConfig

# Samplers llama.cpp-based servers apply by default (top-k 40, min-p 0.05, repeat penalty 1.1):
# off, so that a server samples as the local engine does. Servers ignore fields they do not know.
PLAIN_SAMPLING = {"top_k": 0, "min_p": 0.0, "repeat_penalty": 1.0, "typical_p": 1.0}
DEFAULT_PARALLEL = 8  # requests in flight when engine.parallel is unset


def requests_in_flight(cfg: EngineConfig) -> int:
    return cfg.parallel or DEFAULT_PARALLEL


def lora_scales(loaded: list[dict], adapter: str | None) -> list[dict] | None:
    """llama-server's per-request `lora` field for `adapter` (a model name such as "M1"), given
    the adapters it has loaded (GET /lora-adapters: id, path, scale): scale 1 for the one whose
    file is that run adapter, 0 for the others (or 0 for all: the base). None when `adapter` is
    not among them. Every adapter is named: one left out gets 0 on current llama-server, but an
    explicit scale does not depend on that."""
    from .layout import served_name

    ids = [(a["id"], served_name(a["path"])) for a in loaded if isinstance(a, dict) and "id" in a and "path" in a]
    if adapter is not None and adapter not in {name for _, name in ids}:
        return None
    return [{"id": i, "scale": 1.0 if name == adapter else 0.0} for i, name in ids]


def _openai():
    try:
        import openai
    except ImportError:
        raise ModelError("engine.backend=openai needs the openai package: pip install 'humpback-lite[remote]'") from None
    return openai


class RemoteEngine(Prompting):
    threadsafe = True  # stages may call it from several threads: each call is one HTTP request

    def __init__(self, gguf: str | Path, cfg: EngineConfig, model: str | None = None, label: str | None = None):
        from llama_cpp import Llama

        self.gguf = Path(gguf)
        self.n_ctx = cfg.n_ctx
        self.parallel = requests_in_flight(cfg)
        self.top_logprobs = cfg.top_logprobs
        self.adapter = None
        self.last_finish_reason: str | None = None
        with quiet_stderr():
            self.llm = Llama(model_path=str(self.gguf), vocab_only=True, verbose=False)
        try:
            self._init_prompting(None)
            self._connect(cfg, model, label)
        except BaseException:
            self.llm.close()
            raise

    def _connect(self, cfg: EngineConfig, model: str | None, label: str | None) -> None:
        openai = _openai()
        key = os.environ.get(cfg.api_key_env, "") if cfg.api_key_env else ""
        if cfg.api_key_env and not key:
            raise ModelError(f"engine.api_key_env names {cfg.api_key_env}, which is not set in the environment")
        self.base_url = (cfg.base_url or "").rstrip("/")
        self.api_key = key
        self.client = openai.OpenAI(base_url=self.base_url, api_key=key or "none", timeout=cfg.timeout,
                                    max_retries=cfg.retries)
        self._errors = (openai.APIError, openai.APIConnectionError)
        self.lora: list[dict] | None = None  # llama-server's per-request adapter scales
        self.base_model = cfg.served_model
        self.model = self._served(model)
        self.name = f"{self.model} at {self.base_url}" + (f" ({label})" if label else "")
        self.tokenizer_checked = self.check_tokenizer()

    # ------------------------------------------------------------------ the server

    def _served(self, adapter: str | None) -> str:
        """The model name to request: `adapter` if the server lists it; on a llama-server that
        has it loaded, the base model plus per-request scales (`self.lora`); for the base model
        (no adapter), `engine.served_model` or else the first model the server lists."""
        try:
            served = [m.id for m in self.client.models.list()]
        except self._errors as e:
            hint = " (engine.base_url is the API root, usually ending in /v1)" if getattr(e, "status_code", 0) == 404 else ""
            raise ModelError(f"cannot reach the inference server at {self.base_url}: {e}{hint}") from None
        if adapter not in served:  # the base model, or an adapter llama-server may hold as a LoRA
            loaded = self._get("/lora-adapters")
            self.lora = lora_scales(loaded, adapter) if isinstance(loaded, list) else None
            if adapter is not None and self.lora is not None and served:
                return self.base_model if self.base_model in served else served[0]
        if adapter is None and self.base_model is None and served:
            return served[0]
        model = adapter or self.base_model
        if model not in served:
            # llama_cpp.server answers an unknown name with its default model: refuse here instead
            raise ModelError(f"the server at {self.base_url} does not serve {model!r} (it serves: "
                             f"{', '.join(served) or 'nothing'}); start it with the run's adapters under "
                             "their model names (`humpback serve-config`) or load it into llama-server with --lora "
                             "(docs/remote.md)")
        return model

    def _auth(self) -> dict[str, str]:
        """The key for requests outside the OpenAI client: a key-protected server answers them
        401 without it, and the tokenizer check would then skip itself without a word."""
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def _get(self, path: str) -> Any:
        """GET `path` at the server's root (outside the OpenAI API); None where it has none."""
        import json
        import urllib.request

        try:
            with urllib.request.urlopen(urllib.request.Request(self.base_url.removesuffix("/v1") + path,
                                                               headers=self._auth()), timeout=30) as resp:
                return json.load(resp)
        except (OSError, ValueError):
            return None

    def _complete(self, prompt: str, **kw: Any):
        extra = PLAIN_SAMPLING if self.lora is None else {**PLAIN_SAMPLING, "lora": self.lora}
        try:
            r = self.client.completions.create(model=self.model, prompt=prompt, extra_body=extra, **kw)
        except self._errors as e:
            raise ModelError(f"the inference server at {self.base_url} failed on {self.model}: {e}") from None
        if not r.choices:
            raise ModelError(f"the inference server at {self.base_url} returned no completion for {self.model}")
        return r.choices[0]

    def check_tokenizer(self) -> bool | None:
        """Compare the server's tokens for a rendered prompt with ours: True if they agree, None
        if the server has no tokenize endpoint; a mismatch is an error (prompts would differ)."""
        import json
        import urllib.request

        probe = self.format([{"role": "user", "content": "Tokenizer check: café, 12345 and <b>tags</b>."}])
        root = self.base_url.removesuffix("/v1")
        for path, body in (("/extras/tokenize", {"input": probe, "model": self.model}),  # llama_cpp.server
                           ("/tokenize", {"content": probe, "model": self.model, "prompt": probe})):  # llama-server, vLLM
            req = urllib.request.Request(root + path, json.dumps(body).encode(),
                                         {"Content-Type": "application/json", **self._auth()})
            try:
                with urllib.request.urlopen(req, timeout=30) as resp:
                    got = json.load(resp).get("tokens")
            except (OSError, ValueError):
                continue
            if not isinstance(got, list):
                continue
            ours = self.tokenize(probe)
            if got != ours and not (got[:1] == [self.llm.token_bos()] and got[1:] == ours):  # a BOS it adds is fine
                raise ModelError(f"the server at {self.base_url} tokenizes differently from {self.gguf.name} "
                                 f"({got[:12]}... vs {ours[:12]}...): it serves another model or tokenizer")
            return True
        return None

    # ------------------------------------------------------------------ generation

    def _check_fits(self, tokens: list[int], new: int) -> None:
        if len(tokens) + new > self.n_ctx:
            raise ContextError(f"a prompt of {len(tokens)} tokens + {new} new tokens does not fit the context of "
                               f"{self.n_ctx} tokens ({self.name}); raise engine.n_ctx or shorten the input")

    def generate(self, prompt: str, max_tokens: int = 64, temperature: float = 0.7, top_p: float = 0.9,
                 seed: int = 0, stop: Sequence[str] = ()) -> str:
        out: list[tuple[str, str]] = []
        self.generate_many([prompt], max_tokens, temperature, top_p, [seed], stop,
                           on_done=lambda i, text, why: out.append((text, why)))
        self.last_finish_reason = out[0][1]
        return out[0][0]

    def generate_many(self, prompts: Sequence[str], max_tokens: int = 64, temperature: float = 0.7,
                      top_p: float = 0.9, seeds: Sequence[int] | None = None, stop: Sequence[str] = (),
                      on_done: Callable[[int, str, str], None] | None = None) -> list[str]:
        """Every prompt's continuation, `parallel` requests in flight, each with its own seed;
        `on_done(index, text, finish_reason)` in prompt order as they come back (in this thread)."""
        stop = tuple(stop) + self.turn_stops
        for i, p in enumerate(prompts):
            toks = self.tokenize(p)
            if not toks:
                raise ModelError(f"prompt {i} is empty: nothing to continue ({self.name})")
            self._check_fits(toks, max_tokens)
        seeds = list(seeds) if seeds is not None else [0] * len(prompts)

        def one(i: int) -> tuple[int, str, str]:
            c = self._complete(prompts[i], max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                               seed=seeds[i], stop=list(stop) or None)
            text = c.text or ""
            for s in stop:  # servers differ on whether the stop string is kept
                text = text.split(s, 1)[0]
            return i, text, "length" if c.finish_reason == "length" else "stop"

        results: list[str] = [""] * len(prompts)
        finished: dict[int, tuple[str, str]] = {}
        reported = 0
        with ThreadPoolExecutor(max_workers=min(self.parallel, max(1, len(prompts)))) as pool:
            for fut in as_completed([pool.submit(one, i) for i in range(len(prompts))]):
                i, text, why = fut.result()
                results[i] = text
                finished[i] = (text, why)
                # reported in prompt order, whatever order the server answers in: the records a
                # stage appends then come out in the same order on every run
                while reported in finished:
                    if on_done:
                        on_done(reported, *finished.pop(reported))
                    reported += 1
        return results

    # ------------------------------------------------------------------ scoring

    def _next_token_probs(self, prompt: str, wanted: Sequence[str]) -> tuple[list[float], float]:
        """P(next token is each of `wanted`) from the server's top log-probabilities; a candidate
        counts for a wanted string whatever whitespace surrounds it. Also the summed mass."""
        self._check_fits(self.tokenize(prompt), 1)
        c = self._complete(prompt, max_tokens=1, temperature=0.0, logprobs=self.top_logprobs)
        top = (c.logprobs.top_logprobs or [None])[0] if c.logprobs else None
        if not top:
            raise ModelError(f"the server at {self.base_url} returned no log-probabilities; scoring needs "
                             "`logprobs` in completions (llama_cpp.server, vLLM and llama-server give them)")
        p = [0.0] * len(wanted)
        for tok, lp in top.items():
            if tok.strip() in wanted:
                p[wanted.index(tok.strip())] += math.exp(lp)
        if sum(p) == 0:
            raise ModelError(f"none of {list(wanted)} is among the server's {len(top)} most likely next tokens "
                             f"({list(top)[:6]}...): raise engine.top_logprobs or use a likelihood curate.mode")
        return p, sum(p)

    def digit_score(self, prompt: str) -> DigitScore:
        digits = [self.detokenize([t], special=False).strip() for t in self._digits[1]]
        p, mass = self._next_token_probs(prompt, digits)
        return DigitScore(probs=[x / mass for x in p], mass=mass)

    def choice_probs(self, prompt: str, ids: list[int]) -> list[float]:
        p, mass = self._next_token_probs(prompt, [self.detokenize([t], special=False).strip() for t in ids])
        return [x / mass for x in p]

    def choice_probs_many(self, prompts: Sequence[str], ids: list[int]) -> list[list[float]]:
        """`choice_probs` of every prompt, `parallel` requests in flight."""
        return self._in_flight(lambda p: self.choice_probs(p, ids), prompts)

    def _in_flight(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        """`fn` of every item, in order, with up to `parallel` of them (requests) running at once."""
        with ThreadPoolExecutor(max_workers=min(self.parallel, max(1, len(items)))) as pool:
            return list(pool.map(fn, items))

    def token_logprobs(self, context: list[int], target: list[int]) -> np.ndarray:
        """log P(target[i] | context + target[:i]) from the server's prompt log-probabilities."""
        self._check_fits(context + target, 1)
        text = self.detokenize(context + target)
        # The server tokenizes text: take the target's tokens as it will see them (a token cut at
        # the boundary can merge differently once written out).
        full = self.tokenize(text)
        n = len(full) - len(context)
        c = self._complete(text, max_tokens=1, temperature=0.0, logprobs=0, echo=True)
        lps = list(c.logprobs.token_logprobs or []) if c.logprobs else []
        pieces = list(c.logprobs.tokens or []) if c.logprobs else []
        # The entries end with the generated token, unless generation stopped at an end-of-turn
        # token, which servers leave out (finish_reason "stop"); the `n` before it are the target's.
        end = len(lps) - (c.finish_reason == "length")
        got, seen = lps[max(0, end - n):end], pieces[max(0, end - n):end]
        if n > 0 and (len(got) < n or any(v is None for v in got)):
            raise ModelError(f"the server at {self.base_url} returns no prompt log-probabilities (`echo` with "
                             "`logprobs`): held-out NLL and the pmi/ifd/backward signals need them. vLLM and "
                             "llama_cpp.server give them, llama-server does not; there, use curate.mode=expected "
                             "and evaluate.enabled=false")
        # Do the entries line up with the target's tokens? Compared piece by piece where both are
        # plain ASCII (llama_cpp.server writes pieces over 32 bytes as "", split UTF-8 differs).
        ours = [self._piece(t, False).decode("utf-8", errors="ignore") for t in full[len(context):]]
        if any(a and b.isascii() and a != b for a, b in zip(seen, ours, strict=False)):
            raise ModelError(f"the server at {self.base_url} returned prompt log-probabilities that do not line up "
                             f"with the target's tokens ({''.join(seen)[:40]!r} vs {''.join(ours)[:40]!r})")
        return np.array(got, dtype=np.float64)

    def token_logprobs_many(self, passes: Sequence[tuple[list[int], list[int]]]) -> list[np.ndarray]:
        """`token_logprobs` of every (context, target), `parallel` requests in flight."""
        return self._in_flight(lambda ct: self.token_logprobs(*ct), passes)

    def close(self) -> None:
        self.client.close()
        self.llm.close()


def llama_cpp_server_config(cfg: EngineConfig, base_gguf: str | Path, adapters: list[Path],
                            host: str = "127.0.0.1", port: int = 8000) -> dict[str, Any]:
    """A `python -m llama_cpp.server --config_file` config that serves a run: the base model as
    `base` and each of `adapters` (a run's `adapter.gguf` files, `graph.adapter_stages`) under the
    name of the model it makes (backward, M0, M1, ...). The server loads a model when first asked
    for it, so this is written before the run starts; the paths are those the server sees."""
    from . import layout
    from .hardware import physical_cores

    common = {"model": str(Path(base_gguf).resolve()), "n_ctx": cfg.n_ctx, "verbose": False,
              "n_threads": cfg.n_threads or physical_cores(), "flash_attn": cfg.flash_attn == "on"}
    models = [{**common, "model_alias": "base"}]
    for adapter in adapters:
        models.append({**common, "model_alias": layout.served_name(adapter), "lora_path": str(Path(adapter).resolve())})
    return {"host": host, "port": port, "models": models}
