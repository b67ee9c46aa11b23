"""How much of the piece memory's gain would the baselines get? The same memory on them.

``musicgend evaluate`` scores a model with a piece memory against the contract's baselines
(``repeat``, ``kn5_repeat``), which have none. This bench gives each baseline the same piece
memory (:mod:`musicgend.core.memory`), its weights fitted on the validation split for that
baseline as ``musicgend model tune-memory`` fits them for the model, and scores the
mixtures on the same test frames by the same rule (DESIGN.md §4: an unknown chord costs
``p(<unk>) × p_spell``; top-1 is the mixture's most likely chord). So the network's share
of the gain and the memory's can be read apart.

    .venv/bin/python bench/memory_baselines.py --model models/default --data /tmp/bach \\
        --json bench/results/memory-baselines.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from musicgend.core.memory import (  # noqa: E402
    FrameEvidence,
    MemoryWeights,
    evidence,
    fit_weights,
    mixed_log_prob,
    mixture_choice,
)
from musicgend.core.tokens import PitchSet, pitches_from_token, token_from_pitches  # noqa: E402
from musicgend.core.vocab import SILENCE_ID, UNK_ID  # noqa: E402
from musicgend.model.artifact import load_artifact  # noqa: E402
from musicgend.training.evaluate import (  # noqa: E402
    LOG_FLOOR,
    EncodedPiece,
    fit_baselines,
    read_pieces,
)
from musicgend.training.ngram import KneserNey  # noqa: E402


class Frames:
    """Per frame, for one baseline: ln p of the frame's chord, of the previous chord, of
    the best other chord and of the recall (−inf: none), the chord each candidate names,
    and the piece memory's :class:`FrameEvidence`."""

    def __init__(self, ev: FrameEvidence) -> None:
        self.ev = ev
        self.lp: list[float] = []
        self.lp_prev: list[float] = []
        self.lp_best: list[float] = []
        self.lp_recall: list[float] = []
        self.chord: list[PitchSet] = []
        self.prev_name: list[PitchSet | None] = []
        self.best: list[PitchSet | None] = []


def baseline_frames(
    pieces: Sequence[EncodedPiece], vocab, prior, lam: float, kn: KneserNey | None
) -> Frames:
    """``λ·[id = previous id] + (1 − λ)·q``, q the Kneser-Ney distribution (or uniform)."""
    out = Frames(evidence([p.frames for p in pieces]))
    recalled = iter(out.ev.recalled)
    size = len(vocab)
    for piece in pieces:
        ids = piece.ids.tolist()
        width = kn.order - 1 if kn is not None else 0
        history = [SILENCE_ID] * width + ids  # silence before the piece, as kn_stats pads it
        prev_chord: PitchSet = frozenset()
        prev_id = SILENCE_ID
        for t, frame in enumerate(piece.frames):
            r = next(recalled)
            q = (
                kn.distribution(history[t : t + width])
                if kn is not None
                else np.full(size, 1 / size)
            )

            def lp_of(chord: PitchSet, q=q, prev_id=prev_id) -> float:
                """evaluate's rule: ``λ·[id = previous id] + (1 − λ)·q(id)``, × p_spell
                for an unknown chord."""
                i = vocab.ids([token_from_pitches(chord)])[0]
                lp = max(float(np.log(lam * (i == prev_id) + (1 - lam) * q[i])), LOG_FLOOR)
                return lp + (prior.log_p(chord) if i == UNK_ID else 0.0)

            out.lp.append(lp_of(frame))
            # the candidates for top-1 as evaluate names them: the previous id and the best
            # other id (an <unk> among them names no chord), then the recall
            out.prev_name.append(None if prev_id == UNK_ID else prev_chord)
            out.lp_prev.append(float(np.log(lam + (1 - lam) * q[prev_id])))
            masked = q.copy()
            masked[prev_id] = -1.0
            j = int(masked.argmax())
            out.best.append(None if j == UNK_ID else pitches_from_token(vocab.token(j)))
            out.lp_best.append(float(np.log((1 - lam) * q[j])))
            out.lp_recall.append(-np.inf if r is None else lp_of(r.chord))
            out.chord.append(frame)
            prev_chord, prev_id = frame, ids[t]
    return out


def scores(f: Frames, weights: MemoryWeights | None) -> dict[str, float]:
    ev = f.ev
    lp = np.maximum(np.array(f.lp), LOG_FLOOR)
    m = np.zeros(len(lp)) if weights is None else weights.shares(ev.level, ev.holds)
    mixed = np.maximum(mixed_log_prob(lp, m, ev.hit), LOG_FLOOR)
    recall = [None if r is None else r.chord for r in ev.recalled]
    names: list[Sequence[PitchSet | None]] = [f.prev_name, f.best, recall]
    lps = [np.array(f.lp_prev), np.array(f.lp_best), np.array(f.lp_recall)]
    same = [np.array([r == c for r, c in zip(recall, n, strict=True)]) & ev.has for n in names]
    choice = mixture_choice(lps, same, m)
    right = [names[k][i] == f.chord[i] for i, k in enumerate(choice.tolist())]
    return {"nll_nats_per_frame": float(-mixed.mean()), "top1": float(np.mean(right))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "default")
    parser.add_argument("--data", type=Path, required=True, help="the model's training data")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    art = load_artifact(args.model)
    split = art.training["split"]
    cfg = art.config
    t0 = time.perf_counter()

    def read(name: str) -> list[EncodedPiece]:
        files = [args.data / n for n in split[name]]
        return read_pieces(files, art.vocab, art.pitch_prior, cfg.fs, cfg.first_track_only).pieces

    train, val, test = read("train"), read("val"), read("test")
    fitted = fit_baselines(train, val, len(art.vocab))
    report: dict[str, object] = {"model": str(args.model), "test_frames": sum(map(len, test))}
    for name, lam, kn in (
        ("repeat", fitted.lam_repeat, None),
        ("kn5_repeat", fitted.lam_kn, fitted.kn),
    ):
        on_val = baseline_frames(val, art.vocab, art.pitch_prior, lam, kn)
        weights, _ = fit_weights(on_val.ev, np.exp(np.array(on_val.lp)))
        on_test = baseline_frames(test, art.vocab, art.pitch_prior, lam, kn)
        alone, mixed = scores(on_test, None), scores(on_test, weights)
        report[name] = {"alone": alone, "with_memory": mixed, "memory": weights.to_json()}
        print(
            f"{name:12s} alone NLL {alone['nll_nats_per_frame']:.3f} top-1 "
            f"{100 * alone['top1']:.1f} % | with the piece memory NLL "
            f"{mixed['nll_nats_per_frame']:.3f} top-1 {100 * mixed['top1']:.1f} %",
            flush=True,
        )
    report["seconds"] = round(time.perf_counter() - t0, 1)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
