"""Second stages on a self-supervised model's frozen embeddings (``pretrained:`` in ``ensemble.yaml``).

The pretrained encoder (``galaxy10 pretrain``) never saw a label: each configured second stage (logistic
regression, XGBoost, ...) is fit on its embeddings of the training split and scored on the validation split,
which it never saw - honest validation probabilities without cross-fitting, and cheap enough to try many.
Deployed, the candidate is the pretrained CNN with the fitted second stage on its embedding layer.
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np

from ensembles.ensemble_model import Branch
from ensembles.second_stage import full_proba
from experiments.ensembling.context import BuildContext, Candidate, embedder, ensemble_of, second_stage_factory
from experiments.tracking.loading import load_keras_model
from experiments.training import load_training_data


def pretrained_candidates(ctx: BuildContext) -> list[Candidate]:
    """``pre-<name>`` for every configured second stage, on ``cfg.pretrained``'s embeddings (none without it)."""
    cfg = ctx.cfg
    if not cfg.pretrained:
        return []
    bundle = load_keras_model(cfg.pretrained, ws=ctx.ws)
    model, meta = bundle.model, bundle.meta
    size, crop = int(meta["size"]), int(meta["crop"])
    if size not in ctx.by_size:
        ctx.by_size.setdefault(int(ctx.data.size), ctx.data)
        ctx.by_size[size] = ctx.by_size.get(size) or load_training_data(
            replace(ctx.members.best.cfg.data, size=size, crop=crop, max_images=None), ctx.data.path
        )
    data = ctx.by_size[size]
    emb = embedder(
        model,
        model_id=f"pretrained:{cfg.pretrained}:{meta.get('run_id', '')}",
        tta=cfg.embeddings.tta,
        batch_size=cfg.embeddings.batch_size,
    )
    train = emb.embed(data.images, data.train, split="train", data_fingerprint=data.fingerprint)
    val = emb.embed(data.images, data.val, split="val", data_fingerprint=data.fingerprint)
    y_train = np.asarray(data.labels[data.train], dtype=np.int64)
    out = []
    for name, params in cfg.second_stage.items():
        start = time.perf_counter()
        fitted = second_stage_factory(name, params, cfg, ctx.balanced)().fit(train.embeddings, y_train)
        probs = full_proba(fitted, val.embeddings, ctx.n_classes)
        branch = Branch(
            cnn=model,
            size=size,
            crop=crop,
            tta=cfg.embeddings.tta,
            second=fitted,
            name=f"pretrained+{name}",
            run_id=meta.get("run_id"),
        )
        out.append(
            Candidate(
                f"pre-{name}",
                "gbm",
                [f"{cfg.pretrained}+{name}"],
                probs,
                f"fit on the frozen pretrained embeddings of the {len(y_train)} training images, scored on validation",
                ensemble_of(ctx, "gbm", [branch], description=f"{name} on {cfg.pretrained}'s frozen embeddings"),
                {**{f"{name}.{k}": v for k, v in params.items()}, "pretrained": cfg.pretrained},
                time.perf_counter() - start,
            )
        )
    return out
