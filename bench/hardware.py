"""What the benchmark scripts print about the machine they ran on."""
import platform
import subprocess


def cpu_model() -> str:
    """The CPU's model name from ``lscpu`` (the platform's processor string when lscpu is unavailable)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor() or "unknown"
