"""The training engine shared by train_scratch.py, train_nasty.py and train_kd.py.

    run = prepare(args, methods.TABLE, "kd")  # params, device, log, data, model, frozen networks,
                                        # the method's objective, one optimiser for both
    fit(run, args.resume)

What a run trains against comes from its method (methods/): the frozen networks it reads, its
objective and the names of its loss terms. As the original: Adam for `net`/`mlp`, else SGD
(momentum 0.9, weight decay 5e-4); the learning rate is multiplied by `gamma` at the start of
every epoch listed in `schedule`; `best_model.tar` is rewritten whenever the test accuracy is >=
the best so far. Differences: the test accuracy is exact (correct / total) where the original
averaged per-batch accuracies, and the test loss is the per-sample mean.
"""
import contextlib
import time
from pathlib import Path
from typing import Any, NamedTuple

import torch
from tqdm import tqdm

from utils.base.checkpoint import (
    check_file,
    load_checkpoint,
    load_weights,
    remove_partial_writes,
    save_checkpoint,
)
from utils.base.errors import Diverged, NastyError
from utils.base.lock import RunLock
from utils.base.provenance import fingerprint_text, numerics, provenance
from utils.data.loader import build_loaders, epoch_seed
from utils.training import distributed
from utils.training.cli import (
    Terminated,
    check_save_path,
    interruption_error,
    stop_requested,
    stopped_by,
)
from utils.training.device import seed_everything, select_device
from utils.training.evaluation import evaluate
from utils.training.logs import attach_log_file, setup_logging
from utils.training.networks import build_network, load_frozen, make_optimizer
from utils.training.params import check_set_keys, load_params
from utils.training.speed import Precision, fast_settings, maybe_compile, to_layout
from utils.training.step import Step
from utils.training.tracking import EpochLog
from utils.base.world import World, barrier, launched_world

CHECKPOINT_FORMAT = "nasty-teacher/1"  # marks checkpoints that hold our resume state
BAR_EVERY = 10  # batches between progress-bar refreshes (each one syncs with the device)
EVAL_BATCH = 512  # evaluation needs no gradients: larger batches, same numbers


class TrainingRun(NamedTuple):
    params: Any
    device: torch.device
    save_path: Path
    log: Any
    model: torch.nn.Module         # what is checkpointed as 'state_dict'
    train_model: torch.nn.Module   # the same weights, compiled when params.compile, DDP under torchrun
    eval_model: torch.nn.Module    # the same weights, compiled when params.compile, never DDP
    objective: Any                 # methods.Objective; its own parameters train with the model
    optimizer: torch.optim.Optimizer
    precision: Precision
    train_loader: Any
    test_loader: Any
    world: World

    @property
    def term_names(self):
        """'loss' (what is minimised) and the method's named parts, in log order."""
        return ("loss",) + tuple(self.params.method_entry.terms)


# ----------------------------------------------------------------------------- setup

def lr_at(epoch, base_lr, schedule, gamma):
    """Learning rate of 0-based `epoch`: one factor `gamma` per milestone already reached."""
    return base_lr * gamma ** sum(1 for milestone in schedule if milestone <= epoch)


def load_run_params(args, table, script, overrides=None):
    """The run's params: params.json, then --data_dir, the script's own flags and --set, against
    the method table `table` (methods.TABLE, handed down by the script)."""
    overrides = dict(overrides or {})
    if args.data_dir is not None:
        overrides["data_dir"] = args.data_dir
    assignments = getattr(args, "set", None) or {}
    overrides.update(assignments)
    params = load_params(args.save_path, table, script, overrides)
    check_set_keys(params, assignments)
    return params, overrides


def prepare(args, table, script, overrides=None):
    """Everything a run needs, from the command line and `<save_path>/params.json`; `table`: the
    method table (methods.TABLE) that params.json's method is looked up in."""
    save_path = check_save_path(args.save_path)
    params, overrides = load_run_params(args, table, script, overrides)
    check_checkpoints_exist(params, args)  # before minutes of data decoding, not after
    world = launched_world()
    device = select_device(args, params, world)
    fast = fast_settings(device) if getattr(args, "fast", False) else {}
    if fast:
        params = load_params(save_path, table, script, {**overrides, **fast})
    log = start_logging(params, device, world, fast)
    seed_everything(params.seed, params.deterministic)
    frozen, train_split = replacement_split(params, device, log, world, save_path)
    train_loader, test_loader = build_loaders(params, device, max(params.batch_size, EVAL_BATCH), world,
                                              train_split)
    log.info(f"Create Model --- {params.model_name}")
    model = build_network(params, params.model_name, device)
    model = distributed.convert_sync_bn(model, world, device, params.sync_bn)
    if frozen is None:  # after the model, as always: the random initialisations stay the same
        frozen = load_frozen_networks(params, device, log)
    objective = build_objective(params, frozen, world, device)
    optimizer = make_optimizer(params.model_name, [*model.parameters(), *objective.parameters()],
                               params.learning_rate)
    log.info(f"Optimizer: {type(optimizer).__name__}")
    eval_model = maybe_compile(model, params.compile)
    run = TrainingRun(params, device, save_path, log, model, distributed.wrap(eval_model, world, device),
                      eval_model, objective, optimizer, Precision(params.amp, device), train_loader,
                      test_loader, world)
    if params.method_entry.on_start:
        params.method_entry.on_start(run, frozen)
    return run


def build_objective(params, frozen, world, device):
    """The method's objective on `device`. Its own modules (auxiliary heads) train on the same
    per-rank shares as the network, so they get the network's sync_bn and memory layout too."""
    objective = params.method_entry.build(params, frozen).to(device)
    objective = distributed.convert_sync_bn(objective, world, device, params.sync_bn)
    return to_layout(objective, bool(params.channels_last))


def start_logging(params, device, world, fast):
    restart_warning = distributed.start(world, device)
    log = setup_logging(quiet=not world.is_main)
    if restart_warning:
        log.warning(restart_warning)
    if fast:
        log.info(f"--fast on {device.type}: " + ", ".join(f"{k}={v}" for k, v in fast.items()))
    for key, value in params.as_dict().items():
        log.info(f"{key}:{value}")
    log.info(f"Device: {device}; number of classes: {params.num_classes}")
    log.info(f"Numerics: {fingerprint_text(numerics(device, world.size))}")
    if world.distributed:
        log.info(f"torchrun: {world.size} processes; global batch {params.batch_size}, about "
                 f"{params.batch_size / world.size:g} per process; sync_bn {int(params.sync_bn)}")
    return log


def check_checkpoints_exist(params, args):
    paths = [getattr(params, f.resume_key) for f in params.method_entry.frozen]
    if args.resume and args.resume != "auto":
        paths.append(args.resume)
    for path in paths:
        check_file(path)


def replacement_split(params, device, log, world, save_path):
    """(frozen networks, training split) for a method that makes its own training split (e.g.
    synthesised from the teacher); (None, None) for the others, which read the real one."""
    make_split = params.method_entry.train_split
    if make_split is None:
        return None, None
    frozen = load_frozen_networks(params, device, log)
    # every rank at once: rank 0 makes it, the others wait for its cache by polling the file, not in
    # a collective, whose timeout an hours-long synthesis would exceed; then all meet
    split = make_split(params, frozen, save_path, log, world)
    barrier()
    return frozen, split


def load_frozen_networks(params, device, log):
    """The method's frozen networks (teacher, adversary) by role: loaded, eval mode, no gradients."""
    frozen = {}
    for spec in params.method_entry.frozen:
        name, path = getattr(params, spec.model_key), getattr(params, spec.resume_key)
        log.info(f"Create {spec.role} model --- {name}; load trained weights from {path}")
        frozen[spec.role] = load_frozen(params, name, path, device, spec.role, params.compile)
    return frozen


# ----------------------------------------------------------------------------- loops

def train_epoch(run, epoch):
    """One pass over the training split; returns the per-batch means of the loss terms by name
    (see TrainingRun.term_names) and the training accuracy.

    Under torchrun the terms are those of the global batch: each rank weighs its share by
    its size, so the gradients DDP averages are the gradients of the global batch mean.
    """
    model, objective, loader, world = run.train_model, run.objective, run.train_loader, run.world
    model.train()
    objective.train()
    loader.set_epoch(epoch)
    global_sizes, names, steps = loader.batch_sizes(), run.term_names, len(loader)
    totals = torch.zeros(len(names), device=run.device)
    correct = torch.zeros((), dtype=torch.long, device=run.device)
    watch = NonFiniteWatch(run.device, names)
    before_step = heads_gradient_mean(run)
    seen = 0
    # disable=None: no bar when stderr is not a terminal (cluster logs, pipes)
    with tqdm(total=steps, desc=f"epoch {epoch + 1}", leave=False, dynamic_ncols=True,
              disable=None if world.is_main else True) as bar:
        for step, (images, labels) in enumerate(loader, 1):
            share = len(labels) / global_sizes[step - 1]  # 1.0 in a single process
            with run.precision.autocast():
                logits, terms = objective(model, images, labels, Step(epoch, step - 1, steps))
            optimizer_step(run, terms["loss"], share, before_step)
            stacked = stack_terms(terms, names).detach()
            totals += stacked if share == 1.0 else stacked * share  # no host sync here
            watch.update(stacked, step)
            correct += (logits.detach().argmax(1) == labels).sum()
            seen += len(labels)
            if step % BAR_EVERY == 0 or step == steps:
                watch.check(run, epoch)  # shares the bar's sync: one per BAR_EVERY batches
                if world.distributed and stop_requested(run.device):
                    raise Terminated()  # SIGTERM reached some rank: all stop at this step
                # this rank's shares weigh ~1/world each: scaled back for the display
                bar.set_postfix(loss=f"{totals[0].item() * world.size / step:.3f}",
                                acc=f"{100.0 * correct.item() / seen:.2f}")
                bar.update(step - bar.n)
    distributed.all_sum(totals)
    distributed.all_sum(correct)
    means = dict(zip(names, (totals / max(1, steps)).tolist()))
    return {**means, "acc": 100.0 * correct.item() / max(1, loader.num_samples)}


def stack_terms(terms, names):
    """The terms an objective returned as one tensor, in `names` order (one device op, no sync)."""
    missing = [n for n in names if n not in terms]
    if missing:
        raise NastyError(f"the objective returned no loss term {missing[0]!r}; it returns "
                         f"{', '.join(terms)} and its method declares {', '.join(names[1:])}")
    return torch.stack([terms[n].float() for n in names])


def optimizer_step(run, loss, share, before_step):
    """Backward, `before_step` (None, or the heads' gradient mean over the ranks), step."""
    run.optimizer.zero_grad(set_to_none=True)
    if run.world.distributed:
        loss = loss * (share * run.world.size)
    run.precision.backward_step(loss, run.optimizer, before_step=before_step)


def heads_gradient_mean(run):
    """Under torchrun: a function that averages the objective's own gradients over the ranks (DDP
    wraps the network only); None when there is nothing to average."""
    own = [p for p in run.objective.parameters() if p.requires_grad]
    if not own or not run.world.distributed:
        return None
    return lambda: distributed.average_gradients(own)


class NonFiniteWatch:
    """Remembers, on the device, the first batch whose loss terms were not finite."""

    def __init__(self, device, names):
        self.names = names
        self.first_step = torch.full((), -1, dtype=torch.long, device=device)
        self.bad_terms = torch.zeros(len(names), dtype=torch.bool, device=device)

    def update(self, terms, step):
        bad = ~torch.isfinite(terms)
        first = (self.first_step < 0) & bad.any()
        self.first_step = torch.where(first, torch.full_like(self.first_step, step), self.first_step)
        self.bad_terms = torch.where(first, bad, self.bad_terms)

    def check(self, run, epoch):
        # every rank stops together, at the first bad step of any of them
        never = torch.iinfo(torch.long).max
        first = distributed.all_min(torch.where(self.first_step < 0, never, self.first_step))
        bad = distributed.all_sum(torch.where(first == self.first_step, self.bad_terms.long(), 0))
        step = int(first.item())
        if step != never:
            self.bad_terms = bad > 0
            names = [n for n, b in zip(self.names, self.bad_terms.tolist()) if b]
            raise Diverged(f"non-finite loss at epoch {epoch + 1}, batch {step} (term "
                           f"{', '.join(names)}); stopped, the checkpoints in {run.save_path} keep "
                           "the last finished epoch; try a lower learning_rate"
                           + run.params.method_entry.diverged_hint)


def resume_path(resume, save_path):
    """`--resume auto` continues from `<save_path>/last_model.tar` when there is one."""
    if resume != "auto":
        return resume
    last = Path(save_path) / "last_model.tar"
    return str(last) if last.exists() else None


def fit(run, resume=None):
    """Train from the first unfinished epoch to `num_epochs`, checkpointing every epoch.

    Nothing in the run folder is written before the folder lock is held and the resume
    checkpoint has loaded, so a refused run leaves the folder as it found it (the lock file
    included). Under torchrun every rank loads the same checkpoint and rank 0 alone writes.
    Ctrl-C and SIGTERM stop it with an Interrupted error that says how to resume.
    """
    main = run.world.is_main
    with RunLock(run.save_path) if main else contextlib.nullcontext() as lock:
        resume = resume_path(resume, run.save_path)
        state = resume_state(run, resume) if resume else {"epoch": 0, "best_acc": -1.0, "best_epoch": -1}
        distributed.check_same_epoch(state["epoch"])
        if main:
            lock.keep()
            remove_partial_writes(run.save_path)
            attach_log_file(run.log, run.save_path)
        tracker = (EpochLog(run.save_path, run.log, run.params.method_entry.log_lines, run.term_names,
                            start_epoch=state["epoch"], numerics=run_fingerprint(run)) if main else None)
        try:
            for epoch in range(state["epoch"], run.params.num_epochs):
                run_epoch(run, epoch, state, tracker)
        except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM (runtime.Terminated)
            raise interruption_error(interrupt_message(run, state, stop), stop) from None
        finally:
            if tracker is not None:
                tracker.close()
    return state


def run_fingerprint(run):
    """The numerics fingerprint of this run's process (see utils.base.provenance), as one line."""
    return fingerprint_text(numerics(run.device, run.world.size))


def run_epoch(run, epoch, state, tracker):
    params, log = run.params, run.log
    started = time.time()
    lr = lr_at(epoch, params.learning_rate, params.schedule, params.gamma)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    # dropout etc. draw from a stream fixed by (seed, epoch): a resumed epoch is the same epoch
    # (each rank its own stream: the ranks' dropout masks must not repeat each other)
    torch.manual_seed(epoch_seed(params.seed, epoch) + run.world.rank)
    log.info(f"Epoch {epoch + 1}/{params.num_epochs}")
    log.info(f"Learning Rate {lr}")
    train = train_epoch(run, epoch)
    distributed.share_buffers(run.model)
    test = evaluate(run.eval_model, run.test_loader, run.precision)
    new_best = test["acc"] >= state["best_acc"]
    if new_best:
        state.update(best_acc=test["acc"], best_epoch=epoch + 1)
    # order matters for a kill at any point: the metrics row, then best, then last. Until
    # last_model.tar advances, a resume redoes this epoch identically and rewrites the rest.
    if run.world.is_main:
        tracker.record(epoch, lr, train, test, state, new_best, time.time() - started)
        state["writing"] = epoch + 1  # from here an interruption may find last_model.tar at it
        save_epoch(run, epoch, test, state, new_best)
    state["epoch"] = epoch + 1


def interrupt_message(run, state, stop=None):
    last, by = run.save_path / "last_model.tar", stopped_by(stop)
    epoch = state["epoch"]
    if state.get("writing", 0) > epoch and last.exists():
        epoch = saved_epoch(last, epoch)  # stopped while, or just after, it was written
    if epoch == 0 or not last.exists():
        return f"interrupted{by} before the first epoch finished; nothing to resume"
    return (f"interrupted{by}; {last} holds epoch {epoch}: continue with "
            f"--save_path {run.save_path} --resume {last} (or --resume auto)")


def saved_epoch(path, default):
    """The epoch checkpoint `path` holds; `default` when it cannot be read."""
    try:
        return int(load_checkpoint(path).get("epoch", default))
    except NastyError:
        return default


def save_epoch(run, epoch, test, state, new_best):
    checkpoint = {"epoch": epoch + 1, "state_dict": run.model.state_dict(),
                  "optim_dict": run.optimizer.state_dict(), "format": CHECKPOINT_FORMAT,
                  "best_acc": state["best_acc"], "best_epoch": state["best_epoch"],
                  "eval_acc": test["acc"], "model_name": run.params.model_name,
                  "dataset": run.params.dataset, "num_classes": run.params.num_classes,
                  "method": run.params.method, **provenance(run.params, run.device, run.world.size)}
    objective_state = run.objective.state_dict()
    if objective_state:  # auxiliary heads: apart, so 'state_dict' stays the plain network
        checkpoint["objective_state_dict"] = objective_state
    if run.precision.scaler.is_enabled():  # fp16 loss scale: part of the exact resume state
        checkpoint["scaler"] = run.precision.scaler.state_dict()
    if new_best:
        save_checkpoint(run.save_path / "best_model.tar", checkpoint)
    save_checkpoint(run.save_path / "last_model.tar", checkpoint)


def load_objective_state(run, checkpoint, path):
    """The objective's own parameters (auxiliary heads) of a checkpoint of ours."""
    if not run.objective.state_dict():
        return
    if "objective_state_dict" not in checkpoint:
        raise NastyError(f"{path}: holds no 'objective_state_dict' for method "
                         f"{run.params.method!r}, so its heads cannot resume")
    try:
        run.objective.load_state_dict(checkpoint["objective_state_dict"])
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0]
        raise NastyError(f"{path}: its objective state does not fit method "
                         f"{run.params.method!r} ({first})") from None


def warn_other_numerics(run, checkpoint):
    """A run continued under another numerics fingerprint than its checkpoint's: its exact numbers
    will match neither machine's (metrics.jsonl keeps each epoch's fingerprint)."""
    saved = checkpoint.get("numerics")
    if saved and fingerprint_text(saved) != run_fingerprint(run):
        run.log.warning(f"- the epochs so far were trained under {fingerprint_text(saved)}, the rest "
                        f"will be under {run_fingerprint(run)}: the exact numbers will match neither")


def resume_state(run, path):
    """Load `path` into the run; returns the epoch to continue from and the best so far."""
    checkpoint = load_weights(run.model, path, map_location=run.device,
                              what=f"model {run.params.model_name} with {run.params.num_classes} classes")
    epoch = int(checkpoint.get("epoch", 0))
    if checkpoint.get("format") == CHECKPOINT_FORMAT:
        load_objective_state(run, checkpoint, path)
        try:
            run.optimizer.load_state_dict(checkpoint["optim_dict"])
        except (ValueError, KeyError) as error:
            raise NastyError(f"{path}: its optimizer state does not fit this run of method "
                             f"{run.params.method!r} (saved by method "
                             f"{checkpoint.get('method', 'unknown')!r}: {error})") from None
        if "scaler" in checkpoint and run.precision.scaler.is_enabled():
            run.precision.scaler.load_state_dict(checkpoint["scaler"])
        state = {"epoch": epoch, "best_acc": checkpoint["best_acc"],
                 "best_epoch": checkpoint["best_epoch"]}
        run.log.info(f"- Resumed from {path}: continuing after epoch {epoch} with its optimizer "
                     f"state; best so far {state['best_acc']:.3f} (epoch {state['best_epoch']})")
        warn_other_numerics(run, checkpoint)
        return state
    fresh = " and fresh objective parameters" if run.objective.state_dict() else ""
    run.log.info(f"- Resumed from {path} (original format): weights only; continuing after epoch "
                 f"{epoch} with a fresh optimizer{fresh} and no best accuracy on record")
    return {"epoch": epoch, "best_acc": -1.0, "best_epoch": -1}
