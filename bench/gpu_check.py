"""One prepared check of the whole CUDA path, for a session that is lent a GPU for a few minutes.

    python bench/gpu_check.py --out DIR                     # on the GPU machine: about 7 minutes
    python bench/gpu_check.py --out DIR --tiny --device cpu # here, first: every part, tiny sizes
    python bench/gpu_check.py --out DIR --parts throughput chain_fast   # a second call: the rest

The parts, most wanted first, each with its own time limit under one overall --budget (a part that
would start with too little of it left is recorded as skipped, never simulated):
  tests           pytest of the tests that need CUDA or run the speed switches;
  chain_faithful  CIFAR-10 files in the real format (50 000 / 10 000 images), a resnet18 normal
                  teacher, a nasty resnet18 against it, a `net` student from each, 1 epoch each;
  synthesis       DeepInversion's images/s on that resnet18 teacher (256 images, 200 steps);
  throughput      bench/throughput.py at batch 128 and 512: scratch resnet18, preresnet20, net;
                  nasty resnet18; kd resnet18 -> net (reference pipeline vs faithful vs --fast);
  torchrun        the teacher under `torchrun --nproc_per_node=1` with sync_bn 1 (one process
                  joins no process group, so this checks the launcher path, not NCCL collectives,
                  which need two GPUs: NCCL refuses two ranks on one);
  resume          1 epoch + --resume vs 2 epochs straight, deterministic 1: the largest weight
                  difference and whether they are bitwise equal;
  chain_fast      the chain again with --fast.
Everything measured goes to DIR/gpu_check.json (with the GPU model, torch version and numerics
fingerprint), each subprocess's output to DIR/logs.txt. --tiny shrinks every size so that a typo
costs CPU seconds here, not GPU minutes there.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from utils.base.checkpoint import load_checkpoint  # noqa: E402
from utils.base.provenance import fingerprint_text, numerics  # noqa: E402
from utils.data.fixtures import make_cifar  # noqa: E402

SIZES = {"full": {"train": 50000, "test": 10000, "images": 10000, "repeats": 2, "synth_images": 256,
                  "synth_iterations": 200, "batches": (128, 512)},
         "tiny": {"train": 256, "test": 64, "images": 128, "repeats": 1, "synth_images": 16,
                  "synth_iterations": 2, "batches": (32,)}}
TEACHER = {"model_name": "resnet18", "learning_rate": 0.1, "schedule": [80, 120], "gamma": 0.1,
           "batch_size": 128, "num_epochs": 1, "num_workers": 4, "augmentation": 1, "cuda": 1,
           "dataset": "cifar10"}
STUDENT = {**TEACHER, "model_name": "net", "num_channels": 32, "dropout_rate": 0.0,
           "learning_rate": 1e-3, "schedule": [999], "teacher_model": "resnet18", "temperature": 4,
           "alpha": 0.9}
TEST_FILES = ["tests/test_loader.py", "tests/test_speed.py", "tests/test_cuda_paths.py"]
THROUGHPUT = [("scratch", "resnet18", None), ("scratch", "preresnet20", None), ("scratch", "net", None),
              ("nasty", "resnet18", None), ("kd", "resnet18", "net")]


class Check:
    """The results dict, the log file and the clock every part runs under."""

    def __init__(self, args):
        self.args, self.started = args, time.time()
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.log = open(self.out / "logs.txt", "a")
        device = torch.device(args.device)
        self.results = {"started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                        "torch": str(torch.__version__), "cuda": torch.version.cuda,
                        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                        "numerics": fingerprint_text(numerics(device)), "tiny": args.tiny,
                        "device": args.device, "parts": {}}

    def left(self):
        return self.args.budget - (time.time() - self.started)

    def run(self, name, command, timeout, env=None):
        """A subprocess in the project root: (exit code, output, seconds); its output is logged."""
        started = time.time()
        self.log.write(f"\n===== {name}: {' '.join(map(str, command))}\n")
        try:
            done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                                  timeout=max(1, min(timeout, self.left())),
                                  env=dict(os.environ, PYTHONWARNINGS="ignore", **(env or {})))
            code, output = done.returncode, done.stdout + done.stderr
        except subprocess.TimeoutExpired as expired:
            code, output = "timeout", str(expired.stdout or "") + str(expired.stderr or "")
        self.log.write(output[-20000:])
        self.log.flush()
        return code, output, round(time.time() - started, 1)

    def record(self, part, key, value):
        self.results["parts"].setdefault(part, {})[key] = value
        self.save()

    def save(self):
        self.results["seconds"] = round(time.time() - self.started, 1)
        path = self.out / "gpu_check.json"
        path.with_suffix(".tmp").write_text(json.dumps(self.results, indent=2) + "\n")
        os.replace(path.with_suffix(".tmp"), path)


# ----------------------------------------------------------------------------- parts

def part_tests(check):
    code, output, seconds = check.run("tests", [sys.executable, "-m", "pytest", "-q", "-rs",
                                                *TEST_FILES], timeout=150)
    summary = [line for line in output.splitlines() if re.search(r"\d+ (passed|failed)", line)]
    check.record("tests", "result", {"exit": code, "summary": summary[-1:] or [output[-300:]],
                                     "skipped": re.findall(r"SKIPPED \[\d+\] (.+)", output),
                                     "seconds": seconds})


def write_run(folder, values):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "params.json").write_text(json.dumps(values, indent=2))
    return folder


def train(check, script, folder, *extra, launcher=None, timeout=240):
    command = (launcher or [sys.executable]) + [str(ROOT / f"train_{script}.py"), "--save_path",
                                                 str(folder), "--device", check.args.device, *extra]
    code, output, seconds = check.run(f"{script} {folder.name}", command, timeout)
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()] \
        if (folder / "metrics.jsonl").exists() else []
    last = output.strip().splitlines()[-1:] if code != 0 else []
    return {"exit": code, "seconds": seconds, "epochs": len(rows),
            "epoch_seconds": [r["seconds"] for r in rows], "test_acc": [r["test_acc"] for r in rows],
            "numerics": sorted({r.get("numerics") for r in rows if r.get("numerics")}),
            **({"error": last} if last else {})}


def data_keys(root):
    return {"data_dir": str(root / "data"), "num_workers": 2}


def part_chain(check, root, mode):
    """teacher -> nasty -> a student of each, 1 epoch each; mode 'faithful' or 'fast' (--fast)."""
    flags, base, data = (["--fast"] if mode == "fast" else []), root / mode, data_keys(root)
    teacher = write_run(base / "teacher", {**TEACHER, **data})
    nasty = write_run(base / "nasty", {**TEACHER, **data, "adversarial_model": "resnet18",
                                       "adversarial_resume": str(teacher / "best_model.tar"),
                                       "temperature": 4, "weight": 0.04})
    results = {"teacher": train(check, "scratch", teacher, *flags)}
    results["nasty"] = train(check, "nasty", nasty, *flags)
    for name, source in (("student_normal", teacher), ("student_nasty", nasty)):
        folder = write_run(base / name, {**STUDENT, **data,
                                         "teacher_resume": str(source / "best_model.tar")})
        results[name] = train(check, "kd", folder, *flags)
    check.record("chain", mode, results)


def part_torchrun(check, root):
    on_gpu, data = check.args.device == "cuda", data_keys(root)
    folder = write_run(root / "torchrun", {**TEACHER, **data, "sync_bn": int(on_gpu)})
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1"]
    result = train(check, "scratch", folder, launcher=launcher)
    result["backend"] = "nccl" if on_gpu else "gloo"
    check.record("torchrun", "result", result)


def part_resume(check, root):
    """1 epoch + --resume to 2 vs 2 straight, deterministic: the largest weight difference."""
    values = {**TEACHER, **data_keys(root), "num_epochs": 2, "deterministic": 1}
    straight = write_run(root / "straight", values)
    resumed = write_run(root / "resumed", values)
    runs = {"straight": train(check, "scratch", straight),
            "first": train(check, "scratch", resumed, "--set", "num_epochs=1"),
            "resumed": train(check, "scratch", resumed, "--resume", "auto")}
    if all(r["exit"] == 0 for r in runs.values()):
        a, b = (load_checkpoint(f / "last_model.tar")["state_dict"] for f in (straight, resumed))
        runs["max_weight_difference"] = max((a[k].double() - b[k].double()).abs().max().item()
                                            for k in a if a[k].is_floating_point())
        runs["bitwise_equal"] = all(torch.equal(a[k], b[k]) for k in a)
    check.record("resume", "result", runs)


def part_throughput(check, sizes):
    pattern = re.compile(r"(.+?)\s{2,}(\d+)\s+([\d.]+)\s+([\d.]+)x$")
    for batch in sizes["batches"]:
        for mode, model, student in THROUGHPUT:
            key = f"{mode} {model}" + (f" -> {student}" if student else "") + f", batch {batch}"
            if check.left() < 45:
                check.record("throughput", key, "skipped: out of time")
                continue
            command = [sys.executable, "bench/throughput.py", "--mode", mode, "--model", model,
                       "--device", check.args.device, "--batch_size", str(batch), "--images",
                       str(sizes["images"]), "--repeats", str(sizes["repeats"])]
            command += ["--student", student] if student else []
            code, output, seconds = check.run(f"throughput {key}", command, timeout=120)
            rows = {m.group(1).strip(): {"images_per_s": int(m.group(2)), "vs_reference": float(m.group(4))}
                    for m in map(pattern.match, output.splitlines()) if m}
            check.record("throughput", key, {"exit": code, "seconds": seconds, "rows": rows})


def part_synthesis(check, root, sizes):
    teacher = root / "faithful" / "teacher" / "best_model.tar"
    if not teacher.exists():
        return check.record("synthesis", "result", "skipped: no teacher (part chain_faithful)")
    folder = write_run(root / "datafree", {
        **STUDENT, "data_dir": str(root / "data"), "num_workers": 2, "method": "deepinversion",
        "teacher_resume": str(teacher), "synthesis_images": sizes["synth_images"],
        "batch_size": min(STUDENT["batch_size"], sizes["synth_images"]),  # one batch at least
        "synthesis_batch": sizes["synth_images"], "synthesis_iterations": sizes["synth_iterations"]})
    result = train(check, "kd", folder, timeout=150)
    log = (folder / "training.log").read_text() if (folder / "training.log").exists() else ""
    found = re.search(r"Synthesis batch 1/1: (\d+) images in ([\d.]+) s", log)
    if found:
        images, seconds = int(found.group(1)), float(found.group(2))
        result.update(images=images, iterations=sizes["synth_iterations"], synthesis_seconds=seconds,
                      images_per_s=round(images / seconds, 2),
                      image_iterations_per_s=round(images * sizes["synth_iterations"] / seconds))
    check.record("synthesis", "result", result)


def parts(check, root, sizes):
    """(name, function, seconds it needs at least), in the order they run: the most wanted first."""
    return [("tests", lambda: part_tests(check), 60),
            ("chain_faithful", lambda: part_chain(check, root, "faithful"), 60),
            ("synthesis", lambda: part_synthesis(check, root, sizes), 45),
            ("throughput", lambda: part_throughput(check, sizes), 45),
            ("torchrun", lambda: part_torchrun(check, root), 40),
            ("resume", lambda: part_resume(check, root), 60),
            ("chain_fast", lambda: part_chain(check, root, "fast"), 90)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for gpu_check.json and logs.txt")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--tiny", action="store_true", help="every size shrunk: a dry run here")
    parser.add_argument("--budget", type=float, default=420, help="seconds for all parts")
    parser.add_argument("--parts", nargs="+", help="only these parts (a second call: what was skipped)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda: this machine has no usable CUDA device (use --device cpu "
                 "--tiny for the dry run)")
    check, sizes = Check(args), SIZES["tiny" if args.tiny else "full"]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_cifar(root / "data", "cifar10", sizes["train"], sizes["test"])
        for name, part, needs in parts(check, root, sizes):
            if args.parts and name not in args.parts and not (name == "chain_faithful"
                                                              and "synthesis" in args.parts):
                continue
            if check.left() < needs:
                check.record(name, "skipped", f"out of time ({check.left():.0f} s left of "
                             f"{args.budget:.0f})")
                continue
            print(f"[{time.time() - check.started:5.0f} s] {name}", flush=True)
            part()
    check.save()
    print(f"written: {check.out / 'gpu_check.json'} ({check.results['seconds']} s)")


if __name__ == "__main__":
    main()
