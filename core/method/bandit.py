"""Disjoint LinUCB over stacked per-arm arrays, with lazy geometric forgetting.

All arms live in (K, d, d) / (K, d) arrays so that scoring is a handful of numpy calls with no
Python loop over arms. Time t counts routed requests; the owner advances it.

A and b of an arm share one (d, d + 1) block [A | b] of `Ab`: forgetting scales both, and the
rank-1 step adds x [x^T, r] to both, one numpy call each instead of two or three. `A` and `b` are
views of it. Element-wise the arithmetic is the same as on separate arrays, so are the bits.
"""

from __future__ import annotations

import numpy as np

from core.method.config import BanditConfig

ARRAY_FIELDS = (
    "A",
    "A_inv",
    "b",
    "theta",
    "last_update",
    "last_pull",
    "ridge_floor",
    "pulls",
    "updates",
    "since_refresh",
)
# Largest max_decay_steps for which estimates() reads the staleness divisor from a table.
_SHRINK_TABLE_MAX = 1 << 16
_F64 = np.dtype(np.float64)


class _HotPath:
    """Constants and scratch buffers of the hot path, derived from one config object.

    Numpy calls on arrays this small cost their dispatch, not their arithmetic: 0-d arrays as
    operands dispatch faster than Python floats, and a table lookup replaces two ufunc calls.
    """

    def __init__(self, config: BanditConfig) -> None:
        d, cap = config.dim, config.max_decay_steps
        self.config = config
        self.eye = np.eye(d)
        self.outer = np.empty((d, d))
        # update() scratch, with the row and column views its outer products take (made once):
        # u = A^-1 x, v = u / denom, xr = [x, r] and x [x^T, r] for the [A | b] block.
        self.u = np.empty(d)
        self.v = np.empty(d)
        self.u_col, self.v_row = self.u.reshape(d, 1), self.v.reshape(1, d)
        self.xr = np.empty(d + 1)
        self.xr_head = self.xr[:d]  # made once: slicing per call costs a view object
        self.x_col, self.xr_row = self.xr_head.reshape(d, 1), self.xr.reshape(1, d + 1)
        self.denom = np.zeros(())  # the divisor as a 0-d operand (see the class docstring)
        self.outer_ab = np.empty((d, d + 1))
        self.zero = np.zeros(())
        self.now = np.zeros((), dtype=np.int64)
        self.alpha = np.array(config.alpha)
        # Python scalars of update(), read once per call instead of through the config.
        self.gamma, self.cap, self.ridge = config.gamma, cap, config.ridge
        self.forget = config.gamma < 1.0
        self.readd_below = config.ridge_floor_fraction * config.ridge
        self.refresh_every = config.refresh_every
        # shrink[k] = max(gamma^k, floor) for k = 0..cap, by the same numpy power as the direct
        # formula, so the values are bit-identical; None when the cap makes the table too big.
        self.shrink = (
            np.maximum(config.gamma ** np.arange(cap + 1), config.min_staleness_divisor)
            if cap <= _SHRINK_TABLE_MAX
            else None
        )
        # decay[k] = gamma^k for k = 0..cap, by Python's power as update() computed it (so the
        # same bits), held as numpy scalars: the cheaper operand for the in-place array ops.
        self.decay = (
            [np.float64(config.gamma**k) for k in range(cap + 1)]
            if cap <= _SHRINK_TABLE_MAX
            else None
        )


class LinUCB:
    def __init__(self, config: BanditConfig, n_arms: int = 0) -> None:
        self.config = config
        d = config.dim
        self.t = 0
        self._set_Ab(np.zeros((0, d, d + 1)))
        self.A_inv = np.zeros((0, d, d))
        self.theta = np.zeros((0, d))
        self.last_update = np.zeros(0, dtype=np.int64)
        self.last_pull = np.zeros(0, dtype=np.int64)
        # The ridge still contained in A after decay; refreshed when it decays too far.
        self.ridge_floor = np.zeros(0)
        self.pulls = np.zeros(0, dtype=np.int64)
        self.updates = np.zeros(0, dtype=np.int64)
        self.since_refresh = np.zeros(0, dtype=np.int64)
        self._hot: _HotPath = _HotPath(config)
        self._views: tuple = (None, None, None, [])  # see _arm_views
        for _ in range(n_arms):
            self.add_arm()

    def _consts(self) -> _HotPath:
        hot = self._hot
        if hot.config is not self.config:  # the config object was replaced
            hot = self._hot = _HotPath(self.config)
        return hot

    def _set_Ab(self, Ab: np.ndarray) -> None:
        """Install the [A | b] blocks (K, d, d + 1) and the A, b views of them."""
        d = Ab.shape[1]
        self.Ab = Ab
        self.A = Ab[:, :, :d]
        self.b = Ab[:, :, d]

    def _arm_views(self, slot: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """One arm's [A | b] block, A^-1, b and theta, as views made once per arm (numpy makes a
        new view object at every indexing); remade when any of the arrays is replaced."""
        cache = self._views
        if cache[0] is not self.Ab or cache[1] is not self.A_inv or cache[2] is not self.theta:
            Ab, A_inv, b, theta = self.Ab, self.A_inv, self.b, self.theta
            rows = [(Ab[k], A_inv[k], b[k], theta[k]) for k in range(len(Ab))]
            cache = self._views = (Ab, A_inv, theta, rows)
        return cache[3][slot]

    @property
    def n_arms(self) -> int:
        return self.Ab.shape[0]

    def add_arm(self) -> int:
        """Append an arm at l0*I, 0; returns its slot."""
        d, l0 = self.config.dim, self.config.ridge
        eye = self._consts().eye
        block = np.zeros((1, d, d + 1))
        block[0, :, :d] = l0 * eye
        self._set_Ab(np.concatenate([self.Ab, block]))
        self.A_inv = np.concatenate([self.A_inv, (eye / l0)[None]])
        self.theta = np.concatenate([self.theta, np.zeros((1, d))])
        self.last_update = np.append(self.last_update, self.t)
        self.last_pull = np.append(self.last_pull, self.t)
        self.ridge_floor = np.append(self.ridge_floor, l0)
        self.pulls = np.append(self.pulls, 0)
        self.updates = np.append(self.updates, 0)
        self.since_refresh = np.append(self.since_refresh, 0)
        return self.n_arms - 1

    def load_prior(self, slot: int, A: np.ndarray, b: np.ndarray, ridge_floor: float) -> None:
        """Replace an arm's statistics (a warm-start prior) and mark it fresh at time t."""
        self.A[slot] = A
        self.b[slot] = b
        self.A_inv[slot] = np.linalg.inv(A)
        self.theta[slot] = self.A_inv[slot] @ b
        self.ridge_floor[slot] = ridge_floor
        self.last_update[slot] = self.t
        self.since_refresh[slot] = 0

    def estimates(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-arm estimated reward theta^T x and UCB bonus alpha*sqrt(v), v inflated by staleness.

        v = max(x^T A^-1 x, 0) / max(gamma^min(dt, cap), floor) with dt = t - max(last update,
        last pull) >= 0 (time only moves forward).
        """
        hot = self._hot
        if hot.config is not self.config:
            hot = self._consts()
        quad = (self.A_inv @ x).dot(x)
        np.maximum(quad, hot.zero, out=quad)
        dt = np.maximum(self.last_update, self.last_pull)
        hot.now[()] = self.t  # t as a 0-d int64 operand: a Python int converts slower
        np.subtract(hot.now, dt, out=dt)
        if hot.shrink is not None:
            quad /= hot.shrink.take(dt, mode="clip")  # clip: dt > cap reads gamma^cap
        else:
            c = self.config
            quad /= np.maximum(
                c.gamma ** np.minimum(dt, c.max_decay_steps), c.min_staleness_divisor
            )
        np.sqrt(quad, out=quad)
        np.multiply(quad, hot.alpha, out=quad)
        return self.theta.dot(x), quad

    def mark_pull(self, slot: int) -> None:
        self.last_pull[slot] = self.t
        self.pulls[slot] += 1

    def update(self, slot: int, x: np.ndarray, reward: float) -> None:
        """Forget lazily since the arm's last update, then a rank-1 Sherman-Morrison step."""
        hot = self._hot
        if hot.config is not self.config:
            hot = self._consts()
        t = self.t
        steps = t - self.last_update.item(slot)
        Ab, A_inv, b, theta = self._arm_views(slot)
        d = x.shape[0]
        floor = self.ridge_floor.item(slot)
        if steps > 0 and hot.forget:
            k = steps if steps < hot.cap else hot.cap  # min(steps, cap) without the call
            decay = hot.decay[k] if hot.decay is not None else np.float64(hot.gamma**k)
            floor *= decay
            Ab *= decay  # A and b
            A_inv /= decay
        exact = False
        if floor < hot.readd_below:
            Ab[:, :d] += (hot.ridge - floor) * hot.eye
            floor = hot.ridge
            exact = True
        self.ridge_floor[slot] = floor
        # float64 x (the router's case): products into scratch buffers, the outer products as
        # k=1 matrix products (the same products x_i*x_j as np.outer, without its allocation).
        fast = x.dtype == _F64
        u = A_inv.dot(x, out=hot.u) if fast else A_inv.dot(x)
        denom = 1.0 + float(x.dot(u))
        if fast:
            hot.xr_head[...] = x
            hot.xr[d] = reward
            hot.x_col.dot(hot.xr_row, out=hot.outer_ab)  # x [x^T, r]: x x^T and r x
            Ab += hot.outer_ab
        else:
            Ab[:, :d] += np.outer(x, x)
            b += reward * x
        since = self.since_refresh.item(slot) + 1
        if exact or not denom > 1e-9 or since >= hot.refresh_every:
            # Lost positive definiteness, a ridge refresh, or periodic drift control.
            A_inv[...] = np.linalg.inv(Ab[:, :d])
            since = 0
        elif fast:
            hot.denom[()] = denom
            np.divide(u, hot.denom, out=hot.v)
            hot.u_col.dot(hot.v_row, out=hot.outer)  # u (u / denom)^T
            A_inv -= hot.outer
        else:
            A_inv -= np.outer(u, u / denom)
        self.since_refresh[slot] = since
        A_inv.dot(b, out=theta)
        self.last_update[slot] = t
        self.updates[slot] += 1

    def predict(self, slot: int, x: np.ndarray) -> float:
        """The arm's estimated reward theta^T x."""
        return float(self.theta[slot].dot(x))

    def shrink(self, slot: int, keep: float) -> None:
        """Keep only a share `keep` of an arm's evidence (A and b scaled alike). The ridge shrinks
        with it and is re-added whole at the arm's next update (see update), which pulls the
        estimate towards 0: the arm relearns from its new rewards, as a new arm would."""
        Ab, A_inv, _, _ = self._arm_views(slot)
        Ab *= keep
        A_inv /= keep
        self.ridge_floor[slot] *= keep

    def arm_state(self, slot: int) -> tuple[np.ndarray, float, int]:
        """A copy of an arm's [A | b] block, its ridge floor and the time of its last update."""
        return self.Ab[slot].copy(), self.ridge_floor.item(slot), self.last_update.item(slot)

    def restore_arm(self, slot: int, Ab: np.ndarray, ridge_floor: float, last_update: int) -> None:
        """Put back what arm_state() gave; forgetting decays it from `last_update` on."""
        d = self.config.dim
        self.Ab[slot] = Ab
        self.A_inv[slot] = np.linalg.inv(Ab[:, :d])
        self.theta[slot] = self.A_inv[slot] @ Ab[:, d]
        self.ridge_floor[slot] = ridge_floor
        self.last_update[slot] = last_update
        self.since_refresh[slot] = 0

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in ARRAY_FIELDS}

    def load_arrays(self, arrays: dict[str, np.ndarray], t: int) -> None:
        for name in ARRAY_FIELDS:
            if name not in ("A", "b"):
                setattr(self, name, np.array(arrays[name], order="C"))
        self._set_Ab(np.concatenate([arrays["A"], np.asarray(arrays["b"])[:, :, None]], axis=2))
        self.t = t
