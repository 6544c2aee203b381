"""POLAR rewards of rollouts: each response is scored against its prompt's reference through
the official encoding (`data.encoding`), read at the reward token (`scoring.reward_scores`).

The released RFT recipes strip `<think>...</think>` reasoning from a response before scoring,
so the reward model compares answers, not thoughts (`strip_think`, the official rule by default).

`RewardModel` holds the weights on the policy's mesh; `ServerReward` scores through a reward
server (`polar_jax serve`, POST /score) instead, as verl does with a remote reward model: same
`score` interface, thinking stripped here, rows encoded by the server with its own encoding.

`training_scores` turns the raw scores into the sequence scores the estimator trains on:
normalised (reward.normalize: none, batch, running moments, per-prompt group) then clipped
(reward.clip); pure functions on host arrays, the running moments passed in and returned.
"""

from __future__ import annotations

import dataclasses
import re

import jax
import numpy as np

from polar_jax import parallel, scoring
from polar_jax.data import encoding
from polar_jax.data.encoding import Text
from polar_jax.rft import advantages

_THINK_SPAN = re.compile(r"<think>.*?</think>", re.DOTALL)
_OFFICIAL_THINK = re.compile(r"<think>(.*?)</think>(.*)", re.DOTALL)
THINK_RULES = ("official", "all_spans", "none")


def strip_think(text: str, rule: str = "official") -> str:
    """The answer part of a response. "official" (POLAR's `reward_func.extract_thinking_content`):
    everything after the first `<think>` ... first `</think>`, stripped; no such pair leaves the
    text unchanged. "all_spans": `strip_think_spans`. "none": the text as is."""
    if rule == "official":
        match = _OFFICIAL_THINK.search(text)
        return match.group(2).strip() if match else text
    if rule == "all_spans":
        return strip_think_spans(text)
    if rule == "none":
        return text
    raise ValueError(f"reward.strip_think={rule!r}; choose one of {', '.join(THINK_RULES)}")


def strip_think_spans(text: str) -> str:
    """The older, broader rule (an option): every `<think>...</think>` span removed; a `</think>`
    with no opening tag drops everything before it; an unclosed `<think>` drops everything after
    it; the result stripped. Texts without tags are returned as is."""
    if "<think>" not in text and "</think>" not in text:
        return text
    text = _THINK_SPAN.sub("", text)
    if "</think>" in text:
        text = text.rsplit("</think>", 1)[1]
    if "<think>" in text:
        text = text.split("<think>", 1)[0]
    return text.strip()


@dataclasses.dataclass
class RewardModel:
    """A POLAR reward model ready to score: weights (placed on the mesh), tokenizer, reward id, encoding."""

    cfg: object
    params: dict
    tokenizer: object
    reward_token_id: int
    encoding: encoding.EncodingConfig
    batch_size: int = 16
    strip_think: str = "official"  # THINK_RULES
    shared_prefix: bool = True  # the rollouts of a prompt share its reference: their prefix is computed once
    # several processes, each calling `score` with the same rows: the batches split over them, the scores
    # gathered (`scoring.reward_scores`); `params` then live on each process's own devices
    across_processes: bool = False

    def __post_init__(self):
        strip_think("", self.strip_think)  # an unknown rule fails here, not at the first score

    def sequences(self, prompts: list[Text], references: list[Text], responses: list[str]) -> list[np.ndarray]:
        """The token ids the reward model reads, one per (prompt, reference, response)."""
        responses = [strip_think(r, self.strip_think) for r in responses]
        return [
            encoding.encode(self.tokenizer, p, ref, r, self.encoding, self.reward_token_id).ids
            for p, ref, r in zip(prompts, references, responses)
        ]

    def score(self, prompts: list[Text], references: list[Text], responses: list[str]) -> np.ndarray:
        """float32 [B]: the POLAR score of each response against its reference (`shared_prefix`: the
        same scores, each group's common prefix computed once, `scoring.reward_scores`)."""
        return scoring.reward_scores(
            self.cfg,
            self.params,
            self.sequences(prompts, references, responses),
            batch_size=self.batch_size,
            progress=False,
            shared_prefix=self.shared_prefix,
            across_processes=self.across_processes,
        )


@dataclasses.dataclass
class ServerReward:
    """POLAR scores from a reward server (`polar_jax.serve.client.RewardClient`): rows
    {prompt, reference, output[, wrapper]} sent to POST /score and encoded there exactly as
    `RewardModel.sequences` encodes them with the server's encoding. `wrapper` None: the server's."""

    client: object  # a RewardClient
    strip_think: str = "official"  # THINK_RULES
    wrapper: str | None = None
    # several processes, each calling `score` with the same rows: each sends its contiguous share, the
    # scores gathered (every row is sent once per run, not once per process)
    across_processes: bool = False

    def __post_init__(self):
        strip_think("", self.strip_think)

    def rows(self, prompts: list[Text], references: list[Text], responses: list[str]) -> list[dict]:
        """The /score rows of (prompt, reference, response) triples, thinking stripped."""
        extra = {"wrapper": self.wrapper} if self.wrapper else {}
        return [
            {"prompt": p, "reference": ref, "output": strip_think(r, self.strip_think), **extra}
            for p, ref, r in zip(prompts, references, responses)
        ]

    def score(self, prompts: list[Text], references: list[Text], responses: list[str]) -> np.ndarray:
        """float32 [B]: the server's POLAR score of each response against its reference."""
        rows = self.rows(prompts, references, responses)
        if not self.across_processes:
            return self.client.score(rows)
        owner_b = np.arange(len(rows)) * jax.process_count() // max(len(rows), 1)  # contiguous shares
        mine = np.flatnonzero(owner_b == jax.process_index())
        scores_b = np.zeros(len(rows), np.float32)
        if mine.size:
            scores_b[mine] = self.client.score([rows[i] for i in mine])
        return parallel.gather_owned(scores_b, owner_b)


NORMALIZE = ("none", "batch", "running", "group")  # reward.normalize
NORMALIZE_EPS = 1e-6  # added to every std a score is divided by


def init_moments() -> dict:
    """The running moments of no scores yet: {"count": int64, "mean": float64, "m2": float64}
    (0-d numpy arrays, part of the RFT checkpoint under "reward_stats")."""
    return {"count": np.zeros((), np.int64), "mean": np.zeros((), np.float64), "m2": np.zeros((), np.float64)}


def update_moments(stats: dict, scores_b: np.ndarray) -> dict:
    """`stats` (count, mean, m2 = the sum of squared deviations) with the scores of one batch
    merged in, by Chan, Golub and LeVeque's parallel update (the batch's own moments combined
    with the old ones, in float64): the moments of every score seen so far. The same update as
    stable-baselines3's RunningMeanStd and TRL's RunningMoments (`use_score_norm`)."""
    x_b = np.asarray(scores_b, np.float64).reshape(-1)
    n_a, n_b = int(stats["count"]), x_b.size
    if n_b == 0:
        return stats
    mean_b = x_b.mean()
    m2_b = np.sum(np.square(x_b - mean_b))
    total = n_a + n_b
    delta = mean_b - stats["mean"]
    return {
        "count": np.asarray(total, np.int64),
        "mean": np.asarray(stats["mean"] + delta * n_b / total, np.float64),
        "m2": np.asarray(stats["m2"] + m2_b + delta**2 * n_a * n_b / total, np.float64),
    }


def moments_std(stats: dict) -> float:
    """The unbiased std of the scores `stats` has seen (TRL's RunningMoments.std); 0 for fewer than 2."""
    count = int(stats["count"])
    return float(np.sqrt(stats["m2"] / (count - 1))) if count > 1 else 0.0


def normalize_scores(
    scores_b: np.ndarray, how: str, group_size: int = 1, stats: dict | None = None, eps: float = NORMALIZE_EPS
) -> np.ndarray:
    """The sequence scores the estimator trains on (reward.normalize):

    "none": the raw scores (as released). "batch": whitened over the batch (population std).
    "running": (score - running mean) / (running std + eps) with `stats` the moments of every
    score so far, this batch included (`update_moments` first, as TRL's PPOTrainer does with
    use_score_norm; OpenRLHF's --normalize_reward divides by a mean / std fixed when the reward
    model was trained instead). "group": a z-score within each group of `group_size`
    consecutive rollouts of one prompt, (score - group mean) / (unbiased group std + eps): GRPO's
    outcome normalisation (`advantages.group_baseline`, verl's compute_grpo_outcome_advantage)
    applied to the score, so a group of equal scores is all 0."""
    if how == "none":
        return scores_b
    if how == "batch":
        return (scores_b - scores_b.mean()) / (scores_b.std() + 1e-6)
    if how == "running":
        if stats is None or int(stats["count"]) < scores_b.size:
            raise ValueError("reward.normalize='running' needs the running moments updated with this batch")
        return (scores_b - stats["mean"]) / (moments_std(stats) + eps)
    if how == "group":
        if group_size < 2:
            raise ValueError(
                f"reward.normalize='group' z-scores each prompt's rollouts: rollout.samples_per_prompt={group_size} "
                "must be >= 2"
            )
        return np.asarray(advantages.group_baseline(scores_b, group_size, eps=eps))
    raise ValueError(f"reward.normalize={how!r}; choose one of {', '.join(NORMALIZE)}")


def clip_scores(scores_b: np.ndarray, clip=()) -> np.ndarray:
    """reward.clip: () leaves the scores as they are; (lo, hi) clamps them into [lo, hi], after
    the normalisation (OpenRLHF's --reward_clip_range, its compute_reward clamp; verl's
    reward clip ranges alike)."""
    if not len(clip):
        return scores_b
    if len(clip) != 2 or not clip[0] < clip[1]:
        raise ValueError(f"reward.clip={tuple(clip)!r}: give () (no clip) or (lo, hi) with lo < hi")
    return np.clip(scores_b, clip[0], clip[1])


def training_scores(
    scores_b: np.ndarray, how: str, clip=(), group_size: int = 1, stats: dict | None = None
) -> tuple[np.ndarray, dict | None]:
    """(the float32 scores the estimator reads, the updated running moments or None): the raw
    POLAR scores normalised (`normalize_scores`; "running" first merges them into `stats`),
    then clipped (`clip_scores`)."""
    if how == "running":
        stats = update_moments(stats if stats is not None else init_moments(), scores_b)
    else:
        stats = None
    train_b = clip_scores(normalize_scores(scores_b, how, group_size, stats), clip)
    return np.asarray(train_b, np.float32), stats
