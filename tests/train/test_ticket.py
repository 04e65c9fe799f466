import pytest
import torch

from prunekit.core.mask import get_mask, weight_of
from prunekit.metrics.accuracy import accuracy
from prunekit.models.reference import MLP
from prunekit.train import TicketSearch, find_ticket_, fit, steps_per_run
from prunekit.train.ticket import parse_rewind


def _model():
    torch.manual_seed(0)
    return MLP(hidden=(64, 32))


def _train_fn(data):
    def train(model, on_step):
        losses = fit(model, data, epochs=1, lr=0.1, batch_size=64, progress=False, on_step=on_step)
        return {"final_loss": losses[-1]}
    return train


def test_imp_rewinds_to_init_and_reaches_the_target(digits_train):
    model = _model()
    init = weight_of(model.body[2]).detach().clone()
    ticket = find_ticket_(model, _train_fn(digits_train), rounds=3, rate=0.5)
    assert ticket.sparsity == pytest.approx(1 - 0.5 ** 3, abs=1e-3)
    assert ticket.rewind_step == 0 and len(ticket.rounds) == 3
    assert [r["sparsity"] for r in ticket.rounds] == pytest.approx([0.5, 0.75, 0.875], abs=1e-3)
    assert all("final_loss" in r for r in ticket.rounds)
    # survivors are back at their initial values; the masks are on the model
    mask = get_mask(model.body[2])
    assert torch.equal(ticket.masks["body.2"], mask)
    assert torch.equal(weight_of(model.body[2]).detach()[mask], init[mask])
    # the mask was chosen by trained magnitude, not initial magnitude
    init_mask = init.abs() >= init.abs().flatten().kthvalue(int(0.875 * init.numel())).values
    assert not torch.equal(mask, init_mask)


def test_early_rewind_captures_the_weights_at_that_step(digits_train):
    steps = steps_per_run(digits_train, batch_size=64)
    model = _model()
    captured = {}

    def train(m, on_step):
        def hook(step):
            on_step(step)
            if step == 4:
                captured["w"] = weight_of(m.body[2]).detach().clone()
        fit(m, digits_train, epochs=1, lr=0.1, batch_size=64, progress=False, on_step=hook)

    ticket = find_ticket_(model, train, rounds=1, rate=0.5, rewind="early:0.2", steps=steps)
    assert ticket.rewind_step == round(0.2 * steps) == 4
    mask = get_mask(model.body[2])
    assert torch.equal(weight_of(model.body[2]).detach()[mask], captured["w"][mask])


def test_controls_keep_the_sparsity(digits_train):
    base = find_ticket_(_model(), _train_fn(digits_train), rounds=1, rate=0.6)
    model = _model()
    reinit = find_ticket_(model, _train_fn(digits_train), rounds=1, rate=0.6, control="reinit", seed=3)
    assert torch.equal(reinit.masks["body.2"], base.masks["body.2"])
    assert not torch.allclose(weight_of(model.body[2]), weight_of(_model().body[2]))
    rnd = find_ticket_(_model(), _train_fn(digits_train), rounds=1, rate=0.6, control="random_mask")
    assert rnd.sparsity == pytest.approx(base.sparsity, abs=1e-3)
    for name in ("body.0", "body.2"):
        assert int(rnd.masks[name].sum()) == int(base.masks[name].sum())
        assert not torch.equal(rnd.masks[name], base.masks[name])


def test_bad_input(digits_train):
    model = _model()
    with pytest.raises(ValueError, match="past the training length"):
        find_ticket_(model, _train_fn(digits_train), rewind=500, steps=21)
    with pytest.raises(ValueError, match="needs steps="):
        find_ticket_(model, _train_fn(digits_train), rewind="early:0.02")
    with pytest.raises(ValueError, match="rate must be in"):
        find_ticket_(model, _train_fn(digits_train), rate=1.5)
    with pytest.raises(ValueError, match="control must be"):
        find_ticket_(model, _train_fn(digits_train), control="shuffle")
    assert parse_rewind("early:0.05", 200) == 10
    # a rewind step the training never reaches: clear error, model put back
    before = weight_of(model.body[0]).detach().clone()
    with pytest.raises(ValueError, match="never reached rewind step 999"):
        find_ticket_(model, _train_fn(digits_train), rounds=1, rewind=999)
    assert torch.equal(before, weight_of(model.body[0])) and get_mask(model.body[0]) is None


def test_search_checkpoint_and_resume_matches_an_uninterrupted_run(digits_train, digits_test):
    full = _model()
    ticket = find_ticket_(full, _train_fn(digits_train), rounds=2, rate=0.5, rewind=3, steps=21)

    first = _model()
    search = TicketSearch(first, _train_fn(digits_train), rounds=2, rate=0.5, rewind=3, steps=21)
    search.run_round()
    state = search.state_dict()
    assert len(state["mask_history"]) == 1
    resumed_model = _model()
    resumed = TicketSearch(resumed_model, _train_fn(digits_train), rounds=2, rate=0.5, rewind=3, steps=21)
    resumed.load_state_dict(state)
    t2 = resumed.run()
    for name in ticket.masks:
        assert torch.equal(t2.masks[name], ticket.masks[name])
    assert accuracy(resumed_model, digits_test) == accuracy(full, digits_test)
    assert len(resumed.mask_history) == 2


def test_a_one_argument_train_fn_works_when_rewinding_to_init(digits_train):
    steps = []

    def train(model):  # the first thing a user writes
        fit(model, digits_train, epochs=0.2, batch_size=64, lr=0.1, progress=False)
        steps.append(1)

    ticket = find_ticket_(_model(), train, rounds=2, rate=0.5)
    assert len(steps) == 2 and ticket.sparsity == pytest.approx(0.75, abs=0.01)
    assert "2 rounds, sparsity 0.75" in str(ticket) and ticket.to_dict()["rewind_step"] == 0


def test_a_one_argument_train_fn_with_step_rewinding_fails_at_once_with_the_signature(digits_train):
    model = _model()
    before = weight_of(model.body[0]).detach().clone()
    with pytest.raises(TypeError, match=r"train_fn must be a train_fn\(model, on_step\)"):
        find_ticket_(model, lambda m: None, rewind=3, steps=21)
    with pytest.raises(TypeError, match="takes no model"):
        find_ticket_(model, lambda: None)
    assert torch.equal(before, weight_of(model.body[0]))


def test_find_ticket_old_name_warns(digits_train):
    from prunekit.core.deprecation import PrunekitDeprecationWarning
    from prunekit.train import find_ticket

    with pytest.warns(PrunekitDeprecationWarning, match="find_ticket is deprecated, use find_ticket_"):
        find_ticket(_model(), _train_fn(digits_train), rounds=1, rate=0.5)
