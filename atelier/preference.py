"""Visual preference ranking (VBPR/DVBPR-style, trained with BPR in TensorFlow) and personalised design.

A user's preference for item i is

    x_ui = beta_i + gamma_u · gamma_i + (theta_u + theta_0) · f(c_i)

where c_i is the item's visual feature (its VAE code μ, or PCA features of its pixels for the
baseline), f a small MLP (so preference is a smooth function of the code and design by gradient
ascent is meaningful), theta_0 a visual bias shared by every user, and beta_i, gamma_i the
collaborative terms of items with training interactions. Items without any (new items, or
catalogue items nobody interacted with) have beta = 0 and gamma = 0 in training and in serving
alike, so the visual term alone must rank them: that is what makes cold-start ranking possible.

Training uses TensorFlow; scoring, gradients and serialisation are plain numpy, so serving needs
no TensorFlow. Nothing here imports grpc or redis.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)

MODEL_KINDS = ("random", "popularity", "bpr_mf", "vbpr_codes", "vbpr_pca")
VISUAL_KINDS = ("vbpr_codes", "vbpr_pca")
FORMAT_VERSION = 1


@dataclass(frozen=True)
class TrainingData:
    """Positive interactions as (user row, item row) pairs, one per distinct (user, item)."""

    user_ids: list[str]  # row index -> user id
    item_ids: list[str]  # row index -> item id (every catalogue item, interacted with or not)
    features: np.ndarray  # (n_items, d) float32 visual features of each item
    pairs: np.ndarray  # (n, 2) int64 positive interactions (user row, item row)
    timestamps: np.ndarray  # (n,) float64 seconds: the first interaction of the user with the item
    skipped_events: int = field(default=0)  # events on items not in item_ids

    def subset(self, keep: np.ndarray) -> TrainingData:
        """The same users, items and features with only the pairs where `keep` is true."""
        return TrainingData(
            self.user_ids,
            self.item_ids,
            self.features,
            self.pairs[keep],
            self.timestamps[keep],
            self.skipped_events,
        )


def training_data(
    events: Iterable[tuple[str, str, float]], item_ids: Sequence[str], features: np.ndarray
) -> TrainingData:
    """Positive pairs from (user_id, item_id, timestamp) events (extra tuple fields are ignored).

    Several events of one user on one item (view, click, cart, purchase) are one pair, dated by
    the first. Events on unknown items are skipped, counted in `skipped_events` and logged.
    """
    features = np.asarray(features, dtype=np.float32)
    if features.ndim != 2 or len(features) != len(item_ids):
        raise ValueError(f"features must be (n_items={len(item_ids)}, d), got {features.shape}")
    item_row = {item_id: i for i, item_id in enumerate(item_ids)}
    user_row: dict[str, int] = {}
    first: dict[tuple[int, int], float] = {}
    skipped = 0
    for event in events:
        user_id, item_id, timestamp = event[0], event[1], float(event[2])
        row = item_row.get(item_id)
        if row is None:
            skipped += 1
            continue
        key = (user_row.setdefault(user_id, len(user_row)), row)
        if key not in first or timestamp < first[key]:
            first[key] = timestamp
    if skipped:
        log.warning("skipped %d events on items not in the catalogue", skipped)
    pairs = np.array(list(first), dtype=np.int64).reshape(-1, 2)
    timestamps = np.array(list(first.values()), dtype=np.float64)
    order = np.lexsort((pairs[:, 1], timestamps, pairs[:, 0])) if len(pairs) else np.arange(0)
    return TrainingData(
        list(user_row), list(item_ids), features, pairs[order], timestamps[order], skipped
    )


def popularity_scores(data: TrainingData) -> np.ndarray:
    """Training interactions per item, (n_items,) float64."""
    return np.bincount(data.pairs[:, 1], minlength=len(data.item_ids)).astype(np.float64)


class VisualRanker:
    """A trained visual preference model; all numpy. Build it with `train_vbpr` or `from_bytes`."""

    def __init__(
        self,
        kind: str,
        user_ids: Sequence[str],
        item_ids: Sequence[str],
        arrays: dict[str, np.ndarray],
    ):
        if kind not in VISUAL_KINDS:
            raise ValueError(f"kind must be one of {VISUAL_KINDS}, got {kind!r}")
        self.kind = kind
        self.user_ids = list(user_ids)
        self.item_ids = list(item_ids)  # items with collaborative terms (training interactions)
        self._user_row = {u: i for i, u in enumerate(self.user_ids)}
        self._item_row = {i: r for r, i in enumerate(self.item_ids)}
        a = {k: np.asarray(v, dtype=np.float32) for k, v in arrays.items()}
        self.feature_mean, self.feature_scale = a["feature_mean"], a["feature_scale"]
        self.w1, self.b1, self.w2, self.b2 = a["w1"], a["b1"], a["w2"], a["b2"]
        self.theta_u, self.theta_0 = a["theta_u"], a["theta_0"]
        self.gamma_u, self.gamma_i, self.beta_i = a["gamma_u"], a["gamma_i"], a["beta_i"]

    @property
    def feature_dim(self) -> int:
        return int(self.w1.shape[0])

    def knows_user(self, user_id: str) -> bool:
        return user_id in self._user_row

    def _user(self, user_id: str) -> int:
        row = self._user_row.get(user_id)
        if row is None:
            raise KeyError(f"user {user_id!r} has no training interactions in this model")
        return row

    def _hidden(self, features: np.ndarray) -> np.ndarray:
        x = (np.asarray(features, np.float32) - self.feature_mean) / self.feature_scale
        return np.tanh(x @ self.w1 + self.b1)

    def item_embeddings(self, features: np.ndarray) -> np.ndarray:
        """f(c) for any items (m, d) -> (m, d_vis); items need not have been seen in training."""
        features = np.atleast_2d(np.asarray(features, np.float32))
        if features.shape[1] != self.feature_dim:
            raise ValueError(f"features must have {self.feature_dim} columns, got {features.shape}")
        return self._hidden(features) @ self.w2 + self.b2

    def _collaborative_rows(self, item_ids: Sequence[str]) -> np.ndarray:
        return np.array([self._item_row.get(i, -1) for i in item_ids], dtype=np.int64)

    def scores_from_embeddings(
        self, user_ids: Sequence[str], embeddings: np.ndarray, item_ids: Sequence[str]
    ) -> np.ndarray:
        """(n_users, m) preferences given precomputed f(c) of the m items (many users at once)."""
        users = np.array([self._user(u) for u in user_ids], dtype=np.int64)
        rows = self._collaborative_rows(item_ids)
        if len(rows) != len(embeddings):
            raise ValueError(f"{len(item_ids)} item ids for {len(embeddings)} items")
        known = rows >= 0
        beta = np.where(known, self.beta_i[np.maximum(rows, 0)], 0.0)
        gamma = np.where(known[:, None], self.gamma_i[np.maximum(rows, 0)], 0.0)
        visual = (self.theta_u[users] + self.theta_0) @ embeddings.T
        return (visual + self.gamma_u[users] @ gamma.T + beta).astype(np.float32)

    def scores(self, user_id: str, features: np.ndarray, item_ids: Sequence[str]) -> np.ndarray:
        """(m,) preference of the user for items given by features; unseen items get beta = gamma = 0."""
        return self.scores_from_embeddings([user_id], self.item_embeddings(features), item_ids)[0]

    def visual_scores(self, user_id: str, features: np.ndarray) -> np.ndarray:
        """(m,) the visual part alone, (theta_u + theta_0) · f(c): what design maximises."""
        return self.item_embeddings(features) @ (self.theta_u[self._user(user_id)] + self.theta_0)

    def preference_and_gradient(self, user_id: str, code: np.ndarray) -> tuple[float, np.ndarray]:
        """Visual preference of one code and its gradient with respect to the code."""
        code = np.asarray(code, np.float64).reshape(-1)
        if code.shape[0] != self.feature_dim:
            raise ValueError(f"code must have {self.feature_dim} values, got {code.shape[0]}")
        v = (self.theta_u[self._user(user_id)] + self.theta_0).astype(np.float64)
        scale = self.feature_scale.astype(np.float64)
        x = (code - self.feature_mean) / scale
        h = np.tanh(x @ self.w1.astype(np.float64) + self.b1)
        w2v = self.w2.astype(np.float64) @ v
        value = float(h @ w2v + self.b2.astype(np.float64) @ v)
        gradient = (self.w1.astype(np.float64) @ ((1.0 - h * h) * w2v)) / scale
        return value, gradient

    def to_bytes(self) -> bytes:
        """An npz archive (ids as unicode arrays, no pickle)."""
        buffer = io.BytesIO()
        np.savez(
            buffer,
            format_version=np.array(FORMAT_VERSION),
            kind=np.array(self.kind),
            user_ids=np.array(self.user_ids, dtype=np.str_),
            item_ids=np.array(self.item_ids, dtype=np.str_),
            feature_mean=self.feature_mean,
            feature_scale=self.feature_scale,
            w1=self.w1,
            b1=self.b1,
            w2=self.w2,
            b2=self.b2,
            theta_u=self.theta_u,
            theta_0=self.theta_0,
            gamma_u=self.gamma_u,
            gamma_i=self.gamma_i,
            beta_i=self.beta_i,
        )
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> VisualRanker:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            version = int(archive["format_version"])
            if version != FORMAT_VERSION:
                raise ValueError(f"unsupported model format {version} (expected {FORMAT_VERSION})")
            arrays = {
                k: archive[k]
                for k in archive.files
                if k not in ("format_version", "kind", "user_ids", "item_ids")
            }
            return cls(
                str(archive["kind"]),
                archive["user_ids"].tolist(),
                archive["item_ids"].tolist(),
                arrays,
            )


@dataclass(frozen=True)
class VBPRConfig:
    """Sizes and training settings of the visual ranker."""

    visual_dim: int = 32  # d_vis, the size of f(c) and theta_u
    hidden: int = 64
    factors: int = 16  # collaborative factors gamma
    batch_size: int = 2048
    learning_rate: float = 0.005
    l2_embedding: float = 1e-4  # on the batch's theta_u, gamma_u, gamma_i, beta_i
    l2_weights: float = 1e-5  # on the MLP's weights


def train_vbpr(
    data: TrainingData,
    kind: str = "vbpr_codes",
    epochs: int = 30,
    seed: int = 0,
    progress: bool = False,
    config: VBPRConfig | None = None,
) -> VisualRanker:
    """Fit the ranker with the BPR loss: -log σ(x_ui - x_uj) over sampled (user, positive, negative).

    Negatives are drawn uniformly from every catalogue item; a negative that is also one of the
    user's positives is kept (one in thousands here), as in BPR's original sampler.
    """
    import tensorflow as tf
    from tqdm import tqdm

    if kind not in VISUAL_KINDS:
        raise ValueError(f"kind must be one of {VISUAL_KINDS}, got {kind!r}")
    if len(data.pairs) == 0:
        raise ValueError("no training interactions")
    config = config or VBPRConfig()
    tf.random.set_seed(seed)
    rng = np.random.default_rng(seed)
    n_users, n_items = len(data.user_ids), len(data.item_ids)
    features = np.asarray(data.features, np.float32)
    feature_mean = features.mean(axis=0)
    feature_scale = features.std(axis=0) + 1e-6
    standardised = tf.constant((features - feature_mean) / feature_scale)
    seen = np.bincount(data.pairs[:, 1], minlength=n_items) > 0
    seen_mask = tf.constant(seen.astype(np.float32))

    d, h, k, v = features.shape[1], config.hidden, config.factors, config.visual_dim

    def init(shape, scale):
        return tf.Variable(rng.normal(0.0, scale, shape).astype(np.float32))

    w1, b1 = init((d, h), 1.0 / np.sqrt(d)), tf.Variable(tf.zeros(h))
    w2, b2 = init((h, v), 1.0 / np.sqrt(h)), tf.Variable(tf.zeros(v))
    theta_u, theta_0 = init((n_users, v), 0.01), tf.Variable(tf.zeros(v))
    gamma_u, gamma_i = init((n_users, k), 0.01), init((n_items, k), 0.01)
    beta_i = tf.Variable(tf.zeros(n_items))
    variables = [w1, b1, w2, b2, theta_u, theta_0, gamma_u, gamma_i, beta_i]
    optimizer = tf.keras.optimizers.Adam(config.learning_rate)

    def score(users, items):
        mask = tf.gather(seen_mask, items)
        embedding = tf.tanh(tf.gather(standardised, items) @ w1 + b1) @ w2 + b2
        g_i = tf.gather(gamma_i, items) * mask[:, None]
        b_i = tf.gather(beta_i, items) * mask
        t_u = tf.gather(theta_u, users)
        g_u = tf.gather(gamma_u, users)
        x = b_i + tf.reduce_sum(g_u * g_i, 1) + tf.reduce_sum((t_u + theta_0) * embedding, 1)
        return x, tf.reduce_sum(g_i**2, 1) + b_i**2

    @tf.function
    def train_step(users, positives, negatives):
        with tf.GradientTape() as tape:
            x_pos, reg_pos = score(users, positives)
            x_neg, reg_neg = score(users, negatives)
            bpr = -tf.reduce_mean(tf.math.log_sigmoid(x_pos - x_neg))
            user_reg = tf.reduce_sum(tf.gather(theta_u, users) ** 2, 1) + tf.reduce_sum(
                tf.gather(gamma_u, users) ** 2, 1
            )
            reg = config.l2_embedding * tf.reduce_mean(user_reg + reg_pos + reg_neg)
            reg += config.l2_weights * (tf.reduce_sum(w1**2) + tf.reduce_sum(w2**2))
            loss = bpr + reg
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
        return bpr

    pairs = data.pairs
    steps = max(1, int(np.ceil(len(pairs) / config.batch_size)))
    bar = tqdm(range(epochs), desc=f"training {kind}", unit="epoch", disable=not progress)
    for _epoch in bar:
        order = rng.permutation(len(pairs))
        negatives = rng.integers(0, n_items, len(pairs))
        total = 0.0
        for s in range(steps):
            batch = order[s * config.batch_size : (s + 1) * config.batch_size]
            total += float(
                train_step(
                    tf.constant(pairs[batch, 0]),
                    tf.constant(pairs[batch, 1]),
                    tf.constant(
                        negatives[s * config.batch_size : s * config.batch_size + len(batch)]
                    ),
                )
            )
        bar.set_postfix(bpr=f"{total / steps:.4f}")
    log.info("trained %s: %d users, %d items, %d pairs", kind, n_users, n_items, len(pairs))

    # Only items with training interactions keep collaborative terms; the rest are "unseen".
    kept = np.flatnonzero(seen)
    arrays = {
        "feature_mean": feature_mean,
        "feature_scale": feature_scale,
        "w1": w1.numpy(),
        "b1": b1.numpy(),
        "w2": w2.numpy(),
        "b2": b2.numpy(),
        "theta_u": theta_u.numpy(),
        "theta_0": theta_0.numpy(),
        "gamma_u": gamma_u.numpy(),
        "gamma_i": gamma_i.numpy()[kept],
        "beta_i": beta_i.numpy()[kept],
    }
    return VisualRanker(kind, data.user_ids, [data.item_ids[i] for i in kept], arrays)


@dataclass(frozen=True)
class Design:
    code: np.ndarray
    score: float  # visual preference of the designed code
    start_score: float
    steps: int
    max_abs_sigma: float  # |code - prior mean| / prior sd, max over dims


def design_for_user(
    model: VisualRanker,
    user_id: str,
    start: np.ndarray,
    prior_mean: np.ndarray,
    steps: int = 200,
    learning_rate: float = 0.05,
    penalty: float = 0.01,
    max_sigma: float = 3.0,
    prior_sd: float | np.ndarray = 1.0,
) -> Design:
    """Gradient ascent (Adam steps) on preference(c) - penalty/2 · ||(c - m)/sd||², with every
    dimension projected into m ± max_sigma·sd after each step.

    The penalty is the log-density of the prior N(m, sd²) up to its weight: it keeps the code
    where the decoder has seen data, and the box makes the guarantee hard. The returned code is
    the best iterate by the penalised objective.
    """
    m = np.asarray(prior_mean, np.float64).reshape(-1)
    sd = np.broadcast_to(np.asarray(prior_sd, np.float64), m.shape)
    low, high = m - max_sigma * sd, m + max_sigma * sd
    c = np.clip(np.asarray(start, np.float64).reshape(-1), low, high)
    if c.shape != m.shape:
        raise ValueError(f"start has {c.shape[0]} values, prior_mean {m.shape[0]}")
    start_score, _ = model.preference_and_gradient(user_id, c)

    def objective(code: np.ndarray) -> tuple[float, float, np.ndarray]:
        value, grad = model.preference_and_gradient(user_id, code)
        z = (code - m) / sd
        return value - 0.5 * penalty * float(z @ z), value, grad - penalty * z / sd

    best_obj, best_value, grad = objective(c)
    best = c.copy()
    first, second = np.zeros_like(c), np.zeros_like(c)
    done = 0
    for t in range(1, steps + 1):
        first = 0.9 * first + 0.1 * grad
        second = 0.999 * second + 0.001 * grad * grad
        step = learning_rate * (first / (1 - 0.9**t)) / (np.sqrt(second / (1 - 0.999**t)) + 1e-8)
        c = np.clip(c + step, low, high)
        obj, value, grad = objective(c)
        done = t
        if obj > best_obj:
            best_obj, best_value, best = obj, value, c.copy()
    return Design(
        code=best.astype(np.float32),
        score=float(best_value),
        start_score=float(start_score),
        steps=done,
        max_abs_sigma=float(np.max(np.abs(best - m) / sd)),
    )


@dataclass(frozen=True)
class CategorySubspace:
    """A category's codes as a Gaussian over their leading principal directions: a code is
    mean + directions.T @ (sd * a), with a ~ N(0, I). Designing in `a` keeps the code among the
    category's own variations, so its decoded image stays an item of that category."""

    mean: np.ndarray  # (d,)
    directions: np.ndarray  # (k, d), orthonormal rows
    sd: np.ndarray  # (k,) the codes' standard deviation along each direction

    @classmethod
    def fit(
        cls, codes: np.ndarray, explained: float = 0.9, max_directions: int = 32
    ) -> CategorySubspace:
        codes = np.asarray(codes, np.float64)
        mean = codes.mean(axis=0)
        if len(codes) < 2:
            return cls(mean, np.zeros((0, codes.shape[1])), np.zeros(0))
        _, singular, vt = np.linalg.svd(codes - mean, full_matrices=False)
        variance = singular**2 / (len(codes) - 1)
        share = np.cumsum(variance) / max(float(variance.sum()), 1e-12)
        k = int(min(max_directions, np.searchsorted(share, explained) + 1, len(variance)))
        return cls(mean, vt[:k], np.sqrt(np.maximum(variance[:k], 1e-12)))

    def code(self, a: np.ndarray) -> np.ndarray:
        return self.mean + self.directions.T @ (self.sd * a)

    def coordinates(self, code: np.ndarray) -> np.ndarray:
        if not len(self.sd):
            return np.zeros(0)
        return (self.directions @ (np.asarray(code, np.float64) - self.mean)) / self.sd


class _InSubspace:
    """A VisualRanker seen through a CategorySubspace: preference of coordinates `a`."""

    def __init__(self, model: VisualRanker, subspace: CategorySubspace):
        self.model, self.subspace = model, subspace

    def preference_and_gradient(self, user_id: str, a: np.ndarray) -> tuple[float, np.ndarray]:
        value, gradient = self.model.preference_and_gradient(user_id, self.subspace.code(a))
        return value, self.subspace.sd * (self.subspace.directions @ gradient)


def design_in_category(
    model: VisualRanker,
    user_id: str,
    category_codes: np.ndarray,
    start: np.ndarray | None = None,
    steps: int = 200,
    max_sigma: float = 3.0,
    **design_args,
) -> Design:
    """A design for the user inside one category: `design_for_user` over the coordinates of the
    category's CategorySubspace (prior N(0, I) there, every coordinate within max_sigma), from
    the category's mean code or from `start` (an item's code). Ascent over the whole latent
    space walks to the user's favourite category instead (a "Shoes" design for a T-shirt lover
    decodes as a T-shirt); here every design is the category's mean plus at most max_sigma of
    its own spread along each of its leading directions. `max_abs_sigma` is in those units."""
    subspace = CategorySubspace.fit(category_codes)
    k = len(subspace.sd)
    a0 = np.zeros(k) if start is None else subspace.coordinates(start)
    if k == 0:
        value, _ = model.preference_and_gradient(user_id, subspace.mean)
        return Design(subspace.mean.astype(np.float32), value, value, 0, 0.0)
    found = design_for_user(
        _InSubspace(model, subspace),  # type: ignore[arg-type]
        user_id,
        a0,
        np.zeros(k),
        steps=steps,
        max_sigma=max_sigma,
        **design_args,
    )
    return Design(
        subspace.code(found.code.astype(np.float64)).astype(np.float32),
        found.score,
        found.start_score,
        found.steps,
        found.max_abs_sigma,
    )
