"""uncertlr.jax.svi as a loop users can own: resume, checkpoints, pickling, validation, errors, compiles."""

from __future__ import annotations

import pickle

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from uncertlr import metrics
from uncertlr.jax import (
    EarlyStopping,
    SVIResult,
    bayesian,
    load_checkpoint,
    save_checkpoint,
    scale_by_uncertainty,
    svi,
    svi_step,
)
from uncertlr.modulation import Ratio
from uncertlr_models.flax_mlp import FlaxMLP

N = 48
RNG = np.random.default_rng(0)
X = RNG.normal(size=(N, 4)).astype(np.float32)
Y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(np.int32)
NET = FlaxMLP(hidden=(8,), out_features=2, activation="tanh")


def _bnn():
    return bayesian(NET, params=NET.init(jax.random.key(0), X[:1]), num_data=N, init_scale=0.05)


def _modulated(lr=0.05):
    """Adam with the G1 modulator: its rule state must survive a resume too."""
    return optax.chain(
        optax.scale_by_adam(), scale_by_uncertainty(Ratio(warmup=2)), optax.scale_by_learning_rate(lr)
    )


@pytest.fixture(scope="module")
def run():
    """One BNN and one optimizer object for the module: svi() keeps their compiled loop."""
    bnn, opt = _bnn(), _modulated()
    kw = {"optimizer": opt, "batch_size": 12, "signal": "entropy", "log_every": 5, "progress": False}
    full = svi(bnn, X, Y, num_steps=23, **kw)
    return bnn, kw, full


def _same(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_resume_is_bit_identical(run):
    """10 + 13 steps (mid-epoch, mid-chunk) equal 23 uninterrupted ones: parameters, Adam's moments,
    the modulator's rule state, the data order and the weight noise."""
    bnn, kw, full = run
    first = svi(bnn, X, Y, num_steps=10, **kw)
    rest = svi(bnn, X, Y, num_steps=13, state=first.state, **kw)
    _same(rest.state, full.state)
    assert [h["loss"] for h in first.history + rest.history] == [h["loss"] for h in full.history]
    assert [h["signal"] for h in rest.history] == [h["signal"] for h in full.history[10:]]
    assert [h["step"] for h in rest.history] == list(range(10, 23))
    assert [h["epoch"] for h in full.history[:9]] == [0, 0, 0, 0, 1, 1, 1, 1, 2]
    assert float(full.state.opt_state[1].rule_state.count) == 23  # the modulator saw every step


def test_checkpoint_in_a_fresh_process_resumes_bit_identically(run, tmp_path):
    """save_checkpoint, then a new BNN and a new optimizer object (as after a restart): same result."""
    bnn, kw, full = run
    first = svi(bnn, X, Y, num_steps=10, **kw)
    path = save_checkpoint(tmp_path / "run.npz", first.state, history=first.history)
    bnn2 = _bnn()
    kw2 = {**kw, "optimizer": _modulated()}
    ckpt = load_checkpoint(path, like=svi_step(bnn2, kw2["optimizer"], signal="entropy").init())
    np.testing.assert_equal(ckpt.history, first.history)  # NaN == NaN here
    rest = svi(bnn2, X, Y, num_steps=13, state=ckpt.state, **kw2)
    _same(rest.state, full.state)


def test_the_state_round_trips_through_orbax(run, tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    bnn, kw, full = run
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(tmp_path / "orbax", full.state)
    ckptr.wait_until_finished()
    restored = ckptr.restore(tmp_path / "orbax", target=full.state)
    _same(restored, full.state)
    more = svi(bnn, X, Y, num_steps=3, state=restored, **kw)
    assert int(more.state.step) == 26


def test_damaged_and_foreign_checkpoints_are_refused(run, tmp_path):
    bnn, kw, full = run
    path = save_checkpoint(tmp_path / "ok.npz", full.state)
    (tmp_path / "cut.npz").write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match="not a readable"):
        load_checkpoint(tmp_path / "cut.npz", like=full.state)
    other = svi_step(bnn, optax.sgd(0.1)).init()
    with pytest.raises(ValueError, match="another model or optimizer|does not fit"):
        load_checkpoint(path, like=other)
    np.savez(tmp_path / "pickled.npz", header=np.array([{"evil": 1}], dtype=object))
    with pytest.raises(ValueError, match="not a readable"):
        load_checkpoint(tmp_path / "pickled.npz", like=full.state)
    before = path.read_bytes()
    with pytest.raises(TypeError, match="SVIState"):
        save_checkpoint(path, {"not": "a state"})
    assert path.read_bytes() == before  # a failed save leaves the previous checkpoint intact


def test_the_result_pickles(run):
    bnn, kw, full = run
    back = pickle.loads(pickle.dumps(full))
    assert isinstance(back, SVIResult)
    np.testing.assert_equal(back.history, full.history)  # NaN == NaN here
    _same(back.state, full.state)
    np.testing.assert_array_equal(
        np.asarray(back.predict(X, num_samples=3, rng_key=1)),
        np.asarray(full.predict(X, num_samples=3, rng_key=1)),
    )
    more = svi(back.bnn, X, Y, num_steps=2, state=back.state, **kw)
    assert int(more.state.step) == 25
    # AutoNormal's guide holds closures: it is rebuilt on loading (no steps: nothing to compile here)
    auto = svi(_bnn(), X, Y, optimizer=optax.adam(0.05), num_steps=0, guide="auto_normal", progress=False)
    back = pickle.loads(pickle.dumps(auto))
    assert back.guide_kind == "auto_normal" and back.guide is not None
    np.testing.assert_array_equal(
        np.asarray(back.predict(X, num_samples=3, rng_key=1)),
        np.asarray(auto.predict(X, num_samples=3, rng_key=1)),
    )


def test_a_second_call_compiles_nothing(run):
    compiles = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda name, secs, **kw: compiles.append(name) if name.endswith("backend_compile_duration") else None
    )
    bnn, kw, _ = run
    svi(bnn, X, Y, num_steps=17, **kw)  # other step counts, same shapes
    assert compiles == []


def test_validation_and_early_stopping_restore_the_best_state(run):
    bnn, kw, _ = run
    scores = iter([5.0, 4.0, 3.0, 3.5, 3.2, 3.9, 1.0])  # best at the third validation, then 3 worse

    def validation(fit):
        assert isinstance(fit, SVIResult)
        seen.append(int(fit.state.step))
        return next(scores)

    seen: list[int] = []
    stop = EarlyStopping(patience=3, restore_best=True)
    fit = svi(bnn, X, Y, num_steps=100, validation=validation, early_stopping=stop, **kw)
    assert seen == [4, 8, 12, 16, 20, 24]  # once per epoch of 4 steps, until stopped
    assert fit.stopped_early and (fit.best_step, fit.best_value) == (12, 3.0)
    assert len(fit.history) == 24 and [h.get("validation") for h in fit.history[3::4]][:3] == [5.0, 4.0, 3.0]
    assert int(fit.state.step) == 12
    ref = svi(bnn, X, Y, num_steps=12, **kw)
    _same(fit.state, ref.state)
    # a real validation function: held-out NLL of the posterior predictive
    nll = svi(
        bnn, X, Y, num_steps=8, validate_every=2, **kw,
        validation=lambda f: float(metrics.nll(f.predict(X, num_samples=4, rng_key=0), Y)),
    )  # fmt: skip
    assert [h["step"] for h in nll.history if "validation" in h] == [1, 3, 5, 7]


def test_a_failing_run_keeps_everything_up_to_the_last_good_step(run):
    bnn, kw, _ = run
    sgd = {"optimizer": optax.sgd(10.0), "batch_size": 12, "log_every": 5, "progress": False}
    with pytest.raises(FloatingPointError, match="loss became") as info:
        svi(bnn, X, Y, num_steps=50, **sgd)
    partial = info.value.result
    bad = int(partial.state.step)
    assert bad > 0 and len(partial.history) == bad and all(np.isfinite(h["loss"]) for h in partial.history)
    assert all(bool(jnp.isfinite(v).all()) for v in jax.tree.leaves(partial.params))
    assert f"after {bad} steps" in str(info.value) and bad > 5  # past the first chunk of 5 steps
    _same(partial.state, svi(bnn, X, Y, num_steps=bad, **sgd).state)

    def interrupt(fit):  # an exception from the user's own code (Ctrl-C here) carries the fit too
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt) as info:
        svi(bnn, X, Y, num_steps=50, validation=interrupt, **kw)
    assert int(info.value.result.state.step) == 4 and len(info.value.result.history) == 4


def test_bad_loop_arguments_are_named(run):
    bnn, kw, fit = run
    opt = kw["optimizer"]
    cases = [
        ({"state": fit.state, "init_params": fit.params}, "not both"),
        ({"early_stopping": EarlyStopping()}, "needs validation"),
        ({"devices": []}, "non-empty list of jax devices"),
        ({"devices": [jax.devices()[0]] * 2}, "data_parallel=True"),
        ({"mesh": jax.make_mesh((1,), ("batch",))}, "axis named 'data'"),
        ({"log_every": 0}, "log_every"),
        ({"validate_every": 0, "validation": lambda f: 0.0}, "validate_every"),
    ]
    for kwargs, match in cases:
        with pytest.raises(ValueError, match=match):
            svi(bnn, X, Y, num_steps=1, **{**kw, **kwargs})
    with pytest.raises(ValueError, match="patience"):
        EarlyStopping(patience=0)
    with pytest.raises(TypeError, match="SVIState"):
        svi(bnn, X, Y, num_steps=1, state=fit.params, **kw)
    with pytest.raises(TypeError, match="optax"):
        svi(bnn, X, Y, num_steps=1, **{**kw, "optimizer": "adam"})
    # the same jax arrays are checked once; other arrays are checked again
    xj, yj = jnp.asarray(X), jnp.asarray(Y)
    svi(bnn, xj, yj, num_steps=1, **kw)
    with pytest.raises(ValueError, match="NaN or inf"):
        svi(bnn, xj.at[0, 0].set(jnp.nan), yj, num_steps=1, **kw)
    with pytest.raises(ValueError, match="labels"):
        svi(bnn, xj, yj.at[0].set(7), num_steps=1, **kw)
    assert opt is kw["optimizer"]


@pytest.mark.parametrize("log_every", [3, 7])
def test_svi_takes_each_epochs_batches_from_its_own_permutation(log_every):
    """svi() equals a hand-written loop of ``svi_step`` over each epoch's permutation of the rows, whether
    a chunk stays inside one epoch (3 steps, 4 per epoch) or spans several (7): the order blocks the loop
    sends to the device hold each epoch's rows, wherever a block starts."""
    bnn, opt = _bnn(), optax.adam(0.05)
    fit = svi(bnn, X, Y, optimizer=opt, batch_size=12, num_steps=15, log_every=log_every, progress=False)
    step = svi_step(bnn, opt)
    state = step.init(rng_key=0)
    losses = []
    for t in range(15):
        epoch, i = divmod(t, N // 12)
        perm = np.random.default_rng([*np.asarray(state.order_key, np.uint32).tolist(), epoch]).permutation(N)
        rows = perm[i * 12 : (i + 1) * 12]
        state, info = step.update(state, X[rows], Y[rows])
        losses.append(float(info.loss))
    np.testing.assert_allclose([h["loss"] for h in fit.history], losses, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(fit.state.params), jax.tree.leaves(state.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
