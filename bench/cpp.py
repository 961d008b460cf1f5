"""The C++ original as a peer: `make cpp CPP_SRC=path/to/cv_learning_resnet50`.

The six rungs of dongtuoc/cv_learning_resnet50 (MIT-licensed; this project neither ships nor copies its
code), built from the user's checkout and run on this machine with this project's weights and images, in
the same run as the stages: the README's C++ column then says what each rung costs here, not on its
author's machine. What it takes, all of it outside the user's checkout:

- Weights: this store exported once (per store, in the private cache) to the text files that the
  original's `practice/model/resnet50_parser.py` writes: `np.savetxt` of each tensor, one number per line,
  conv weights in (out, kh, kw, in) order, `*_param.txt` with conv [ci, co, kh, stride, pad] and
  BatchNorm [eps, momentum].
- A copy of its `practice/cpp` in a private temporary folder, beside `model/resnet50_weight` (a link to
  the export) and `pics/ani_12/` (this project's images after its resize and crop, saved as PNG: lossless,
  and already 224x224, so the program's own resize changes nothing).
- Each rung built with its own CMakeLists.txt and the author's flags (1st unoptimised, 2nd-6th
  `-mavx -Ofast`); the 5th and 6th also need `-include fstream` (their ops/common.h uses std::ofstream
  without including it).
- Each rung run in its folder; its printed top-1 and "Time cost" per image parsed. The 5th and 6th
  generate and compile code at start-up (about a minute): reported as start-up, not timed, as for the
  stages. Its clock counts whole milliseconds.

Validated before it counts, like every peer: each image's top-1 must be ONNX Runtime's on the same
input (the PNG normalised as the program does it); a rung that disagrees is reported as wrong, and its
times are not used.
"""

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from common import spec
from common.errors import LadderError
from common.images import MEAN, STD, load_crop
from common.paths import cache_dir

REPOSITORY = "https://github.com/dongtuoc/cv_learning_resnet50"
# Stage key -> the C++ rung it mirrors (a folder of practice/cpp).
RUNGS = {
    "01": "1st_origin",
    "02": "2nd_avx2",
    "03": "3rd_preload",
    "04": "4th_no_malloc",
    "05": "5th_codegen",
    "06": "6th_mul_thread",
}
# Its author's published latency per rung, on the author's machine: shown when the rungs were not run here.
PUBLISHED_MS = {"01": 16923, "02": 4973, "03": 862, "04": 742, "05": 781, "06": 297}
# Its 6th rung's convs use std::thread::hardware_concurrency() threads (every online CPU) and are set
# beside 06 on every core the bench uses; the others run on one. (Where a CPU mask leaves the bench fewer
# cores than are online, the 6th rung still starts one thread per online CPU.)
THREADED = "06"
NEEDS_FSTREAM = ("05", "06")
INSTALL = "Debian/Ubuntu: apt-get install cmake g++ libopencv-dev"
BN_MOMENTUM = 0.1  # what torch's BatchNorm2d holds and the parser writes; the C++ code never reads it
CHUNK = 1 << 16  # numbers formatted per write
COMPLETE = "complete"  # written last into an export folder: a folder without it is unfinished


def threads(key: str, cores: int) -> int:
    """The threads a rung runs on."""
    return cores if key == THREADED else 1


class CppError(LadderError):
    """The C++ original cannot be built or run here, and what to do about it."""


def checkout(src: str | os.PathLike) -> Path:
    """The user's checkout of the original, checked for the six rungs' folders."""
    root = Path(src).expanduser()
    hint = f"clone it with `git clone {REPOSITORY}` and pass CPP_SRC=path/to/it"
    if not root.is_dir():
        raise CppError(f"{root}: no such folder; {hint}")
    missing = [r for r in RUNGS.values() if not (root / "practice" / "cpp" / r / "CMakeLists.txt").is_file()]
    if missing:
        raise CppError(
            f"{root}: not a checkout of cv_learning_resnet50 (no practice/cpp/{missing[0]}/CMakeLists.txt); {hint}"
        )
    return root


def check_tools() -> None:
    """cmake, a C++ compiler and OpenCV's development files, or one line saying what to install."""
    for tool in ("cmake", "c++"):
        if shutil.which(tool) is None:
            raise CppError(f"{tool} not found: the C++ original needs it to build ({INSTALL})")
    probe = ["cmake", "--find-package", "-DNAME=OpenCV", "-DCOMPILER_ID=GNU", "-DLANGUAGE=CXX", "-DMODE=EXIST"]
    with tempfile.TemporaryDirectory() as scratch:  # cmake leaves a CMakeFiles/ folder where it runs
        found = subprocess.run(probe, cwd=scratch, capture_output=True, text=True, check=False)
    if found.returncode != 0:
        raise CppError(f"OpenCV development files not found (cmake finds no OpenCV package): {INSTALL}")


# --- Weights, as its parser writes them ---------------------------------------------------------------


def text_name(module: str) -> str:
    """This project's module name -> the original's: 'layer1.0.downsample.1' ->
    'layer1_bottleneck0_downsample_batchnorm', 'conv1' -> 'conv1'."""
    layer, *rest = module.split(".")
    if not layer.startswith("layer"):
        return module
    block, *part = rest
    tail = {"downsample.0": "downsample_conv2d", "downsample.1": "downsample_batchnorm"}.get(".".join(part))
    return f"{layer}_bottleneck{block}_{tail or '_'.join(part)}"


def text_file(module: str, field: str) -> str:
    return f"resnet50_{text_name(module)}_{field}.txt"


def savetxt(path: Path, values: np.ndarray) -> None:
    """`np.savetxt(path, values.reshape(-1, 1))`, byte for byte ('%.18e' of each value as a float64, one a
    line), about twice as fast (1.1 s against 2.0 for 2 million numbers): 25 million in all."""
    flat = np.asarray(values).reshape(-1).tolist()
    with open(path, "w", encoding="ascii") as f:
        for i in range(0, len(flat), CHUNK):
            f.write("".join(f"{v:.18e}\n" for v in flat[i : i + CHUNK]))


def text_files(store) -> dict[str, np.ndarray]:
    """Every file the original reads, by name, with its values."""
    files = {}
    for c in spec.CONVS:
        module = c.weight.removesuffix(".weight")
        files[text_file(module, "weight")] = store.load(c.weight).transpose(0, 2, 3, 1)  # (out, kh, kw, in)
        files[text_file(module, "param")] = np.array([c.cin, c.cout, c.kernel, c.stride, c.pad], np.float64)
        for field in ("weight", "bias", "running_mean", "running_var"):
            files[text_file(c.bn, field)] = store.load(f"{c.bn}.{field}")
        files[text_file(c.bn, "param")] = np.array([spec.BN_EPS, BN_MOMENTUM], np.float64)
    files[text_file("fc", "weight")] = store.load("fc.weight")
    files[text_file("fc", "bias")] = store.load("fc.bias")
    return files


def store_key(store) -> str:
    """Names the export: the checksums of every tensor in the store's manifest."""
    sums = "".join(f"{name}:{store.manifest['tensors'][name]['sha256']}\n" for name in sorted(store.names()))
    return hashlib.sha256(sums.encode()).hexdigest()[:16]


def export_weights(store, base: Path | None = None) -> Path:
    """The store as the original's text files, made once per store (about a minute, 0.6 GB) in the private
    cache; written to a temporary folder and renamed into place, so an interrupted export is never used."""
    base = base or cache_dir("cpp", "weights")
    done = base / store_key(store)
    if (done / COMPLETE).is_file():
        return done
    partial = Path(tempfile.mkdtemp(prefix=".partial-", dir=base))
    try:
        names = text_files(store)
        for name, values in tqdm(names.items(), desc="export weights for C++", unit="file", leave=False, disable=None):
            savetxt(partial / name, values)
        (partial / COMPLETE).write_text(f"{store.source}\n", encoding="utf-8")
        if done.exists():  # an unfinished folder of an older version: replace it
            shutil.rmtree(done)
        partial.rename(done)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return done


# --- Its input, and what the judge says on the same input --------------------------------------------


def cpp_input(png: Path) -> np.ndarray:
    """(3, 224, 224) float32: the 8-bit RGB PNG normalised as the original's PreProcess does it (in double,
    per channel, then float), channels first for the judge."""
    from PIL import Image

    with Image.open(png) as im:
        rgb = np.asarray(im.convert("RGB"), dtype=np.float64)
    x = (rgb / 255.0 - MEAN.astype(np.float64)) / STD.astype(np.float64)
    return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)


# --- Its output ---------------------------------------------------------------------------------------


@dataclass
class Prediction:
    image: str  # file name, no folder
    top1: int
    score: float  # its printed top-1 logit (6 digits)
    ms: int  # its "Time cost", whole milliseconds


ANSI = re.compile(r"\x1b\[[0-9;]*m")
BEGIN = re.compile(r"[Pp]redict : (?P<file>.+?)\s*$")  # "Predict : f" (1st-4th), "Begin to predict : f"
TOP1 = re.compile(r"^top 1 (?P<score>\S+) -> Index=\[(?P<index>\d+)\]")
COST = re.compile(r"Time cost : (?P<ms>\d+) ms")


def parse(output: str) -> list[Prediction]:
    """Per image, in the order it ran: the file, its top-1 class and logit, its time."""
    found, current = [], None
    for line in ANSI.sub("", output).splitlines():
        line = line.strip()
        if m := BEGIN.search(line):
            current = {"image": Path(m["file"]).name}
        elif current is not None and (m := TOP1.match(line)):
            current.update(top1=int(m["index"]), score=float(m["score"]))
        elif current is not None and (m := COST.search(line)):
            if "top1" not in current:
                raise CppError(f"its output gave a time but no result for {current['image']}")
            found.append(Prediction(ms=int(m["ms"]), **current))
            current = None
    return found


# --- Building and running ------------------------------------------------------------------------------


def work_tree(root: Path, weights: Path, images: list[Path], folder: Path) -> Path:
    """folder/cpp: a copy of its practice/cpp, with model/resnet50_weight (the export) and pics/ani_12 (the
    images, cropped, as PNG) where its programs look for them (../../ from a rung's folder)."""
    shutil.copytree(root / "practice" / "cpp", folder / "cpp", ignore=shutil.ignore_patterns("build", "codegen"))
    (folder / "model").mkdir()
    (folder / "model" / "resnet50_weight").symlink_to(weights, target_is_directory=True)
    pics = folder / "pics" / "ani_12"
    pics.mkdir(parents=True)
    for i, path in enumerate(images):  # numbered: cat.jpg and cat.png are two images
        load_crop(path).save(pics / png_name(i, path), icc_profile=None)  # pixels only, as both read them
    return folder / "cpp"


def png_name(i: int, path: Path) -> str:
    return f"{i:02d}_{path.stem}.png"


def _first_error(text: str) -> str:
    lines = [line.strip() for line in ANSI.sub("", text).splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or lines or ["no output"])[0][:300]


def build(rung: Path, key: str) -> Path:
    """Its own CMakeLists.txt, its author's flags; returns the program."""
    flags = ["-DCMAKE_CXX_FLAGS=-include fstream"] if key in NEEDS_FSTREAM else []
    for command in (
        ["cmake", "-S", str(rung), "-B", str(rung / "build"), *flags],
        ["cmake", "--build", str(rung / "build"), "-j", str(os.cpu_count() or 1)],
    ):
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise CppError(f"{rung.name}: `{' '.join(command[:2])}` failed: {_first_error(done.stdout + done.stderr)}")
    return rung / "build" / "resnet"


def run_rung(program: Path, rung: Path, images: int, label: str) -> tuple[str, float]:
    """Run it in its folder (its paths are relative to it); returns its output and the seconds before its
    first image (start-up: weights preloaded, code generated and compiled)."""
    out, started, first = [], time.perf_counter(), None
    bar = tqdm(total=images, desc=f"C++ {label}", unit="image", leave=False, disable=None)
    process = subprocess.Popen([str(program)], cwd=rung, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert process.stdout is not None
        for line in process.stdout:
            out.append(line)
            plain = ANSI.sub("", line)
            if first is None and BEGIN.search(plain):
                first = time.perf_counter() - started
            if COST.search(plain):
                bar.update()
        code = process.wait()
    finally:
        if process.poll() is None:  # interrupted: do not leave it running
            process.kill()
            process.wait()
        bar.close()
    text = "".join(out)
    if code != 0:
        raise CppError(f"{rung.name} exited with status {code}: {_first_error(text)}")
    return text, first or 0.0


@dataclass
class RungResult:
    key: str  # the stage it mirrors, "01"
    folder: str  # "1st_origin"
    threads: int
    status: str  # "ok", "wrong", "error"
    message: str = ""
    latency_s: list[float] | None = None
    build_s: float = 0.0
    startup_s: float = 0.0
    verdict: dict | None = None


def judge(predictions: list[Prediction], expected: dict[str, tuple[int, float]]) -> tuple[dict, str]:
    """Its top-1 per image against ONNX Runtime's on the same input: (verdict, '' or what is wrong)."""
    seen = {p.image for p in predictions}
    if seen != set(expected) or len(predictions) != len(expected):
        return {}, f"its output named {sorted(seen)}, not the {len(expected)} images it was given"
    wrong = [p for p in predictions if p.top1 != expected[p.image][0]]
    verdict = {
        "top1_matches": len(predictions) - len(wrong),
        "images": len(predictions),
        "max_top1_logit_diff": round(max(abs(p.score - expected[p.image][1]) for p in predictions), 5),
    }
    if wrong:
        p = wrong[0]
        return verdict, (
            f"top-1 differs from ONNX Runtime's on {len(wrong)} of {len(predictions)} images "
            f"({p.image}: class {p.top1}, ONNX Runtime {expected[p.image][0]})"
        )
    return verdict, ""


def measure(
    src: str | os.PathLike, store, images: list[Path], cores: int, keys: list[str] | None = None
) -> list[RungResult]:
    """Build and run each rung (every one unless `keys` picks some) on the images; each checked against
    ONNX Runtime before its times count."""
    from common.reference import Reference  # ONNX Runtime: not for `make chart`, which reads PUBLISHED_MS

    root = checkout(src)
    check_tools()
    weights = export_weights(store)
    results = []
    with tempfile.TemporaryDirectory(prefix="cpp-", dir=cache_dir("cpp")) as tmp:
        tree = work_tree(root, weights, images, Path(tmp))
        pngs = sorted((tree.parent / "pics" / "ani_12").iterdir())
        batch = np.stack([cpp_input(p) for p in pngs])
        logits = Reference(store, max_batch=len(batch))(batch)
        expected = {p.name: (int(np.argmax(row)), float(row.max())) for p, row in zip(pngs, logits, strict=True)}
        for key in keys or list(RUNGS):
            folder = RUNGS[key]
            result = RungResult(key, folder, threads(key, cores), "error")
            try:
                t0 = time.perf_counter()
                program = build(tree / folder, key)
                result.build_s = time.perf_counter() - t0
                output, result.startup_s = run_rung(program, tree / folder, len(pngs), folder)
                predictions = parse(output)
                result.verdict, problem = judge(predictions, expected)
                if problem:
                    result.status, result.message = "wrong", problem
                else:
                    result.status, result.latency_s = "ok", [p.ms / 1e3 for p in predictions]
            except CppError as e:
                result.message = str(e)
            results.append(result)
    return results
