"""Knowledge distillation from a frozen teacher, normal or nasty (train_kd.py).

alpha * T^2 * KL(teacher || student) + (1 - alpha) * CE; the teacher's test accuracy is logged
before training, as the original did. A normal teacher's logits reach the student through the
run's defence (`teacher_output`: methods/stingy.py, methods/reverse.py, ...; "logits": none).

The teacher keys and the teacher-accuracy line are shared by every student strategy
(methods/hard_label.py, methods/skeptical.py, methods/deepinversion.py).
"""
from pathlib import Path

import torch.nn.functional as F

from utils.base.checkpoint import file_sha256
from utils.base.provenance import numerics
from utils.base.schema import FLAG, FLOAT, MODEL, REQUIRED, STR, Key, bounds
from utils.training.answer_cache import AnswerCache, cache_digest, split_digest
from utils.training.evaluation import answered_accuracy, evaluate
from utils.training.tracking import write_teacher_record

from .base import (
    NO_DEFENCE,
    TEMPERATURE,
    Access,
    AgainstFrozen,
    Frozen,
    Method,
    Role,
    needs_logits,
    register,
    teacher_answers,
)

TEACHER_KEYS = (
    Key("teacher_model", MODEL, REQUIRED, "the network the student distils from"),
    Key("teacher_resume", STR, REQUIRED, "checkpoint of the teacher"))
ALPHA = Key("alpha", FLOAT, REQUIRED, "weight of the distillation term against the hard labels",
            bounds(low=0, high=1))
# the students of the feature and decoupled methods weight their cross-entropy apart
CE_WEIGHT = Key("ce_weight", FLOAT, 1.0, "weight of the cross-entropy with the labels", bounds(low=0))
TEACHER_NETWORK = Frozen("teacher", "teacher_model", "teacher_resume")
# the students whose loss reads the teacher's logits alone (not its features) declare it
TEACHER_CACHE = Key("teacher_cache", FLAG, 0, "1: keep the teacher's logits on this run's training "
                    "batches beside its checkpoint (answers/), read by the next student with the "
                    "same batches; on a CPU most of a student's time is its teacher's forward. Never "
                    "changes a number; costs epochs x images x classes x 4 bytes on disk")
ANSWERS_FOLDER = "answers"


def soft_kl(target_logits, logits, T):
    """T^2 * KL(softmax(target/T) || softmax(logits/T)), batch mean; the target is a constant.

    T^2 keeps the gradient scale independent of the temperature (Hinton et al.).
    """
    target = F.softmax(target_logits.detach() / T, dim=1)
    return F.kl_div(F.log_softmax(logits / T, dim=1), target, reduction="batchmean") * (T * T)


def kd_loss(student_logits, teacher_logits, labels, T, alpha):
    """alpha * T^2 * KL(teacher || student) + (1 - alpha) * CE(student, labels)."""
    ce = F.cross_entropy(student_logits, labels)
    kl = soft_kl(teacher_logits, student_logits, T)
    return {"loss": alpha * kl + (1.0 - alpha) * ce, "ce": ce, "kl": kl}


def log_teacher_accuracy(run, frozen):
    """The original's line of the teacher's test accuracy; for a defended student also the
    accuracy of what the defence hands out and the share of images whose top class it keeps
    (a defence may change it); both in the run's teacher.json, which the tables read."""
    teacher = frozen["teacher"]
    metrics = evaluate(teacher, run.test_loader, run.precision)
    run.log.info(f"- Teacher Model Eval metrics : acc: {metrics['acc']:05.3f} ; "
                 f"loss: {metrics['loss']:05.3f}")
    record = {"teacher_acc": metrics["acc"]}
    defence = run.params.method_entry.defence(run.params)
    if defence is not None and defence is not NO_DEFENCE:
        # the objective's own answer where it has one (MAD's surrogate is then built once)
        answer = getattr(run.objective, "transform", None) or teacher_answers(run.params, teacher)
        acc, kept = answered_accuracy(teacher, answer, run.test_loader, run.precision)
        run.log.info(f"- Teacher through its defence ({defence.row_label(run.params)}) : acc: "
                     f"{acc:05.3f} ; top class kept on {kept:.2f}% of the test images")
        record.update(defence=defence.name, answered_acc=acc, top_class_kept=kept)
    if run.world.is_main:
        write_teacher_record(run.save_path, record)


def start_student(run, frozen):
    """Every student's on_start: the teacher's accuracy line; with teacher_cache, its kept answers."""
    log_teacher_accuracy(run, frozen)
    if getattr(run.params, "teacher_cache", 0):
        keep_answers(run)


def keep_answers(run):
    """The objective reads and keeps the teacher's logits in a folder beside the teacher's
    checkpoint named by all that decides them: its weights, the split, the batches, the numerics."""
    if not needs_logits(run.objective.transform):
        run.log.info("- teacher_cache: nothing to keep, this defence asks the teacher other queries "
                     "than the student's batches")
        return
    params, loader = run.params, run.train_loader
    facts = {"teacher_model": params.teacher_model, "teacher_sha256": file_sha256(params.teacher_resume),
             "dataset": params.dataset, "split": split_digest(loader.images, loader.labels),
             "seed": params.seed, "batch_size": params.batch_size, "augmentation": params.augmentation,
             "rank": run.world.rank, "world": run.world.size, "amp": params.amp,
             "channels_last": params.channels_last, "numerics": numerics(run.device, run.world.size)}
    folder = Path(params.teacher_resume).resolve().parent / ANSWERS_FOLDER / cache_digest(facts)
    run.objective.cache = AnswerCache(folder, run.log)
    run.log.info(f"- Teacher answers kept in {folder} (teacher_cache)")


def from_teacher(params, teacher, loss, **hyper):
    """A student loss against the teacher's logits as its defence hands them out."""
    return AgainstFrozen("teacher", teacher, loss, transform=teacher_answers(params, teacher), **hyper)


def build(params, frozen):
    return from_teacher(params, frozen["teacher"], kd_loss, T=params.temperature, alpha=params.alpha)


def distillation_setting(params):
    return f"T={params.temperature:g}, alpha={params.alpha:g}"


# what every student strategy declares alike: a frozen teacher whose outputs it reads through the
# run's defence (a white-box strategy sets access=Access.WEIGHTS and, if no defence applies to
# what it reads, defended=False)
STUDENT = dict(role=Role.STUDENT, frozen=(TEACHER_NETWORK,), defended=True,
               access=Access.OUTPUTS, on_start=start_student)

register(Method(
    name="kd", script="kd", build=build, **STUDENT,
    summary="knowledge distillation: KL to the teacher's softened outputs plus cross-entropy",
    keys=(TEMPERATURE, *TEACHER_KEYS, ALPHA, TEACHER_CACHE),
    terms=("ce", "kl"),
    log_lines=(("loss", "Train loss"), ("ce", "Train CE loss"), ("kl", "Train KD (KL) loss")),
    implied_by="teacher_resume", rank=0, paper_table=True, setting=distillation_setting,
    temperature=lambda params: params.temperature))
