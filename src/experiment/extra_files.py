# Run by dallinger-oci inside the build sandbox (src/experiment/extra_files.rs)
# with the image's own Python: finds the experiment class and its
# extra_files() hook as Dallinger's ExplicitFileSource does, expands the
# (source, destination) pairs as it does (a directory source gives each of
# its files; `/` stripped from destinations), and copies each source's bytes
# out for the build. Sources are read inside the image only.
import json
import os
import stat
import sys
import traceback

EXPERIMENT = "/experiment"
OUT = sys.argv[1]
# Our results directory is not a place to import from.
if sys.path and os.path.abspath(sys.path[0]) == os.path.abspath(OUT):
    del sys.path[0]
sys.dont_write_bytecode = True


def finish(result, code=0):
    with open(os.path.join(OUT, "result.json"), "w") as out:
        json.dump(result, out)
    sys.exit(code)


def last_frame(exc):
    """The frame Python's traceback prints last, outside its import machinery."""
    if isinstance(exc, SyntaxError) and exc.filename:
        return exc.filename, exc.lineno, None
    frames = traceback.extract_tb(exc.__traceback__)
    own = [f for f in frames if not f.filename.startswith("<frozen")]
    frame = (own or frames or [None])[-1]
    if frame is None:
        return None, None, None
    return frame.filename, frame.lineno, frame.name


def failed(exc, during):
    filename, line, function = last_frame(exc)
    text = traceback.format_exception_only(type(exc), exc)[-1].strip()
    finish(
        {
            "failure": {
                "during": during,
                "file": filename,
                "line": line,
                "function": function,
                "exception": text,
            }
        },
        3,
    )


def refuse(message):
    finish({"refused": message}, 4)


def main():
    os.makedirs(os.path.join(OUT, "files"), exist_ok=True)
    os.chdir(EXPERIMENT)
    try:
        from dallinger.config import initialize_experiment_package

        initialize_experiment_package(EXPERIMENT)
        from dallinger.experiment import load

        exp_class = load()
    except BaseException as exc:  # noqa: B036 - reported, then the build stops
        failed(exc, "loading the experiment class")
    extra_files = getattr(exp_class, "extra_files", None)
    if extra_files is None:
        try:
            from dallinger_experiment.experiment import extra_files
        except ImportError:
            try:
                from dallinger_experiment.dallinger_experiment import extra_files
            except ImportError:
                pass
    if extra_files is None:
        finish({"hook": False, "files": []})
    try:
        pairs = list(extra_files())
    except BaseException as exc:  # noqa: B036
        failed(exc, "extra_files()")

    files = []
    skipped = []

    def add(source, destination, pair):
        if not os.path.lexists(source) and is_in_experiment(source):
            # Written by a launch, not part of the build: PsyNet's
            # ('.deploy', '.deploy'), which `psynet debug` and `deploy` fill
            # before Dallinger assembles the experiment.
            skipped.append(f"{pair}: {source} does not exist at build time")
            return
        if not os.path.lexists(source):
            refuse(f"the source {source} of {pair} does not exist in the image")
        if not os.path.exists(source):
            refuse(f"the source {source} of {pair} is a broken symlink")
        real = os.path.realpath(source)
        if not stat.S_ISREG(os.stat(source).st_mode):
            refuse(f"the source {source} of {pair} is not a regular file")
        relative = os.path.relpath(os.path.abspath(destination), EXPERIMENT)
        name = str(len(files))
        with open(source, "rb") as src, open(os.path.join(OUT, "files", name), "wb") as dst:
            while True:
                chunk = src.read(1 << 20)
                if not chunk:
                    break
                dst.write(chunk)
        files.append(
            {"source": source, "real": real, "destination": relative, "file": name}
        )

    for pair in pairs:
        try:
            source, filename = pair
            source, filename = os.fspath(source), os.fspath(filename)
        except (TypeError, ValueError):
            refuse(f"it returned {pair!r}, not a (source, destination) pair of paths")
        shown = f"({source!r}, {filename!r})"
        filename = filename.lstrip("/")
        if os.path.isdir(source):
            for dirpath, dirnames, filenames in os.walk(source, topdown=True):
                dirnames.sort()
                for fn in sorted(filenames):
                    destination = os.path.join(
                        EXPERIMENT, filename, os.path.relpath(dirpath, source), fn
                    )
                    add(os.path.abspath(os.path.join(dirpath, fn)), destination, shown)
        else:
            add(os.path.abspath(source), os.path.join(EXPERIMENT, filename), shown)
    finish({"hook": True, "files": files, "skipped": skipped})


def is_in_experiment(path):
    return os.path.commonpath([os.path.abspath(path), EXPERIMENT]) == EXPERIMENT


main()
