"""The autoregressive family: exact tokenisation of the codec's features, a likelihood that
training lowers, exact conditioning that changes the other columns the way the data does, and
the early stopping that keeps its best weights. (Artifact, NFE, endpoint and Ray Train paths are
covered for every family by tests/test_family_contract.py.)"""
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from synth.config import RunConfig
from synth.engine.autoregressive import AutoregressiveConfig, AutoregressiveEngine
from synth.errors import ConfigError
from synth.table import TableCodec

ADULT = pq.read_table("synth/datasets/adult.parquet")


@pytest.fixture(scope="module")
def adult_codec():
    return TableCodec.fit([ADULT.slice(0, 8000)], schema=ADULT.schema)


def test_tokens_round_trip_categories_and_point_masses(adult_codec):
    engine = AutoregressiveEngine(AutoregressiveConfig(), adult_codec)
    rows = ADULT.slice(0, 2000)
    x = torch.from_numpy(adult_codec.encode(rows, np.random.default_rng(0)).astype(np.float32))
    tokens = engine.to_tokens(x)
    assert tokens.shape == (2000, len(engine.cards))
    assert (tokens >= 0).all() and (tokens < torch.tensor(engine.cards)).all()
    # dequantisation noise does not reach the tokens: point masses tokenise the same either way
    x_plain = torch.from_numpy(adult_codec.encode(rows).astype(np.float32))
    assert torch.equal(engine.to_tokens(x_plain), tokens)
    back = adult_codec.decode(engine.to_features(tokens, torch.full((2000, engine.n_numeric), 0.5)))
    for name in ("workclass", "education", "sex", "income", "native-country"):  # as stored: rare values as _RARE_
        want = adult_codec.by_name[name].standin(rows.column(name).to_pylist())
        assert back.column(name).to_pylist() == want, name
    for name in ("age", "education-num", "hours-per-week"):  # point masses come back exactly
        col = adult_codec.by_name[name]
        heavy = set(col.knots_x[col.heavy].tolist())
        got, want = np.asarray(back.column(name).to_pylist()), np.asarray(rows.column(name).to_pylist())
        on_mass = np.isin(want, list(heavy))
        assert on_mass.mean() > 0.95 and (got[on_mass] == want[on_mass]).all(), name
        # values seen fewer than 10 times are not stored (value protection, docs/protection.md): they come
        # back between the point masses around them, smoothed over a group of at least 10 rows
        masses = np.sort(np.concatenate([list(heavy), [col.min, col.max]]))
        i = np.searchsorted(masses, want[~on_mass])
        lower, upper = masses[np.maximum(i - 1, 0)], masses[np.minimum(i, len(masses) - 1)]
        assert ((got[~on_mass] >= lower) & (got[~on_mass] <= upper)).all(), name
    gain = np.asarray(rows.column("capital-gain").to_pylist())
    assert (np.asarray(back.column("capital-gain").to_pylist())[gain == 0] == 0).all()


def test_a_column_of_point_values_is_one_token_seen_in_context(adult_codec):
    """education-num (16 values, all point masses) is one token with a class per value, predicted
    from every column before it, so it follows education exactly; a fine bin sees every column
    before it too, not only its coarse bin."""
    from synth.engine.autoregressive import point_values

    engine = AutoregressiveEngine(AutoregressiveConfig(), adult_codec)
    index = {c.name: i for i, c in enumerate(adult_codec.columns)}
    edu = adult_codec.by_name["education-num"]
    assert point_values(edu, 32) and not point_values(adult_codec.by_name["capital-gain"], 32)
    j = engine.tokens.index((index["education-num"], "coarse"))
    assert engine.cards[j] == len(edu.knots_x) == 16 and (index["education-num"], "fine") not in engine.tokens
    fine = engine.tokens.index((index["capital-gain"], "fine"))
    assert engine.net.sees[:fine, fine].all() and not engine.net.sees[fine:, fine].any()
    rows = ADULT.slice(0, 500)
    tokens = engine.to_tokens(torch.from_numpy(adult_codec.encode(rows).astype(np.float32)))
    values = np.asarray(edu.knots_x)[tokens[:, j].numpy()]
    assert (values == np.asarray(rows.column("education-num").to_pylist())).all()


def test_array_columns_are_refused_by_name():
    from synth.datasets.arrays import digits_table

    codec = TableCodec.fit([digits_table().slice(0, 200)])
    with pytest.raises(ConfigError, match="column 'image' is array.*model.family array"):
        AutoregressiveEngine(AutoregressiveConfig(), codec)


def test_training_lowers_the_likelihood_and_conditions_are_exact(tmp_path):
    from synth.families import load_engine
    from synth.train.fit import fit

    cfg = RunConfig.parse({"output": str(tmp_path), "model": {"family": "autoregressive", "hidden": 64},
                           "train": {"steps": 300, "eval_every": 100, "batch_size": 256}})
    result = fit(cfg)
    history = load_engine(result.artifact_uri).manifest["history"]
    assert history[-1]["val_loss"] < history[0]["val_loss"] - 1.0
    engine = load_engine(result.artifact_uri)
    women = engine.sample(2000, {"sex": "Female"}, seed=1)
    men = engine.sample(2000, {"sex": "Male"}, seed=1)
    assert set(women.column("sex").to_pylist()) == {"Female"}
    rich = {t: np.mean([v == ">50K" for v in s.column("income").to_pylist()]) for t, s in (("f", women), ("m", men))}
    assert rich["m"] > rich["f"] + 0.1  # the data: about 31 % of men and 11 % of women earn >50K
    husbands = {t: np.mean([v == "Husband" for v in s.column("relationship").to_pylist()])
                for t, s in (("f", women), ("m", men))}
    assert husbands["f"] < 0.25 * husbands["m"]  # conditioning reaches the other columns (data: 0 vs 61 %)
    assert engine.sample(300, seed=5).equals(load_engine(result.artifact_uri).sample(300, seed=5))


def test_early_stopping_keeps_the_best_weights():
    from synth.train.loop import EarlyStopping

    net = torch.nn.Linear(2, 1)
    stop = EarlyStopping(2, net)
    assert not stop.should_stop({"step": 1, "val_loss": 1.0})
    best = net.weight.detach().clone()
    with torch.no_grad():
        net.weight.add_(1.0)
    assert not stop.should_stop({"step": 2, "val_loss": 1.5})
    assert stop.should_stop({"step": 3, "val_loss": 1.2})
    assert stop.restore() == {"best_step": 1, "best_val_loss": 1.0}
    assert torch.equal(net.weight, best)


def test_eval_every_epoch_is_one_pass_over_the_training_rows():
    from synth.config import RunConfig
    from synth.train.config import TrainConfig, resolve_eval_every

    assert RunConfig.parse({}).train.eval_every == "epoch"  # the default family's cadence
    assert resolve_eval_every(TrainConfig(eval_every="epoch", batch_size=512), 3083).eval_every == 7
    assert resolve_eval_every(TrainConfig(eval_every="epoch", batch_size=512), 100).eval_every == 1
    assert resolve_eval_every(TrainConfig(eval_every=200), 10).eval_every == 200
    with pytest.raises(ValueError):
        TrainConfig(eval_every=0)
