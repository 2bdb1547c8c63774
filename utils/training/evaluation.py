"""What trained networks do on a test split: the engine's per-epoch evaluation (`evaluate`, also
sharded under torchrun), accuracy (top-1, top-5, per class), cross-entropy, and how two networks'
softened outputs differ (evaluate.py, and reproduce.py's teacher comparison).

    metrics = evaluate(model, test_loader, precision)                # {"acc", "loss"}

    (logits,), labels = predict([network], test_loader)
    metrics = classification_metrics(logits, labels, num_classes)   # top1, top5, loss, per_class
    kl, agreement, _, _ = compare_outputs(nasty_logits, normal_logits, temperature=4.0)

Accuracies are exact (correct / total, in percent); the loss is the per-sample mean cross-entropy,
summed in float64, as the engine's evaluation.
"""
import contextlib

import torch
import torch.nn.functional as F

from utils.training import distributed

TOP5_FROM = 100  # top-5 accuracy is reported for data sets with at least this many classes


@torch.inference_mode()
def evaluate(model, loader, precision=None):
    """Exact accuracy (percent) and per-sample mean cross-entropy over the whole split."""
    model.eval()
    with precision.autocast() if precision else contextlib.nullcontext():
        return _evaluate(model, loader)


def _evaluate(model, loader):
    correct = torch.zeros((), dtype=torch.long, device=loader.labels.device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=loader.labels.device)
    for images, labels in loader:
        logits = model(images)
        loss_sum += F.cross_entropy(logits.float(), labels, reduction="sum").double()
        correct += (logits.argmax(1) == labels).sum()
    distributed.all_sum(correct)  # each rank evaluated its share of the split
    distributed.all_sum(loss_sum)
    return {"acc": 100.0 * correct.item() / loader.num_samples,
            "loss": loss_sum.item() / loader.num_samples}


@torch.inference_mode()
def answered_accuracy(network, answer, loader, precision=None):
    """(accuracy in percent of answer(images, logits), the outputs a defence hands out for the
    network's logits; percent of images whose top class the answer keeps), over the whole split."""
    network.eval()
    counts = torch.zeros(2, dtype=torch.long, device=loader.labels.device)
    with precision.autocast() if precision else contextlib.nullcontext():
        for images, labels in loader:
            logits = network(images)
            top = answer(images, logits).argmax(1)
            counts += torch.stack([(top == labels).sum(), (top == logits.argmax(1)).sum()])
    distributed.all_sum(counts)  # each rank saw its share of the split
    return tuple(100.0 * int(c) / loader.num_samples for c in counts)


@torch.inference_mode()
def predict(networks, loader, keep=None):
    """Each network's float logits and the labels of the loader's images, in the loader's order;
    with `keep` (indices into the split), of those images only."""
    chosen = None
    if keep is not None:
        chosen = torch.zeros(loader.num_samples, dtype=torch.bool)
        chosen[keep] = True
    outputs, labels, offset = [[] for _ in networks], [], 0
    for images, targets in loader:
        mask = None if chosen is None else chosen[offset:offset + len(targets)]
        offset += len(targets)
        if mask is not None:
            if not mask.any():
                continue
            mask = mask.to(targets.device)
            images, targets = images[mask], targets[mask]
        for output, network in zip(outputs, networks):
            output.append(network(images).float())
        labels.append(targets)
    return [torch.cat(o) for o in outputs], torch.cat(labels)


def classification_metrics(logits, labels, num_classes):
    """Top-1 (and top-5 when there are >= TOP5_FROM classes) accuracy in percent, the mean
    cross-entropy, and per class its number of images and top-1 accuracy (None without images)."""
    total = len(labels)
    hits = logits.argmax(1) == labels
    loss = F.cross_entropy(logits.float(), labels, reduction="none").double().sum().item()
    metrics = {"images": total, "top1": 100.0 * hits.sum().item() / total, "loss": loss / total}
    if num_classes >= TOP5_FROM:
        top5 = (logits.topk(5, dim=1).indices == labels[:, None]).any(1)
        metrics["top5"] = 100.0 * top5.sum().item() / total
    counts = torch.bincount(labels, minlength=num_classes).tolist()
    correct = torch.bincount(labels[hits], minlength=num_classes).tolist()
    metrics["per_class"] = [{"class": c, "images": n, "top1": 100.0 * k / n if n else None}
                            for c, (n, k) in enumerate(zip(counts, correct))]
    return metrics


def compare_outputs(first_logits, second_logits, temperature):
    """(KL(first || second) per image of the softmax outputs at `temperature`, the percentage of
    images whose argmax agrees, and both log-softmax outputs)."""
    log_first = F.log_softmax(first_logits.float() / temperature, dim=1)
    log_second = F.log_softmax(second_logits.float() / temperature, dim=1)
    kl = (log_first.exp() * (log_first - log_second)).sum(1)
    same = (first_logits.argmax(1) == second_logits.argmax(1)).sum().item()
    return kl, 100.0 * same / len(first_logits), log_first, log_second
