"""Joint evaluation (evaluate_many): several models decoded in one rollout give each model the
transcripts and accuracies it gets alone; the Env holds episodes as long as the task's bound."""
import pytest
import torch

from conftest import OracleModel
from ssm_tools import evaluate as E
from ssm_tools.models import build_model
from ssm_tools.tasks import get_task
from ssm_tools.tasks.base import expected_stream
from ssm_tools.vocab import VOCAB_SIZE

SIZES = {"mamba": dict(d_model=16, n_layers=2, d_state=4), "lstm": dict(d_model=24, n_layers=1),
         "gru": dict(d_model=24, n_layers=1), "pythia": dict(d_model=16, n_layers=1, n_heads=2)}


def fresh(name, seed):
    """A fresh random model whose logits are scaled up so that its greedy tokens vary from step to step
    (an untrained model at its initial scale repeats one token)."""
    torch.manual_seed(seed)
    model = build_model(name, vocab_size=VOCAB_SIZE, **SIZES[name]).eval()
    with torch.no_grad():
        model.norm_f.weight.mul_(30.0)
    return model


def episodes(transcript, rows):
    return [transcript.episode(i) for i in rows]


def test_joint_rollout_gives_each_model_its_own_transcripts():
    task = get_task("addition")
    models = [fresh("mamba", 0), fresh("mamba", 1), fresh("lstm", 2), fresh("gru", 3)]
    n, size = 5, 4
    instances = E.sample_instances(task, size, n)
    joint = E.rollout_many(models, task, size, instances)
    assert joint.tokens.shape[0] == n * len(models)
    for j, model in enumerate(models):
        alone = E.rollout_many([model], task, size, instances)
        assert episodes(joint, range(j * n, (j + 1) * n)) == episodes(alone, range(n)), j
    # The models decode differently (else the check above could not tell their rows apart).
    assert len({tuple(map(tuple, (e[0] for e in episodes(joint, range(j * n, (j + 1) * n)))))
                for j in range(len(models))}) == len(models)
    assert int(joint.lengths.min()) > len(task.prompt(instances[0]))  # the models generated tokens


def test_evaluate_many_equals_evaluate_per_model():
    task = get_task("addition")
    models = [fresh("mamba", 4), fresh("lstm", 5), fresh("mamba", 6)]
    sizes, n = [2, 5], 4
    assert E.evaluate_many(models, task, sizes, n) == [E.evaluate(m, task, sizes, n) for m in models]


def test_joint_evaluation_grades_each_model_on_its_own_episodes():
    """The oracle scores 1.0, the oracle with the answers of episodes 2..5 corrupted 2/6, a random
    model 0, in one joint rollout, as each does alone."""
    task = get_task("addition")
    n, size = 6, 3
    instances = E.sample_instances(task, size, n)
    streams = [task.prompt(x) + expected_stream(task.script(x)) for x in instances]
    models = [OracleModel(streams), OracleModel(streams, corrupt=range(2, n)), fresh("mamba", 9)]
    joint = E.evaluate_size_many(models, task, size, n)
    assert [r["correct"] for r in joint] == [n, 2, 0]
    assert joint == [E.evaluate_size(m, task, size, n) for m in models]


def test_env_holds_episodes_as_long_as_the_task_allows(monkeypatch):
    """The Env's max_len is past the task's max_steps: a long episode (a 12-disk Hanoi one is ~1.2M
    tokens) is bounded by the task's budget, not cut at the Env's default of 65,536 tokens."""
    seen = {}
    real_env = E.Env

    def spy(tools, batch_size, max_len=1 << 16, **kw):
        seen["max_len"] = max_len
        return real_env(tools, batch_size, max_len=max_len, **kw)

    class Long:  # addition with a budget beyond the Env's default
        def __getattr__(self, name):
            return getattr(get_task("addition"), name)

        def max_steps(self, size):
            return 100_000

    monkeypatch.setattr(E, "Env", spy)
    monkeypatch.setattr(E, "rollout", lambda policy, env, prompts, max_steps, seed: ("rolled", max_steps))
    task = Long()
    assert E.rollout_many([fresh("mamba", 0)], task, 2, E.sample_instances(task, 2, 1)) == ("rolled", 100_000)
    assert seen["max_len"] > 100_000


def test_joint_evaluation_takes_fixed_size_state_models_only():
    task = get_task("addition")
    with pytest.raises(ValueError, match="fixed-size-state models only"):
        E.evaluate_many([fresh("mamba", 0), fresh("pythia", 1)], task, [2], 2)
    with pytest.raises(ValueError, match="non-empty list"):
        E.evaluate_many([], task, [2], 2)
    # A Transformer alone keeps its own path.
    assert set(E.evaluate(fresh("pythia", 1), task, [2], 2)["accuracy"]) == {2}


def test_joint_policy_checks_its_input():
    policy = E.JointGreedyPolicy([fresh("mamba", 0), fresh("lstm", 1)], 3, "cpu")
    assert policy(torch.zeros(6, dtype=torch.long)).shape == (6,)
    with pytest.raises(ValueError, match=r"expected shape \(6,\)"):
        policy(torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"ids in \[0, 128\)"):
        policy(torch.full((6,), 128))
