"""A small multi-turn chat with a model in the terminal, to try a run's result at once."""

from __future__ import annotations

from pathlib import Path

from . import prompts
from .engines import EngineLike


def run_model(run_dir: str | Path) -> tuple[Path, Path | None]:
    """What to chat with for a finished run: the merged GGUF when exported, else base + adapter."""
    from .models import ModelError
    from .store import Run

    run = Run(run_dir)
    export = run.root / "export"
    if (export / "model.gguf").exists():
        return export / "model.gguf", None
    base = (run.manifest.get("model") or {}).get("gguf")
    if base and (export / "adapter.gguf").exists():
        return Path(base), export / "adapter.gguf"
    raise ModelError(f"{run_dir}: no export/ yet (finish the run with `humpback run`, or pass --adapter)")


class Chat:
    """Keeps the conversation; the system prompt is the seed tag the model was trained with.
    When the history no longer fits the context, the oldest turns are dropped."""

    def __init__(self, engine: EngineLike, system: str = prompts.SEED_TAG, max_tokens: int = 256,
                 temperature: float = 0.7, seed: int = 0):
        self.engine = engine
        self.system = system
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.seed = seed
        self.history: list[dict[str, str]] = []

    def _prompt(self) -> str:
        while True:
            text = self.engine.format([{"role": "system", "content": self.system}, *self.history])
            if len(self.engine.tokenize(text)) + self.max_tokens <= self.engine.n_ctx or len(self.history) <= 1:
                return text
            self.history = self.history[2:]  # drop the oldest user/assistant exchange

    def reply(self, user: str) -> str:
        self.history.append({"role": "user", "content": prompts.sanitize(user)})
        prompt = self._prompt()
        budget = min(self.max_tokens, self.engine.n_ctx - len(self.engine.tokenize(prompt)))
        if budget < 1:
            self.history.pop()
            from .models import ContextError

            raise ContextError(f"message too long for the context ({self.engine.n_ctx} tokens): shorten it, "
                               "or start the chat with a larger --n-ctx")
        answer = self.engine.generate(prompt, max_tokens=budget, temperature=self.temperature,
                                      seed=self.seed + len(self.history)).strip()
        self.history.append({"role": "assistant", "content": answer})
        return answer
