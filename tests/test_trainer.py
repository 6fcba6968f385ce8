"""A real transformers.Trainer run on Knee, through KneeCallback and through optimizers=(...)."""

import pytest
import torch
from transformers import (
    BertConfig,
    BertForMaskedLM,
    Trainer,
    TrainerCallback,
    TrainerState,
    TrainingArguments,
    get_wsd_schedule,
)

from knee_plugins import KneeCallback, KneeSchedule, get_knee_schedule_with_warmup

pytestmark = pytest.mark.slow

LEARNING_RATE = 1e-3


class TokenDataset(torch.utils.data.Dataset):
    def __init__(self, size: int, length: int = 12, vocab: int = 50):
        generator = torch.Generator().manual_seed(0)
        self.ids = torch.randint(5, vocab, (size, length), generator=generator)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, index):
        ids = self.ids[index]
        labels = torch.full_like(ids, -100)
        labels[::3] = ids[::3]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


class RecordLearningRates(TrainerCallback):
    def __init__(self):
        self.by_step = {}

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "learning_rate" in logs:
            self.by_step[state.global_step] = logs["learning_rate"]


class StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_save = True
            control.should_training_stop = True


def tiny_model():
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
    )
    return BertForMaskedLM(config)


def make_args(output_dir, **overrides):
    settings = dict(
        output_dir=str(output_dir),
        learning_rate=LEARNING_RATE,
        per_device_train_batch_size=4,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    settings.update(overrides)
    return TrainingArguments(**settings)


def run(args, dataset, callbacks, resume=None, optimizers=(None, None)):
    recorder = RecordLearningRates()
    trainer = Trainer(
        model=tiny_model(), args=args, train_dataset=dataset, callbacks=[*callbacks, recorder], optimizers=optimizers
    )
    trainer.train(resume_from_checkpoint=resume)
    return trainer, recorder.by_step


def expected(schedule, steps):
    """The LR the Trainer logs at global step s is the one update s used: lr * m(s - 1)."""
    return {step: LEARNING_RATE * schedule.factor(step - 1) for step in steps}


def test_callback_follows_knee_over_max_steps_with_warmup(tmp_path):
    args = make_args(tmp_path, max_steps=20, warmup_steps=4)
    trainer, logged = run(args, TokenDataset(64), [KneeCallback(explore_ratio=0.5)])
    schedule = KneeSchedule(total_steps=20, warmup_steps=4, explore_steps=10)
    assert trainer.state.global_step == 20
    assert logged == pytest.approx(expected(schedule, range(1, 21)), rel=1e-12, abs=1e-15)
    assert trainer.lr_scheduler.get_last_lr() == [0.0, 0.0]


def test_callback_sizes_the_budget_from_epochs_with_gradient_accumulation_and_warmup_ratio(tmp_path):
    # 40 examples / batch 2 = 20 batches per epoch, accumulation 4 -> 5 updates per epoch, 3 epochs -> 15
    args = make_args(
        tmp_path, num_train_epochs=3, per_device_train_batch_size=2, gradient_accumulation_steps=4, warmup_steps=0.2
    )
    trainer, logged = run(args, TokenDataset(40), [KneeCallback(num_explore_steps=6, min_lr_ratio=0.1)])
    assert trainer.state.max_steps == 15
    schedule = KneeSchedule(total_steps=15, warmup_steps=3, explore_steps=6, min_lr_ratio=0.1)
    assert logged == pytest.approx(expected(schedule, range(1, 16)), rel=1e-12)


def test_callback_decay_type_equals_transformers_wsd_schedule(tmp_path):
    args = make_args(tmp_path, max_steps=12, warmup_steps=0)
    _, logged = run(args, TokenDataset(48), [KneeCallback(num_explore_steps=4, decay_type="1-sqrt")])
    wsd = get_wsd_schedule(
        torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=LEARNING_RATE),
        num_warmup_steps=0,
        num_decay_steps=8,
        num_training_steps=12,
        decay_type="1-sqrt",
    )
    want = {}
    for step in range(1, 13):
        want[step] = wsd.get_last_lr()[0]
        wsd.optimizer.step()
        wsd.step()
    assert logged == pytest.approx(want, rel=1e-12, abs=1e-15)


def test_resume_from_checkpoint_continues_the_trajectory_and_ends_at_max_steps(tmp_path):
    dataset = TokenDataset(64)
    full_args = make_args(tmp_path / "full", max_steps=16, warmup_steps=2)
    _, uninterrupted = run(full_args, dataset, [KneeCallback(explore_ratio=0.5)])

    args = make_args(tmp_path / "crash", max_steps=16, warmup_steps=2, save_strategy="steps", save_steps=100)
    _, before = run(args, dataset, [KneeCallback(explore_ratio=0.5), StopAt(7)])
    assert max(before) == 7
    resumed_trainer, after = run(
        args, dataset, [KneeCallback(explore_ratio=0.5)], resume=str(tmp_path / "crash" / "checkpoint-7")
    )
    assert resumed_trainer.state.global_step == 16
    assert sorted(after) == list(range(8, 17))
    assert {**before, **after} == uninterrupted


def test_optimizers_route_without_the_callback(tmp_path):
    model = tiny_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE)
    scheduler = get_knee_schedule_with_warmup(optimizer, num_warmup_steps=3, num_training_steps=12, explore_ratio=0.5)
    recorder = RecordLearningRates()
    trainer = Trainer(
        model=model,
        args=make_args(tmp_path, max_steps=12),
        train_dataset=TokenDataset(48),
        optimizers=(optimizer, scheduler),
        callbacks=[recorder],
    )
    trainer.train()
    assert recorder.by_step == pytest.approx(expected(KneeSchedule(12, 3, 6), range(1, 13)), rel=1e-12)


def test_explore_longer_than_the_budget_fails_before_the_first_step(tmp_path):
    trainer = Trainer(
        model=tiny_model(),
        args=make_args(tmp_path, max_steps=10),
        train_dataset=TokenDataset(16),
        callbacks=[KneeCallback(num_explore_steps=11)],
    )
    with pytest.raises(ValueError, match=r"KneeCallback\(num_explore_steps\) \(11 steps\) = 11 steps exceed"):
        trainer.train()
    assert trainer.state.global_step == 0


def test_a_scheduler_the_callback_cannot_drive_is_refused(tmp_path):
    model = tiny_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE)
    trainer = Trainer(
        model=model,
        args=make_args(tmp_path, max_steps=4),
        train_dataset=TokenDataset(16),
        optimizers=(optimizer, torch.optim.lr_scheduler.StepLR(optimizer, step_size=2)),
        callbacks=[KneeCallback()],
    )
    with pytest.raises(ValueError, match="lr_scheduler_type"):
        trainer.train()
    assert trainer.state.global_step == 0


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(explore_ratio=1.5), r"^explore_ratio=1.5"),
        (dict(num_explore_steps=-2), r"^num_explore_steps must be >= 0"),
        (dict(min_lr_ratio=1), r"^min_lr_ratio must be in \[0, 1\)"),
        (dict(decay_type="exp"), r"^decay_type must be one of linear, cosine, 1-sqrt"),
    ],
)
def test_callback_rejects_bad_arguments_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        KneeCallback(**kwargs)


@pytest.mark.parametrize(
    "training_args,callback_kwargs,message",
    [
        (
            dict(max_steps=10, warmup_steps=6),
            {},
            r"^TrainingArguments.warmup_steps \(6 steps\) \+ KneeCallback\(explore_ratio\) \(5 steps\) = 11 steps "
            r"exceed the Trainer's budget",
        ),
        (
            dict(max_steps=10, warmup_steps=0.7),
            dict(num_explore_steps=4),
            r"^TrainingArguments.warmup_steps \(7 steps\) \+ KneeCallback\(num_explore_steps\) \(4 steps\)",
        ),
        (dict(max_steps=10), dict(num_explore_steps=12), r"KneeCallback\(num_explore_steps\) \(12 steps\)"),
    ],
)
def test_budget_errors_name_the_training_arguments_and_callback_arguments(
    tmp_path, training_args, callback_kwargs, message
):
    args = make_args(tmp_path, **training_args)
    with pytest.raises(ValueError, match=message):
        KneeCallback(**callback_kwargs).on_train_begin(args, TrainerState(max_steps=args.max_steps), None)


def test_unknown_budget_is_refused(tmp_path):
    callback = KneeCallback()
    with pytest.raises(ValueError, match="budget"):
        callback.on_train_begin(make_args(tmp_path, max_steps=3), TrainerState(max_steps=0), None, lr_scheduler=None)


# --- anytime: a new budget on resume, and a branched decay ------------------------------------


def test_resume_with_a_longer_budget_while_exploring_follows_a_fresh_run_with_it(tmp_path):
    dataset = TokenDataset(400)
    args = make_args(tmp_path / "run", max_steps=20, warmup_steps=2, save_strategy="steps", save_steps=100)
    run(args, dataset, [KneeCallback(explore_ratio=0.5), StopAt(6)])  # explores until update 11
    longer = make_args(tmp_path / "run", max_steps=40, warmup_steps=2)
    trainer, after = run(
        longer, dataset, [KneeCallback(explore_ratio=0.5)], resume=str(tmp_path / "run" / "checkpoint-6")
    )
    _, fresh = run(
        make_args(tmp_path / "fresh", max_steps=40, warmup_steps=2), dataset, [KneeCallback(explore_ratio=0.5)]
    )
    assert trainer.state.global_step == 40
    assert after == {step: lr for step, lr in fresh.items() if step > 6}


def test_resume_with_a_new_budget_after_the_decay_began_is_refused_before_the_next_update(tmp_path):
    dataset = TokenDataset(400)
    args = make_args(tmp_path, max_steps=20, warmup_steps=2, save_strategy="steps", save_steps=100)
    run(args, dataset, [KneeCallback(explore_ratio=0.5), StopAt(15)])  # decay from update 12
    with pytest.raises(ValueError, match=r"update 15 .*KneeCallback\(anneal_on_budget_change=True\)"):
        run(
            make_args(tmp_path, max_steps=30, warmup_steps=2),
            dataset,
            [KneeCallback()],
            resume=str(tmp_path / "checkpoint-15"),
        )
    trainer, after = run(
        make_args(tmp_path, max_steps=30, warmup_steps=2),
        dataset,
        [KneeCallback(anneal_on_budget_change=True)],
        resume=str(tmp_path / "checkpoint-15"),
    )
    reached = KneeSchedule(20, 2, 10).factor(15)
    assert after[16] == pytest.approx(LEARNING_RATE * reached, rel=1e-12)
    assert after[30] == pytest.approx(LEARNING_RATE * reached / 15, rel=1e-12)


class RecordLosses(TrainerCallback):
    def __init__(self):
        self.by_step = {}

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.by_step[state.global_step] = logs["loss"]


def test_a_decay_branched_from_an_explore_checkpoint_is_bit_identical_to_a_fresh_knee_run(tmp_path):
    """Parent: explores (almost) to its far budget. Branch at update 8 into a new output dir, decaying over 6
    updates (1-sqrt): LRs, losses and final weights equal a fresh run with explore ending at 8 and budget 14."""
    dataset = TokenDataset(400)
    parent = make_args(tmp_path / "parent", max_steps=100, warmup_steps=2, save_strategy="steps", save_steps=8)
    run(parent, dataset, [KneeCallback(num_explore_steps=96), StopAt(8)])
    branch_callbacks = lambda: [KneeCallback(num_explore_steps=6, decay_type="1-sqrt")]  # noqa: E731
    branch_losses, fresh_losses = RecordLosses(), RecordLosses()
    branch, branch_lrs = run(
        make_args(tmp_path / "branch", max_steps=14, warmup_steps=2),
        dataset,
        [*branch_callbacks(), branch_losses],
        resume=str(tmp_path / "parent" / "checkpoint-8"),
    )
    fresh, fresh_lrs = run(
        make_args(tmp_path / "fresh", max_steps=14, warmup_steps=2), dataset, [*branch_callbacks(), fresh_losses]
    )
    assert branch_lrs == {step: lr for step, lr in fresh_lrs.items() if step > 8}
    assert branch_losses.by_step == {step: loss for step, loss in fresh_losses.by_step.items() if step > 8}
    for (name, weight), (_, fresh_weight) in zip(
        branch.model.named_parameters(), fresh.model.named_parameters(), strict=True
    ):
        assert torch.equal(weight, fresh_weight), name
    assert branch_lrs[14] < branch_lrs[9] == LEARNING_RATE
