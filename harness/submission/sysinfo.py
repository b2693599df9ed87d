"""systems/<system>.json: the system YAML plus what this host reports (CPU, memory, GPUs,
software). Detection never raises; what cannot be found is left for the YAML or reported missing.
"""

from __future__ import annotations

import logging
import os
import platform
import re
import shutil
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from harness.submission.rounds import SYSTEM_MEANINGFUL_FIELDS, SYSTEM_REQUIRED_FIELDS

logger = logging.getLogger(__name__)

FRAMEWORK_DISTS = (("torch", "PyTorch"), ("tensorrt-llm", "TensorRT-LLM"), ("vllm", "vLLM"))
STACK_DISTS = ("mlcommons-loadgen", "transformers", "numpy", "safetensors")
NO_ACCELERATOR = "N/A"
# Fields that describe an accelerator; on a CPU-only system "N/A" is the meaningful answer.
ACCELERATOR_FIELDS = (
    "accelerator_model_name", "accelerator_memory_capacity", "accelerator_host_interconnect",
    "accelerator_memory_configuration", "accelerator_interconnect", "accelerator_frequency",
    "accelerator_interconnect_topology", "accelerator_on-chip_memories",
)  # fmt: skip
DEFAULTS: dict[str, Any] = {
    "number_of_nodes": 1,
    "status": "available",
    "system_type": "datacenter",
    "hw_notes": "",
    "sw_notes": "",
    "system_type_detail": "",
    "host_processor_interconnect": "",
    "host_processor_frequency": "",
    "accelerator_frequency": "",
    "accelerator_interconnect_topology": "",
    "accelerator_on-chip_memories": "",
}


def _run(cmd: list[str]) -> str:
    if shutil.which(cmd[0]) is None:
        return ""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        logger.info("%s failed: %s", cmd[0], exc)
        return ""
    return out.stdout if out.returncode == 0 else ""


def _lscpu() -> dict[str, str]:
    fields = {}
    for line in _run(["lscpu"]).splitlines():
        if ":" in line:
            key, value = line.split(":", 1)
            fields[key.strip()] = value.strip()
    return fields


def detect_host() -> dict[str, Any]:
    """CPU, memory, storage, NICs and OS of this machine (fields of systems/*.json)."""
    found: dict[str, Any] = {}
    cpu = _lscpu()
    if cpu.get("Model name"):
        found["host_processor_model_name"] = cpu["Model name"]
    if cpu.get("Socket(s)", "").isdigit():
        found["host_processors_per_node"] = int(cpu["Socket(s)"])
    if cpu.get("Core(s) per socket", "").isdigit():
        found["host_processor_core_count"] = int(cpu["Core(s) per socket"])
    elif os.cpu_count():
        found["host_processor_core_count"] = os.cpu_count()
    mhz = cpu.get("CPU max MHz") or cpu.get("CPU MHz")
    if mhz:
        found["host_processor_frequency"] = f"{float(mhz):.0f} MHz"
    caches = [f"{k.split()[0]}: {cpu[k]}" for k in cpu if re.fullmatch(r"L\d\w? cache", k)]
    if caches:
        found["host_processor_caches"] = ", ".join(caches)
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        m = re.search(r"MemTotal:\s+(\d+) kB", meminfo.read_text())
        if m:
            found["host_memory_capacity"] = f"{int(m.group(1)) / 1024**2:.0f} GB"
    found["host_storage_capacity"] = f"{shutil.disk_usage('/').total / 1000**3:.0f} GB"
    storage = _storage_type()
    if storage:
        found["host_storage_type"] = storage
    nics = [p for p in Path("/sys/class/net").glob("*") if (p / "device").exists()]
    if nics:
        found["host_network_card_count"] = len(nics)
        ether = [p.name for p in nics if (p / "type").read_text().strip() == "1"]
        if ether:
            found["host_networking"] = f"Ethernet ({', '.join(sorted(ether))})"
    dimms = _dimms()
    if dimms:
        found["host_memory_configuration"] = dimms
    os_release = Path("/etc/os-release")
    pretty = ""
    if os_release.is_file():
        m = re.search(r'^PRETTY_NAME="?([^"\n]*)"?', os_release.read_text(), re.M)
        pretty = m.group(1) if m else ""
    found["operating_system"] = f"{pretty or platform.system()} (kernel {platform.release()})"
    return found


def _dimms() -> str:
    """ "<count>x <size>" from dmidecode (needs root; empty otherwise)."""
    sizes = re.findall(r"^\s*Size:\s*(\d+\s*[GM]B)", _run(["dmidecode", "-t", "17"]), re.M)
    if not sizes:
        return ""
    counts: dict[str, int] = {}
    for size in sizes:
        counts[size] = counts.get(size, 0) + 1
    return ", ".join(f"{n}x {size}" for size, n in counts.items())


def _storage_type() -> str:
    kinds = set()
    for dev in Path("/sys/block").glob("*"):
        if dev.name.startswith(("loop", "zram", "ram", "dm-")):
            continue
        if dev.name.startswith("nvme"):
            kinds.add("NVMe SSD")
            continue
        rot = dev / "queue" / "rotational"
        if rot.is_file():
            kinds.add("HDD" if rot.read_text().strip() == "1" else "SSD")
    return ", ".join(sorted(kinds))


def detect_gpus() -> dict[str, Any]:
    """GPU name, count, memory, driver and PCIe link from nvidia-smi (empty without one)."""
    query = "name,memory.total,driver_version,pcie.link.gen.max,pcie.link.width.max"
    out = _run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader,nounits"])
    rows = [[c.strip() for c in line.split(",")] for line in out.splitlines() if line.strip()]
    if not rows:
        return {}
    name, mem_mib, driver, gen, width = (rows[0] + [""] * 5)[:5]
    found: dict[str, Any] = {
        "accelerators_per_node": len(rows),
        "accelerator_model_name": name,
        "gpu_driver_version": driver,
    }
    if mem_mib.isdigit():
        found["accelerator_memory_capacity"] = f"{int(mem_mib) / 1024:.0f} GB"
    if gen.isdigit() and width.isdigit():
        found["accelerator_host_interconnect"] = f"PCIe Gen{gen} x{width}"
    return found


def detect_software() -> dict[str, Any]:
    """framework and other_software_stack from installed distributions (no imports)."""
    versions = {}
    for dist, _ in FRAMEWORK_DISTS:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    frameworks = [f"{label} {versions[d]}" for d, label in FRAMEWORK_DISTS if d in versions]
    stack = [f"Python {platform.python_version()}"]
    for dist in STACK_DISTS:
        try:
            stack.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            continue
    return {
        "framework": ", ".join(frameworks) or f"Python {platform.python_version()}",
        "other_software_stack": ", ".join(stack),
    }


def detect_all() -> dict[str, Any]:
    return {**detect_host(), **detect_gpus(), **detect_software()}


def build_system_json(system_yaml: dict[str, Any], division: str, submitter: str,
                      detected: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:  # fmt: skip
    """Merge defaults < detected < YAML facts < YAML `submission:`; returns (json, missing),
    where missing lists required fields absent or meaningful fields that are empty."""
    desc: dict[str, Any] = dict(DEFAULTS)
    driver = detected.get("gpu_driver_version")
    desc.update({k: v for k, v in detected.items() if k != "gpu_driver_version"})
    if driver:
        desc["sw_notes"] = f"GPU driver {driver}"
    num_acc = system_yaml.get("num_accelerators")
    if num_acc is not None:
        desc["accelerators_per_node"] = int(num_acc)
    if system_yaml.get("accelerator"):
        desc["accelerator_model_name"] = str(system_yaml["accelerator"])
    if system_yaml.get("accelerator_memory_gib"):
        desc["accelerator_memory_capacity"] = f"{system_yaml['accelerator_memory_gib']} GB"
    if system_yaml.get("host_processor"):
        desc["host_processor_model_name"] = str(system_yaml["host_processor"])
    desc["system_name"] = str(system_yaml.get("description") or system_yaml.get("name") or "")
    if not desc.get("accelerators_per_node"):
        # No accelerator: the checker treats 0 as empty, so the count is written as "0".
        desc["accelerators_per_node"] = "0"
        for key in ACCELERATOR_FIELDS:
            desc[key] = NO_ACCELERATOR
    if desc.get("number_of_nodes") == 1:
        desc.setdefault("host_networking_topology", "N/A (single node)")
    extra = system_yaml.get("submission") or {}
    if not isinstance(extra, dict):
        extra = {}
        logger.warning("`submission:` in the system YAML is not a mapping; ignored")
    desc.update(extra)
    desc["division"] = division
    desc["submitter"] = submitter
    missing = [k for k in SYSTEM_REQUIRED_FIELDS if k not in desc]
    missing += [k for k in SYSTEM_MEANINGFUL_FIELDS if k in desc and not desc[k]]
    ordered = {k: desc[k] for k in SYSTEM_REQUIRED_FIELDS if k in desc}
    ordered.update({k: v for k, v in desc.items() if k not in ordered})
    return ordered, missing
