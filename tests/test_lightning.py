"""uncertlr.lightning.ModulatorCallback with a real Lightning Trainer on CPU: automatic and manual
optimization give exactly the steps of a hand-written loop; fit, checkpoint and resume continue exactly."""

from __future__ import annotations

import warnings

import pytest
import torch

L = pytest.importorskip("lightning")

from uncertlr.lightning import ModulatorCallback  # noqa: E402
from uncertlr.modulation import GradSigmaRatio, Ratio  # noqa: E402
from uncertlr.torch import Modulator, batch_entropy, bayesian  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")

RULE = Ratio(kappa=-0.5, warmup=0)


def _data(n=96):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    return torch.utils.data.TensorDataset(x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long())


def _loader():
    return torch.utils.data.DataLoader(_data(), batch_size=16, shuffle=False)


class BNNModule(L.LightningModule):
    def __init__(self, manual: bool = False):
        super().__init__()
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
        self.bnn = bayesian(net, num_data=96, kl_weight=0.1)
        self.automatic_optimization = not manual

    def training_step(self, batch, batch_idx):
        x, y = batch
        terms = self.bnn.elbo(x, y)
        self.log("train/entropy", batch_entropy(terms.outputs))
        if self.automatic_optimization:
            return terms.loss
        opt = self.optimizers()
        opt.zero_grad()
        self.manual_backward(terms.loss)
        opt.step()
        return None

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=3e-2)


class SeededBNNModule(BNNModule):
    """Weight noise seeded by the step, so a run's steps do not depend on where it was restarted
    (Lightning checkpoints no RNG state; what the callback must carry over is the modulator's)."""

    def on_train_batch_start(self, batch, batch_idx):
        torch.manual_seed(1000 + self.trainer.global_step)


def _trainer(callbacks, epochs=2, **kw):
    return L.Trainer(
        max_epochs=epochs,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
        **kw,
    )


def _hand_loop(epochs=2, rule=RULE, sigma=False):
    """The same training written by hand: plain loop, Modulator.observe before opt.step()."""
    module = BNNModule()
    torch.manual_seed(0)  # Lightning seeds nothing here; the weight noise continues from the same state
    opt = module.configure_optimizers()
    mod = Modulator(rule, sigma=module.bnn if sigma else None).attach(opt)
    for _ in range(epochs):
        for x, y in _loader():
            opt.zero_grad()
            terms = module.bnn.elbo(x, y)
            terms.loss.backward()
            mod.observe(batch_entropy(terms.outputs))
            opt.step()
    return module, mod


def _fit(callback, manual=False, epochs=2, **kw):
    module = BNNModule(manual=manual)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _trainer([callback], epochs=epochs, **kw).fit(module, _loader())
    return module


@pytest.mark.parametrize("manual", [False, True], ids=["automatic", "manual"])
def test_steps_equal_a_hand_written_loop(manual):
    ref_module, ref_mod = _hand_loop()
    callback = ModulatorCallback(RULE, monitor="train/entropy")
    module = _fit(callback, manual=manual)
    (mod,) = callback.modulators
    assert mod.num_steps == ref_mod.num_steps == 12
    # the signal of every step is the one logged in that step (not the previous one), and it drove that step
    assert [r["signal"] for r in mod.history] == pytest.approx(
        [r["signal"] for r in ref_mod.history], abs=1e-6
    )
    assert [r["scale"] for r in mod.history] == pytest.approx([r["scale"] for r in ref_mod.history], abs=1e-6)
    assert len({round(r["scale"], 6) for r in mod.history}) > 3  # the factor really varied
    torch.testing.assert_close(module.bnn.posterior.loc, ref_module.bnn.posterior.loc, atol=1e-5, rtol=0)
    # the base LR is back in the optimizer after every step
    assert callback.modulators[0]._optimizer is None  # detached at the end of fit


def test_per_parameter_rule_with_the_modules_bnn():
    ref_module, ref_mod = _hand_loop(rule=GradSigmaRatio(warmup=0), sigma=True)
    module = BNNModule()
    callback = ModulatorCallback(GradSigmaRatio(warmup=0), sigma=module.bnn)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _trainer([callback]).fit(module, _loader())
    (mod,) = callback.modulators
    assert mod.num_steps == 12 and mod.history[-1]["scale_min"] < mod.history[-1]["scale_max"]
    torch.testing.assert_close(module.bnn.posterior.loc, ref_module.bnn.posterior.loc, atol=1e-5, rtol=0)


def test_checkpoint_and_resume_continue_exactly(tmp_path):
    straight = ModulatorCallback(RULE, monitor="train/entropy")
    whole = SeededBNNModule()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _trainer([straight], epochs=3).fit(whole, _loader())

    first = ModulatorCallback(RULE, monitor="train/entropy")
    module = SeededBNNModule()
    torch.manual_seed(0)
    trainer = _trainer([first], epochs=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, _loader())
    ckpt = tmp_path / "epoch1.ckpt"
    trainer.save_checkpoint(ckpt)
    saved = torch.load(ckpt, weights_only=True)  # plain tensors and data: loads without pickle
    assert any("ModulatorCallback" in k for k in saved["callbacks"])

    resumed = ModulatorCallback(RULE, monitor="train/entropy")
    module2 = SeededBNNModule()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _trainer([resumed], epochs=3).fit(module2, _loader(), ckpt_path=ckpt)
    (a,), (b,) = straight.modulators, resumed.modulators
    assert b.num_steps == a.num_steps == 18
    assert b.history == a.history  # bit-identical: signals, factors, learning rates
    torch.testing.assert_close(module2.bnn.posterior.loc, whole.bnn.posterior.loc, atol=0, rtol=0)
    # without the modulator's state the resumed run would restart its EMA: the factors would differ
    fresh = ModulatorCallback(RULE, monitor="train/entropy")
    fresh.load_state_dict = lambda state: None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _trainer([fresh], epochs=3).fit(SeededBNNModule(), _loader(), ckpt_path=ckpt)
    assert [r["scale"] for r in fresh.modulators[0].history] != [r["scale"] for r in a.history[6:]]


def test_scale_is_logged():
    callback = ModulatorCallback(RULE, monitor="train/entropy")
    module = BNNModule()
    trainer = _trainer([callback], epochs=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, _loader())
    assert float(trainer.callback_metrics["modulator/scale"]) == pytest.approx(
        callback.modulators[0].history[-1]["scale"]
    )


def test_refusals():
    with pytest.raises(ValueError, match="monitor="):
        ModulatorCallback(RULE)
    callback = ModulatorCallback(RULE, monitor="train/missing")
    with pytest.raises(KeyError, match="train/missing.*train/entropy"):
        _fit(callback, epochs=1)
    # the failed fit left no modulated learning rate behind
    assert callback.modulators[0]._optimizer is None

    class LBFGSModule(BNNModule):
        def configure_optimizers(self):
            return torch.optim.LBFGS(self.parameters())

    with pytest.raises(TypeError, match="LBFGS"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _trainer([ModulatorCallback(RULE, monitor="train/entropy")]).fit(LBFGSModule(), _loader())
    with pytest.raises(IndexError, match="1 optimizer"):
        _fit(ModulatorCallback(RULE, monitor="train/entropy", optimizers=[1]), epochs=1)
