"""The ranking page: a person orders K sampled responses per prompt, best to worst, in a browser.

    python recipes/label.py --config recipes/configs/label_tiny.yaml --labeler alice
    python recipes/label.py --candidates runs/label/rankings.candidates.jsonl --out runs/label/rankings.jsonl \\
        --labeler alice                       (serve candidates sampled earlier; no model needed)

First the policy samples `k` responses per prompt in one engine call
(`rlpost/rlhf/candidates.py`); they are kept in `<out stem>.candidates.jsonl`, so a restart shows
the same responses. Then the page's HTTP server (`rlpost/rlhf/label_server.py`) serves them on
127.0.0.1 and appends every answer to the rankings JSONL (`rlpost/rlhf/rankings.py`) at once.
Prompts already in that file are never shown again: stopping and starting again resumes where
it stopped. Listening beyond this machine needs `--token`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rlpost.config import ConfigError, check_path, doc, run_command, section
from rlpost.distributed.engine import VLLMConfig
from rlpost.rlhf.candidates import candidates_path_for, load_prompts, sample_candidates
from rlpost.rlhf.label_server import LabelServer, check_exposure
from rlpost.tasks import TASKS


@dataclass
class LabelConfig:
    model_path: str = doc("Policy HF folder that samples the responses.", "runs/sft_tiny/model")
    prompts: dict[str, int] | str = doc(
        "Prompts to rank: {task: count} drawn from the tasks' RL split, or a JSONL file of "
        '{"prompt": str or [chat messages], "answer"?: str}.',
        {"arithmetic": 20},
    )
    k: int = doc("Responses sampled per prompt.", 5)
    temperature: float = doc("Sampling temperature.", 1.0)
    max_new_tokens: int = doc("Longest response in tokens.", 160)
    seed: int = doc("Sampling seed.", 0)
    out: str = doc("Rankings JSONL (appended to; the candidates file sits beside it).", "runs/label/rankings.jsonl")
    candidates: str = doc(
        "Candidates JSONL to serve; '' = <out stem>.candidates.jsonl, sampled from model_path when missing.", ""
    )
    labeler: str = doc("Name recorded in every line written.", "")
    host: str = doc("Address to listen on; anything but loopback needs a token.", "127.0.0.1")
    port: int = doc("Port to listen on (0: any free port).", 8765)
    token: str = doc("Secret every request must carry (?token= in the page address); required off loopback.", "")
    vllm: VLLMConfig = section(VLLMConfig)

    def validate(self):
        if self.k < 2:
            raise ConfigError(f"k: a ranking needs at least 2 responses, got {self.k}")
        if not self.labeler.strip():
            raise ConfigError("labeler: give the name to record in each ranking line")
        if self.labeler.startswith("simulated:"):
            raise ConfigError("labeler: names starting with 'simulated:' are kept for simulated labelers")
        if isinstance(self.prompts, dict):
            for task, n in self.prompts.items():
                if task not in TASKS:
                    raise ConfigError(f"prompts: unknown task {task!r}; valid tasks: {sorted(TASKS)}")
                if not isinstance(n, int) or n < 1:
                    raise ConfigError(f"prompts.{task}: expected a positive count, got {n!r}")
        check_exposure(self.host, self.token or None)


def main(cfg: LabelConfig) -> None:
    candidates = Path(cfg.candidates) if cfg.candidates else candidates_path_for(cfg.out)
    if cfg.candidates and not candidates.exists():
        raise ConfigError(f"candidates: no such file: {cfg.candidates}")
    if not candidates.exists():
        check_path("model_path", cfg.model_path)
        if isinstance(cfg.prompts, str):
            check_path("prompts", cfg.prompts)
        prompts = load_prompts(cfg.prompts)
        print(f"label: sampling {cfg.k} responses for each of {len(prompts)} prompts → {candidates}")
        sample_candidates(
            cfg.model_path,
            prompts,
            cfg.k,
            candidates,
            temperature=cfg.temperature,
            max_new_tokens=cfg.max_new_tokens,
            seed=cfg.seed,
            vllm=cfg.vllm,
        )
    try:
        server = LabelServer(candidates, cfg.out, cfg.labeler, cfg.host, cfg.port, cfg.token or None)
    except ConfigError:
        raise
    except OSError as error:
        raise ConfigError(f"port: cannot listen on {cfg.host}:{cfg.port} ({error.strerror})") from None
    except ValueError as error:  # a bad candidates line, named by file and line
        raise ConfigError(f"candidates: {error}") from None
    progress = server.progress()
    print(f"label: {progress['done']} of {progress['total']} prompts answered; rankings go to {cfg.out}")
    print(f"label: open {server.url}  (Ctrl-C stops; starting again resumes)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()


if __name__ == "__main__":
    run_command(LabelConfig, main)
