"""algos/core/rollouts.py: batched imagined rollouts (MUSBO step 5, BREMEN, MOPO): shapes,
which member predicts each step, clipped actions for the model and reward but stored
unclipped, masks after termination, the model-side reward, labels (eq. 12 hook) and clipping."""
import pytest
import torch

import envs
from algos.core.ensemble import DynamicsEnsemble, Prediction
from algos.core.rollouts import imagine

N, T = 16, 12


class ShiftModel:
    """Member m moves every state by (m + 1) * 0.01 plus 0.001 * the clipped action sum."""

    def __init__(self, members=4):
        self.members = members

    def predict(self, obs, act, member=None):
        step = 0.001 * act.sum(-1, keepdim=True)
        if isinstance(member, int):
            return Prediction((obs + (member + 1) * 0.01 + step)[None])
        return Prediction(obs + (member[:, None] + 1) * 0.01 + step)


def member_of(out):
    """The member that made each step, read back from the fake model's shift."""
    shift = out["next_obs"][..., 0] - out["obs"][..., 0] - 0.001 * out["act"].clamp(-1, 1).sum(-1)
    return torch.round(shift / 0.01).long() - 1


def policy(scale=0.5):
    return lambda obs, g: scale * torch.randn(obs.shape[0], 6, generator=g)


def start(obs_dim=17, seed=0):
    return torch.randn(N, obs_dim, generator=torch.Generator().manual_seed(seed)) * 0.1


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_shapes_and_per_step_member_shared_by_the_batch():
    out = imagine(ShiftModel(), policy(), start(), T, "halfcheetah", gen(), member_choice="per_step")
    for key, shape in {"obs": (T, N, 17), "act": (T, N, 6), "rew": (T, N), "next_obs": (T, N, 17),
                       "terminated": (T, N), "alive": (T, N), "member": (T, N)}.items():
        assert out[key].shape == shape, key
    assert out["terminated"].dtype == torch.bool and out["alive"].dtype == torch.float32
    members = member_of(out)
    assert (members == members[:, :1]).all()                   # one member for all rollouts at a step
    assert len(members[:, 0].unique()) > 1                     # drawn afresh at each step
    torch.testing.assert_close(members, out["member"])
    torch.testing.assert_close(out["obs"][1:], out["next_obs"][:-1])   # states chain


def test_per_rollout_and_per_transition_members():
    out = imagine(ShiftModel(), policy(), start(), T, "halfcheetah", gen(), member_choice="per_rollout")
    members = member_of(out)
    assert (members == members[:1]).all()                      # each rollout keeps its member
    assert len(members[0].unique()) > 1
    out = imagine(ShiftModel(), policy(), start(), T, "halfcheetah", gen(),
                  member_choice="per_transition", members=[1, 3])   # e.g. MOPO's elites
    members = member_of(out)
    assert set(members.unique().tolist()) == {1, 3}
    assert (members != members[:, :1]).any(dim=1).all()        # differ across the batch
    with pytest.raises(ValueError):
        imagine(ShiftModel(), policy(), start(), T, "halfcheetah", gen(), member_choice="per_member")


def test_reward_is_model_reward_of_clipped_tuples_and_act_unclipped():
    out = imagine(ShiftModel(), policy(scale=3.0), start(), T, "halfcheetah", gen())
    assert out["act"].abs().max() > 1.0                        # stored as sampled
    clipped = out["act"].clamp(-1, 1)
    expected = envs.model_reward("halfcheetah", out["obs"], clipped, out["next_obs"])
    torch.testing.assert_close(out["rew"], expected)
    unclipped = envs.model_reward("halfcheetah", out["obs"], out["act"], out["next_obs"])
    assert not torch.allclose(out["rew"], unclipped)


def test_termination_freezes_and_masks():
    """Rollout k terminates when its x coordinate passes 1 (fake termination): the step that
    terminates is real, every later step is masked and frozen."""
    s0 = torch.zeros(N, 3)
    s0[:, 0] = torch.linspace(0.5, 1.3, N)
    reward_fn = lambda s, a, s2: torch.ones(s.shape[0])
    term_fn = lambda s, a, s2: s2[:, 0] > 1.0
    out = imagine(ShiftModel(), lambda obs, g: torch.zeros(obs.shape[0], 2), s0, T, "halfcheetah", gen(),
                  reward_fn=reward_fn, termination_fn=term_fn)
    term, alive = out["terminated"], out["alive"]
    assert (term.sum(0) <= 1).all()                            # terminates at most once
    ended = term.any(0)
    assert ended.any() and (~ended).any()
    t_end = term.float().argmax(0)
    for k in range(N):
        steps = torch.arange(T)
        want = (steps <= t_end[k]).float() if ended[k] else torch.ones(T)
        torch.testing.assert_close(alive[:, k], want)
        if ended[k]:
            after = steps > t_end[k]
            terminal = out["next_obs"][t_end[k], k]
            assert (out["next_obs"][after, k] == terminal).all() and (out["obs"][after, k] == terminal).all()
    torch.testing.assert_close(out["rew"], alive)              # masked reward


def test_hopper_termination_and_reward_through_envs():
    """The default reward/termination are the envs' model-side functions of the stored tuples."""
    torch.manual_seed(0)
    model = DynamicsEnsemble(11, 3, members=3, hidden=[16])
    model.input_norm.fit(torch.randn(50, 14))
    model.target_norm.fit(torch.randn(50, 11) * 0.3)
    pol = lambda obs, g: torch.randn(obs.shape[0], 3, generator=g)
    s0 = torch.zeros(N, 11)
    s0[:, 0] = 1.25
    out = imagine(model, pol, s0, T, "hopper", gen())
    clipped = out["act"].clamp(-1, 1)
    term = envs.model_termination("hopper", out["obs"], clipped, out["next_obs"])
    torch.testing.assert_close(out["terminated"], term & out["alive"].bool())
    reward = envs.model_reward("hopper", out["obs"], clipped, out["next_obs"])
    torch.testing.assert_close(out["rew"], reward * out["alive"])
    assert out["terminated"].any()


def test_labels_clip_obs_and_reproducibility():
    seen = []

    def label_fn(obs, act):
        seen.append(act.abs().max().item())
        return obs[:, 0] + act.sum(-1)  # a function of the pair: catches labels put on the wrong step

    low, high = -torch.ones(17) * 0.05, torch.ones(17) * 0.05
    out = imagine(ShiftModel(), policy(scale=3.0), start(), T, "halfcheetah", gen(), label_fn=label_fn,
                  clip_obs=(low, high))
    assert out["labels"].shape == (T, N)
    torch.testing.assert_close(out["labels"], out["obs"][..., 0] + out["act"].clamp(-1, 1).sum(-1))
    assert max(seen) <= 1.0                                    # labels see the clipped action
    assert out["next_obs"].max() <= 0.05 and out["next_obs"].min() >= -0.05
    again = imagine(ShiftModel(), policy(scale=3.0), start(), T, "halfcheetah", gen(), label_fn=label_fn,
                    clip_obs=(low.numpy(), high.numpy()))
    for key in out:
        torch.testing.assert_close(out[key], again[key])


# ----- the clamp of imagined states (trpo.clip_predictions) ---------------------------------

class FallingHopper:
    """Every member moves each state halfway toward a recorded terminal state: a model of a
    fall the data has seen."""
    members = 2

    def __init__(self, terminal_state):
        self.target = torch.as_tensor(terminal_state)

    def predict(self, obs, act, member=None):
        return Prediction((obs + 0.5 * (self.target - obs))[None])


@pytest.mark.parametrize("kind", ["abs_1e5", "data_range", "none"])
def test_an_imagined_fall_terminates_under_every_clamp(kind):
    """Real Hopper data: its states (obs) are all healthy, terminal states appear only as next
    states. The clamp must keep them reachable, or an imagined Hopper could never fall (the
    bug of a box made from obs alone, which clamped z above 0.7 and made TRPO exploit it)."""
    import numpy as np
    from algos.core.model_trpo import prediction_box
    from envs.collector import collect

    data = collect("hopper", 2000, None, seed=0)
    assert data["terminated"].any() and not envs.model_termination("hopper", data["obs"], data["act"],
                                                                    data["obs"]).any()
    box = prediction_box(kind, data)
    if kind == "data_range":  # every recorded state, terminal next states included, lies inside
        for states in (data["obs"], data["next_obs"]):
            assert (states >= box[0]).all() and (states <= box[1]).all()
    elif kind == "abs_1e5":
        np.testing.assert_array_equal(box[1], np.full(11, 1e5, np.float32))
        np.testing.assert_array_equal(box[0], -box[1])
    else:
        assert box is None
    start = torch.as_tensor(data["obs"][data["episode_start"]][:8])
    out = imagine(FallingHopper(data["next_obs"][data["terminated"]][0]), lambda s, g: torch.zeros(len(s), 3), start, 30, "hopper", None,
                  clip_obs=box)
    assert out["terminated"].any(0).all(), "every imagined fall must end by the termination function"


def test_prediction_box_rejects_an_unknown_kind():
    import numpy as np
    from algos.core.model_trpo import prediction_box
    data = {"obs": np.zeros((3, 2), np.float32), "next_obs": np.zeros((3, 2), np.float32)}
    with pytest.raises(ValueError, match="abs_1e5"):
        prediction_box("obs_range", data)
