"""Helpers shared by the tools/bench_*.py scripts (run as scripts: `tools/` is on sys.path)."""

import json
import os
import subprocess


def write_report(path, report):
    """Writes a benchmark report as JSON, atomically (temporary name, then rename); no-op
    when path is empty."""
    if path:
        with open(path + ".tmp", "w") as f:
            json.dump(report, f, indent=1)
        os.replace(path + ".tmp", path)


def run_worker(argv, env, timeout):
    """Runs a measuring subprocess; returns the JSON of its last `RESULT ` line, or
    {"error": its last 3 lines of output}."""
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-3:]}
    return json.loads(lines[-1][len("RESULT "):])
