"""Figures of a plan's results (PNG through matplotlib's Agg backend), written next to results.md.

    comparison, examples = compare_teachers(normal_dir, nasty_dir, temperature=4.0)  # torch only
    add_figures(plan, results)          # every figure of every teacher group of results.md

Per normal teacher (with `<model>` its network, e.g. preresnet20):
  softmax_<model>.png  a few test images with the normal and the nasty teacher's softmax outputs
                       at the distillation temperature: the nasty one has peaks on wrong classes
                       while its argmax stays right;
  nasty_<model>.png    how nasty: mean KL(nasty || normal) per class, and the mean probability
                       of the most likely, second most likely, ... class of each teacher;
  curves_<model>.png   test accuracy per epoch of the teachers and of each student trained
                       alone, from the normal and from the nasty teacher (mean over seeds,
                       the band spans the seeds' lowest to highest).
The teachers run on the CPU over at most COMPARE_LIMIT test images, the same number per class.
Per tree with stages that make their own training set (a method's `made_split`, e.g. data-free):
  synthetic.png        the first SYNTHETIC_SHOWN images each such stage made from its teacher
                       (its first finished run's), one grid per stage.
"""
import re
from pathlib import Path

import torch

from methods import load_params
from utils.base.errors import NastyError
from utils.data.loader import build_loaders
from utils.training.evaluation import compare_outputs, predict
from utils.training.networks import load_frozen

from .matrix import draw_matrix

COMPARE_LIMIT = 1000
EXAMPLES = 4      # images in the softmax figure: the first test image of classes 0, 1, 2, 3
RANKS = 10        # ranked probabilities shown
SYNTHETIC_SHOWN = 20  # image i aims at class i mod classes: on Digits, 0 to 9 twice
COLORS = {"normal": "tab:blue", "nasty": "tab:red", "alone": "tab:gray"}


# ----------------------------------------------------------------------------- numbers (torch)

def load_teacher(folder, data_dir=None):
    """(params, network in eval mode on the CPU) of the run in `folder`, from its best_model.tar."""
    params = load_params(folder, overrides={"data_dir": None if data_dir is None else str(data_dir),
                                            "channels_last": 0})
    return params, load_frozen(params, params.model_name, folder / "best_model.tar", role="teacher")


def pick_subset(labels, limit=COMPARE_LIMIT):
    """Sorted indices of the first limit / classes test images of every class."""
    classes = int(labels.max()) + 1
    per_class = max(1, -(-limit // classes))
    keep = [torch.nonzero(labels == c).flatten()[:per_class] for c in range(classes)]
    return torch.cat(keep).sort().values


def compare_teachers(normal_folder, nasty_folder, temperature, data_dir=None, limit=COMPARE_LIMIT):
    """(comparison for results.json, examples for the softmax figure) of two teachers' outputs."""
    _, normal = load_teacher(normal_folder, data_dir)
    params, nasty = load_teacher(nasty_folder, data_dir)
    _, test_loader = build_loaders(params, torch.device("cpu"), 500)
    keep = pick_subset(test_loader.labels.cpu(), limit)
    (normal_logits, nasty_logits), labels = predict([normal, nasty], test_loader, keep)
    # KL(nasty || normal): the direction of the term the nasty teacher was trained to maximise
    kl, agreement, log_nasty, log_normal = compare_outputs(nasty_logits, normal_logits, temperature)
    classes = range(params.num_classes)
    comparison = {
        "temperature": float(temperature), "images": len(labels), "mean_kl": kl.mean().item(),
        "per_class_kl": [kl[labels == c].mean().item() for c in classes if (labels == c).any()],
        "agreement": agreement,
        "normal_acc": 100.0 * (normal_logits.argmax(1) == labels).float().mean().item(),
        "nasty_acc": 100.0 * (nasty_logits.argmax(1) == labels).float().mean().item(),
        "normal_ranked": ranked(log_normal), "nasty_ranked": ranked(log_nasty)}
    rows = [int(torch.nonzero(labels == c).flatten()[0]) for c in classes if (labels == c).any()]
    rows = rows[:EXAMPLES]
    examples = {"images": test_loader.images[keep[rows]].cpu(), "labels": labels[rows].tolist(),
                "normal": log_normal[rows].exp(), "nasty": log_nasty[rows].exp()}
    return comparison, examples


def ranked(log_probabilities):
    """Mean probability of each teacher's most likely class, second most likely, ..."""
    top = log_probabilities.exp().sort(dim=1, descending=True).values[:, :RANKS]
    return top.mean(0).tolist()


# ----------------------------------------------------------------------------- drawing (matplotlib)

def pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no display needed); None if not installed."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save(plt, figure, path):
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)


def probability_panel(axis, probabilities, label, title):
    classes = len(probabilities)
    colors = [COLORS["normal"] if c == label else "0.6" for c in range(classes)]
    axis.bar(range(classes), probabilities.tolist(), color=colors, width=0.8)
    axis.set_ylim(0, 1)
    axis.set_title(f"{title}: argmax {int(probabilities.argmax())}", fontsize=9)
    if classes <= 20:
        axis.set_xticks(range(classes))
    axis.tick_params(labelsize=7)


def draw_softmax(plt, path, examples, temperature):
    count = len(examples["labels"])
    figure, axes = plt.subplots(count, 3, figsize=(8, 1.7 * count), squeeze=False,
                                gridspec_kw={"width_ratios": [1, 3, 3]})
    for row, label in enumerate(examples["labels"]):
        image = examples["images"][row].permute(1, 2, 0).numpy()
        axes[row][0].imshow(image, interpolation="nearest")
        axes[row][0].set_title(f"label {label}", fontsize=9)
        axes[row][0].axis("off")
        probability_panel(axes[row][1], examples["normal"][row], label, "normal teacher")
        probability_panel(axes[row][2], examples["nasty"][row], label, "nasty teacher")
    figure.suptitle(f"Softmax outputs at T = {temperature:g} (blue: the true class)", fontsize=10)
    save(plt, figure, path)


def draw_nastiness(plt, path, comparison):
    figure, (left, right) = plt.subplots(1, 2, figsize=(8, 2.8))
    per_class = comparison["per_class_kl"]
    left.bar(range(len(per_class)), per_class, color=COLORS["nasty"])
    left.set_title(f"KL(nasty || normal) at T = {comparison['temperature']:g}, per class",
                   fontsize=9)
    left.set_xlabel("class", fontsize=8)
    if len(per_class) <= 20:
        left.set_xticks(range(len(per_class)))
    ranks = range(1, len(comparison["normal_ranked"]) + 1)
    for role in ("normal", "nasty"):
        right.plot(ranks, comparison[f"{role}_ranked"], "o-", color=COLORS[role], label=role)
    right.set_title("mean probability of the k-th most likely class", fontsize=9)
    right.set_xlabel("k", fontsize=8)
    right.legend(fontsize=8)
    for axis in (left, right):
        axis.tick_params(labelsize=7)
    save(plt, figure, path)


def draw_series(axis, name, runs):
    """Mean test accuracy per epoch over the seeds; the band spans their lowest to highest."""
    length = min(len(r) for r in runs)
    epochs = range(1, length + 1)
    columns = list(zip(*(r[:length] for r in runs)))
    color = COLORS[name.split()[-1]]
    axis.plot(epochs, [sum(c) / len(c) for c in columns], color=color, label=name)
    if len(runs) > 1:
        axis.fill_between(epochs, [min(c) for c in columns], [max(c) for c in columns],
                          color=color, alpha=0.2)


def draw_curves(plt, path, panels):
    """panels: [(title, {series name: [test accuracy per epoch, one list per seed]})]."""
    figure, axes = plt.subplots(1, len(panels), figsize=(3.3 * len(panels), 3), squeeze=False)
    seeds = max(len(runs) for _, series in panels for runs in series.values())
    if seeds > 1:
        figure.suptitle(f"mean of {seeds} seeds; the band spans the lowest to the highest",
                        fontsize=9)
    for axis, (title, series) in zip(axes[0], panels):
        for name, runs in series.items():
            if runs:
                draw_series(axis, name, runs)
        axis.set_title(title, fontsize=9)
        axis.set_xlabel("epoch", fontsize=8)
        axis.set_ylabel("test accuracy (%)", fontsize=8)
        axis.tick_params(labelsize=7)
        axis.legend(fontsize=7)
    save(plt, figure, path)


def image_grid(images, per_row=10, pad=2):
    """uint8 images (N, C, H, W) as one (rows, columns, C) array, `per_row` a row, white gaps."""
    n, channels, height, width = images.shape
    rows = -(-n // per_row)
    grid = torch.full((channels, pad + rows * (height + pad), pad + per_row * (width + pad)), 255,
                      dtype=torch.uint8)
    for i, image in enumerate(images):
        top, left = pad + (i // per_row) * (height + pad), pad + (i % per_row) * (width + pad)
        grid[:, top:top + height, left:left + width] = image
    return grid.permute(1, 2, 0).numpy()


def draw_synthetic(plt, path, sets):
    """sets: [(title, uint8 images, labels)], one grid each, one above the other."""
    figure, axes = plt.subplots(len(sets), 1, figsize=(8, 2.1 * len(sets)), squeeze=False)
    for axis, (title, images, labels) in zip(axes[:, 0], sets):
        axis.imshow(image_grid(images), interpolation="nearest")
        axis.set_title(f"{title}; target classes {' '.join(map(str, labels.tolist()))}", fontsize=8)
        axis.axis("off")
    save(plt, figure, path)


# ----------------------------------------------------------------------------- a plan's figures

def finished_curves(results, name):
    if name is None:
        return []
    return [r["test_acc"] for r in results["stages"][name]["runs"] if r["finished"]]


def curve_panels(results, group):
    teachers = {"normal": finished_curves(results, group["teacher"]["stage"]),
                "nasty": finished_curves(results, group["nasty"]["stage"])}
    panels = [(f"teachers ({group['model']})", teachers)]
    for student in group["students"]:
        panels.append((f"student {student['label']}",
                       {"alone": finished_curves(results, student["alone"]["stage"]),
                        "from normal": finished_curves(results, student["normal"]["stage"]),
                        "from nasty": finished_curves(results, student["nasty"]["stage"])}))
    return [p for p in panels if any(p[1].values())]


def teacher_pair(results, group):
    """(seed, normal run folder, nasty run folder) of the first seed where both finished."""
    if not group["teacher"]["stage"] or not group["nasty"]["stage"]:
        return None
    runs = results["stages"][group["teacher"]["stage"]]["runs"]
    normal = {r["seed"]: r for r in runs if r["finished"]}
    for run in results["stages"][group["nasty"]["stage"]]["runs"]:
        if run["finished"] and run["seed"] in normal:
            return run["seed"], normal[run["seed"]]["folder"], run["folder"]
    return None


def unique_name(model, used):
    name, number = model, 2
    while name in used:
        name, number = f"{model}_{number}", number + 1
    used.add(name)
    return name


def group_figures(plan, results, group, name, plt, data_dir):
    """The figures of one teacher group; the teacher comparison goes into the group too."""
    pair = teacher_pair(results, group)
    if pair is not None:
        seed, normal, nasty = pair
        data_dir = data_dir or plan.base / plan.stage(group["nasty"]["stage"]).params.data_dir
        comparison, examples = compare_teachers(Path(normal), Path(nasty), group["temperature"],
                                                data_dir)
        group["comparison"] = dict(comparison, seed=seed)
        if plt:
            draw_softmax(plt, plan.root / f"softmax_{name}.png", examples, group["temperature"])
            draw_nastiness(plt, plan.root / f"nasty_{name}.png", comparison)
            group["figures"] += [f"softmax_{name}.png", f"nasty_{name}.png"]
    panels = curve_panels(results, group)
    if plt and panels:
        draw_curves(plt, plan.root / f"curves_{name}.png", panels)
        group["figures"].append(f"curves_{name}.png")


def made_set(stage, record):
    """(run, Split) of the stage's first finished run that made its own training set, else None."""
    if stage.method.made_split is None:
        return None
    for run in record["runs"]:
        split = stage.method.made_split(run["folder"]) if run["finished"] else None
        if split is not None:
            return run, split
    return None


def synthetic_sets(plan, results):
    """[(title, images, labels)]: the first images of each stage's first finished run that made its
    own training set (a method that declares `made_split`, e.g. a data-free one)."""
    sets = []
    for name, record in results["stages"].items():
        found = made_set(plan.stage(name), record)
        if found is None:
            continue
        run, split = found
        seed = "" if results["seeds"] is None else f", seed {run['seed']}"
        sets.append((f"{name}: from {plan.stage(name).parent or 'an external teacher'}{seed}",
                     split.images[:SYNTHETIC_SHOWN], split.labels[:SYNTHETIC_SHOWN]))
    return sets


def add_synthetic_figure(plan, results, plt):
    """synthetic.png, listed under the first table of results.md (a matrix, else a group)."""
    sets = synthetic_sets(plan, results)
    if not sets:
        return
    draw_synthetic(plt, plan.root / "synthetic.png", sets)
    tables = results.get("matrices", []) + results["groups"]
    if tables:
        tables[0]["figures"].append("synthetic.png")


def add_figures(plan, results, data_dir=None, draw=True):
    """Draw every group's figures into the tree and note their names (and problems) in `results`.

    A figure that cannot be made (missing matplotlib, an unreadable checkpoint) is a note in
    results.md, never a reason to lose the table."""
    plt = pyplot() if draw else None
    if draw and plt is None:
        results["notes"].append("matplotlib is not installed, so there are no figures "
                                "(pip install matplotlib)")
    used = set()
    for group in results["groups"]:
        name = unique_name(group["model"], used)
        try:
            group_figures(plan, results, group, name, plt, data_dir)
        except NastyError as error:
            results["notes"].append(f"no teacher comparison for {name}: {error}")
        except Exception as error:  # a figure is never a reason to lose the table
            results["notes"].append(f"no figures for {name}: {type(error).__name__}: {error}")
    for record in results.get("matrices", []) if plt else []:
        student = re.sub(r"[^A-Za-z0-9]+", "", record["student"])  # "net (4 ch.)" -> net4ch
        name = unique_name(f"attacks_{record['teacher_model']}_{student}", used)
        try:
            draw_matrix(plt, plan.root / f"{name}.png", record)
            record["figures"].append(f"{name}.png")
        except Exception as error:  # a figure is never a reason to lose the table
            results["notes"].append(f"no heat map {name}: {type(error).__name__}: {error}")
    if plt:
        try:
            add_synthetic_figure(plan, results, plt)
        except Exception as error:  # a figure is never a reason to lose the table
            results["notes"].append(f"no synthetic-image figure: {type(error).__name__}: {error}")
