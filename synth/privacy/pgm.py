"""The graphical model behind the marginal family, through Private-PGM (`mbi`, JAX): fit from
noisy marginals, marginals under evidence, and row-wise ancestral sampling.

Sampling is row-wise (row i's cells depend on its own uniforms only), so `synth sample`, bulk
synthesis and the endpoint's merged batches give the same rows (mbi's own `synthetic_data`
rounds across rows, which they could not). Conditions are evidence: the potentials get -inf on
the other values of a conditioned column and the junction tree is recalibrated (Shafer-Shenoy),
so conditioned rows are exact draws from the model's conditional distribution.
"""
from __future__ import annotations

import warnings
from functools import lru_cache

import numpy as np

with warnings.catch_warnings():  # mbi warns about float32 when imported before x64 is on
    warnings.simplefilter("ignore")
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import mbi
    from mbi import junction_tree, marginal_oracles


def counts(data: np.ndarray, cols: tuple[int, ...], sizes: list[int]) -> np.ndarray:
    """Exact counts of the joint cells of `cols` (the only data access besides the scores)."""
    shape = tuple(sizes[c] for c in cols)
    flat = np.ravel_multi_index(tuple(data[:, c] for c in cols), shape)
    return np.bincount(flat, minlength=int(np.prod(shape))).astype(np.float64).reshape(shape)


def _domain(names: list[str], sizes: list[int]) -> "mbi.Domain":
    return mbi.Domain(list(names), [int(s) for s in sizes])


def _one_way(names, sizes, msizes, one_way, sigma) -> list:
    full = _domain(names, sizes)
    out = []
    for (clique, y, merge) in one_way:
        m = mbi.LinearMeasurement(np.asarray(y, dtype=np.float64), clique, stddev=sigma or 1.0)
        out.append(m.compress({clique[0]: np.asarray(merge)}, full))
    return out


# XLA options of the mirror-descent program: compiling it is nearly all of a fit's time (a new program per
# set of measured cliques, 200 iterations of it ~0.2 s), and the cheaper LLVM pipeline compiles it in ~75 %
# of the CPU time for ~2x slower iterations (measured on Adult: 6.0 -> 4.4 CPU s per compilation)
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _multi_step(self, state, loss_fn, known_total, constraints=()):
    """mbi's block of mirror-descent steps (`Estimator._multi_step`), compiled with FAST_COMPILE."""
    def step(s, _):
        return self._step(s, loss_fn, known_total, constraints), None

    return jax.lax.scan(step, state, None, length=mbi.estimation.CALLBACK_EVERY)[0]


def release_compiled() -> None:
    """Drop JAX's compiled programs once a fit is done. Every fit compiles its own (one per set of
    measured cliques) and XLA's CPU code stays mapped until released: about 3,700 memory maps per
    Adult fit, so a process that fits repeatedly (the canary audit, a benchmark sweep) hit the kernel's
    65,530-map limit after about 17 fits and died in LLVM ("Cannot allocate memory", then a segfault)."""
    jax.clear_caches()


class MirrorDescent(mbi.estimation.MirrorDescent):
    """mbi's mirror descent (Armijo steps), its step block compiled for compile time."""
    _multi_step = jax.jit(_multi_step, static_argnames=["self"], donate_argnames=["state"],
                          compiler_options=FAST_COMPILE)


class Estimator:
    """Private-PGM fits of one run's measurements (mbi's mirror descent), each from all measurements so far.

    mbi compiles one program per structure of the loss (its measurements' cliques and queries), and a
    compressed 1-way measurement's query is compared by identity: the 1-way measurements are built once
    here, so two fits with the same cliques (a round's and the final fit) share one compilation."""

    def __init__(self, sizes: list[int], msizes: list[int], names: list[str], one_way: list, sigma1: float):
        self.domain = _domain(names, msizes)
        self.one_way = _one_way(names, sizes, msizes, one_way, sigma1)
        self.sums = [(float(np.sum(y)), (sigma1 or 1.0) ** 2 * np.size(y)) for _, y, _ in one_way]
        self.fits = 0

    def __call__(self, measured: list, iters: int, warm_start=None):
        """The graphical model (mbi.MarkovRandomField over the merged cells) that best explains the
        1-way measurements and `measured` (clique, noisy counts on the merged cells, noise std);
        `warm_start` a previous model."""
        meas = self.one_way + [mbi.LinearMeasurement(y.reshape(-1), clique, stddev=sigma)
                               for clique, y, sigma in pooled(measured)]
        # the total: inverse-variance average of every measurement's noisy sum (mbi counts only the
        # uncompressed ones, and a model fitted to the 1-way measurements alone would get total 1)
        sums = self.sums + [(float(np.sum(y)), (sigma or 1.0) ** 2 * np.size(y)) for _, y, sigma in measured]
        total = max(1.0, sum(t / v for t, v in sums) / sum(1 / v for _, v in sums))
        self.fits += 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return MirrorDescent().estimate(self.domain, meas, known_total=total, iters=iters, warm_start=warm_start)


def estimate(sizes: list[int], msizes: list[int], names: list[str], one_way: list, sigma1: float,
             measured: list, iters: int, warm_start=None):
    """One fit (`Estimator`): 1-way measurements on the original cells (merged by their `merge`), and
    `measured` (clique, noisy counts, noise std) on the merged cells."""
    return Estimator(sizes, msizes, names, one_way, sigma1)(measured, iters, warm_start)


def pooled(measured: list) -> list:
    """Repeated measurements of one clique as one: their inverse-variance average, whose noise std is
    (sum 1 / sigma^2)^(-1/2) (the Gaussian likelihood is the same, and mbi compiles one loss term per
    measurement). Exact measurements (sigma 0) weigh as std 1."""
    out: dict[tuple, list] = {}
    for clique, y, sigma in measured:
        w = 1.0 / (sigma or 1.0) ** 2
        acc = out.setdefault(tuple(clique), [0.0, 0.0])
        acc[0], acc[1] = acc[0] + w * np.asarray(y, dtype=np.float64), acc[1] + w
    return [(clique, s / w, w ** -0.5) for clique, (s, w) in out.items()]


def model_size_mb(names: list[str], msizes: list[int], cliques: list[tuple[str, ...]]) -> float:
    """Size of the junction tree the cliques would give (AIM's model-size limit), in MB."""
    return junction_tree.hypothetical_model_size(_domain(names, msizes), cliques)


class Marginals:
    """A fitted model's counts on any clique, in numpy and exact: the smallest fitted marginal that
    holds the clique when one does; otherwise the junction tree of the model's cliques, calibrated once
    here by Shafer-Shenoy message passing over the exponentiated potentials, answers it from the
    smallest subtree whose cliques cover it (a connected subtree's joint is the product of its clique
    beliefs over the product of its separators' marginals). AIM scores every workload clique each round:
    mbi's eager JAX elimination would compile once per new clique shape, and eliminating over the whole
    model per query (as before) took minutes per round once the model held dozens of cliques."""

    def __init__(self, model):
        import networkx as nx

        self.total = float(model.total)
        self.beliefs = []
        for cl in model.marginals.cliques:
            f = model.marginals[cl]
            self.beliefs.append((tuple(f.domain.attributes), np.asarray(f.values, dtype=np.float64)))
        self.beliefs.sort(key=lambda b: b[1].size)
        domain = model.potentials.domain
        self.size = {a: int(n) for a, n in zip(domain.attributes, domain.shape)}
        factors = [(tuple(model.potentials[cl].domain.attributes), np.asarray(model.potentials[cl].values, np.float64))
                   for cl in model.potentials.cliques]
        covered = {a for ax, _ in factors for a in ax}
        factors += [((a,), np.zeros(self.size[a])) for a in domain.attributes if a not in covered]
        tree, _ = junction_tree.make_junction_tree(domain, [ax for ax, _ in factors])
        nodes = list(tree.nodes)
        for a, b in zip(nodes, nodes[1:]):  # a forest (independent parts): join it by empty separators
            if not nx.has_path(tree, a, b):
                tree.add_edge(a, b)
        self.tree, self.nodes = tree, nodes
        log_pot = {c: np.zeros([self.size[a] for a in c]) for c in nodes}
        for ax, v in factors:  # each potential into one clique that holds it
            home = next(c for c in nodes if set(ax) <= set(c))
            log_pot[home] = log_pot[home] + _broadcast(v, ax, home)
        pot = {c: np.exp(v - v.max()) for c, v in log_pot.items()}
        self.belief = self._calibrate(pot)

    def _calibrate(self, pot: dict) -> dict:
        """Clique beliefs (normalised to 1) after an upward and a downward pass from the first clique."""
        import networkx as nx

        root = self.nodes[0]
        order = list(nx.dfs_postorder_nodes(self.tree, root))
        parent = {c: p for p, c in nx.dfs_edges(self.tree, root)}
        msg: dict[tuple, np.ndarray] = {}

        def send(src, dst):
            f = pot[src]
            for nb in self.tree.neighbors(src):
                if nb != dst:
                    f = f * _broadcast(msg[(nb, src)], _sep(nb, src), src)
            out = _project(f, src, _sep(src, dst))
            msg[(src, dst)] = out / max(float(out.max()), 1e-300)

        for c in order:  # leaves first
            if c in parent:
                send(c, parent[c])
        for c in reversed(order):  # root first
            for nb in self.tree.neighbors(c):
                if parent.get(nb) == c:
                    send(c, nb)
        belief = {}
        for c in self.nodes:
            f = pot[c]
            for nb in self.tree.neighbors(c):
                f = f * _broadcast(msg[(nb, c)], _sep(nb, c), c)
            belief[c] = f / max(float(f.sum()), 1e-300)
        return belief

    def __call__(self, clique: tuple[str, ...]) -> np.ndarray:
        import networkx as nx

        for ax, v in self.beliefs:  # the smallest fitted marginal that holds the clique
            if set(clique) <= set(ax):
                out = np.einsum(v, list(range(len(ax))), [ax.index(a) for a in clique])
                return out * (self.total / max(float(out.sum()), 1e-300))
        homes = [next(c for c in self.nodes if a in c) for a in clique]
        sub = {homes[0]}
        for h in homes[1:]:
            sub.update(nx.shortest_path(self.tree, homes[0], h))
        letter = {a: i for i, a in enumerate(sorted({a for c in sub for a in c}))}
        ops = []
        for c in sub:
            ops += [self.belief[c], [letter[a] for a in c]]
        for a, b in self.tree.subgraph(sub).edges:
            sep = _sep(a, b)
            if sep:
                m = _project(self.belief[a], a, sep)
                ops += [np.divide(1.0, m, out=np.zeros_like(m), where=m > 0), [letter[x] for x in sep]]
        out = np.einsum(*ops, [letter[a] for a in clique], optimize="greedy")
        return out * (self.total / max(float(out.sum()), 1e-300))


def _sep(a: tuple, b: tuple) -> tuple:
    return tuple(x for x in a if x in b)


def _project(f: np.ndarray, axes: tuple, keep: tuple) -> np.ndarray:
    return np.einsum(f, list(range(len(axes))), [axes.index(a) for a in keep])


def _broadcast(v: np.ndarray, axes: tuple, target: tuple) -> np.ndarray:
    """`v` over `axes` (a subset of `target`), transposed and reshaped to broadcast against `target`."""
    shape = [v.shape[axes.index(a)] if a in axes else 1 for a in target]
    return np.transpose(v, sorted(range(len(axes)), key=lambda i: target.index(axes[i]))).reshape(shape)


def independent_pairs_error(merged: np.ndarray, msizes, one_way, candidates) -> list[float]:
    """MST's selection score: the L1 distance between each candidate pair's exact marginal (merged
    cells) and the one the 1-way measurements imply (the product of their noisy counts, clipped at
    0 and scaled to a common total: post-processing of the 1-way release)."""
    p1 = []
    for (_, y, merge), size in zip(one_way, msizes):
        m = np.clip(np.bincount(merge, weights=y, minlength=size), 0, None)
        p1.append(m / m.sum() if m.sum() > 0 else np.full(size, 1.0 / size))
    total = float(np.median([max(float(np.sum(y)), 1.0) for _, y, _ in one_way]))
    return [float(np.abs(counts(merged, (a, b), msizes) - total * np.outer(p1[a], p1[b])).sum())
            for a, b in candidates]


# -- a saved model: potentials of its cliques ---------------------------------------------------
def potentials(model) -> list[tuple[tuple[str, ...], np.ndarray]]:
    out = []
    for cl in model.potentials.cliques:
        f = model.potentials[cl]
        out.append((tuple(f.domain.attributes), np.asarray(f.values, dtype=np.float64)))
    return out


class Sampler:
    """Row-wise draws from the model given by (names, merged sizes, clique potentials)."""

    def __init__(self, names: list[str], sizes: list[int], pots: list[tuple[tuple[str, ...], np.ndarray]]):
        self.names, self.sizes = list(names), [int(s) for s in sizes]
        self.domain = _domain(self.names, self.sizes)
        cliques = [cl for cl, _ in pots] or [(n,) for n in self.names]
        factors = {cl: mbi.Factor(self.domain.project(cl), jnp.asarray(v)) for cl, v in pots}
        for cl in cliques:
            factors.setdefault(cl, mbi.Factor.zeros(self.domain.project(cl)))
        for n in self.names:  # every column in some clique (an isolated one gets a flat factor)
            if not any(n in cl for cl in cliques):
                cliques.append((n,))
                factors[(n,)] = mbi.Factor.zeros(self.domain.project((n,)))
        self.potentials = mbi.CliqueVector(self.domain, cliques, factors)
        self.jtree, elim = junction_tree.make_junction_tree(self.domain, cliques)
        # on the junction tree's maximal cliques (a cycle of measured cliques is triangulated into larger ones)
        self.potentials = self.potentials.expand([tuple(cl) for cl in self.jtree.nodes])
        self.order = list(elim[::-1])
        self.maximal = [set(cl) for cl in self.jtree.nodes]
        self.parents = {}
        used: set[str] = set()
        for col in self.order:
            rel = used & set().union(*[cl for cl in self.maximal if col in cl])
            self.parents[col] = tuple(c for c in self.order if c in rel)
            used.add(col)
        self._tables = lru_cache(maxsize=256)(self._conditional_tables)

    def _conditional_tables(self, evidence: tuple[tuple[str, int], ...]) -> dict[str, np.ndarray]:
        """Per column, the CDF of its cells given its parents' cells (flattened), under `evidence`."""
        pots = self.potentials
        for name, cell in evidence:
            ind = np.full(self.domain[name], -np.inf)
            ind[cell] = 0.0
            cl = next(c for c in pots.cliques if name in c)
            pots = mbi.CliqueVector(self.domain, pots.cliques,
                                    {**pots.tables, cl: pots[cl] + mbi.Factor(self.domain.project((name,)),
                                                                            jnp.asarray(ind))})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            marg = marginal_oracles.message_passing_shafer_shenoy(pots, 1.0, self.jtree)
        out = {}
        for col in self.order:
            attrs = self.parents[col] + (col,)
            joint = np.asarray(marg.project(attrs).transpose(attrs).datavector(flatten=False), dtype=np.float64)
            joint = np.nan_to_num(np.clip(joint, 0, None)).reshape(-1, self.domain[col])
            tot = joint.sum(axis=1, keepdims=True)
            cond = np.divide(joint, tot, out=np.full_like(joint, 1.0 / joint.shape[1]), where=tot > 0)
            out[col] = np.cumsum(cond, axis=1)
        return out

    def _flat_parents(self, cells: np.ndarray, col: str) -> np.ndarray:
        ps, index = self.parents[col], {c: i for i, c in enumerate(self.names)}
        if not ps:
            return np.zeros(cells.shape[0], dtype=np.int64)
        return np.ravel_multi_index(tuple(cells[:, index[p]] for p in ps), tuple(self.domain[p] for p in ps))

    def log_prob(self, cells: np.ndarray) -> np.ndarray:
        """log P(row) in nats of rows of cells (n, d) in `names` order: the chain rule along the
        sampling order, each column's probability given its parents' cells (exact for the model)."""
        tables = self._tables(())
        out = np.zeros(cells.shape[0])
        for j, col in enumerate(self.names):
            cdf = tables[col][self._flat_parents(cells, col)]
            c = cells[:, j]
            lo = np.where(c > 0, cdf[np.arange(len(c)), np.maximum(c - 1, 0)], 0.0)
            out += np.log(np.maximum(cdf[np.arange(len(c)), c] - lo, 1e-300) / cdf[:, -1])
        return out

    def sample(self, u: np.ndarray, evidence: tuple[tuple[str, int], ...] = ()) -> np.ndarray:
        """Cells (n, d) in `names` order from uniforms u (n, d), ancestrally along the junction tree."""
        tables = self._tables(tuple(sorted(evidence)))
        n = u.shape[0]
        out = np.zeros((n, len(self.names)), dtype=np.int64)
        index = {c: i for i, c in enumerate(self.names)}
        for col in self.order:
            cdf = tables[col][self._flat_parents(out, col)]
            j = index[col]
            out[:, j] = np.minimum((cdf < u[:, j:j + 1] * cdf[:, -1:]).sum(axis=1), self.domain[col] - 1)
        return out
