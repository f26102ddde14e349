"""Stopping a VM's processes: QEMU by ACPI, SIGTERM then SIGKILL, and its helper daemons; identity re-checked
right before every signal, so a process that merely reuses a recorded PID is never signalled."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time

from lkctl.errors import VmError
from lkctl.runtime import state
from lkctl.runtime.console import READY_MARKER, console_markers
from lkctl.runtime.qemu import QMP_SOCKET
from lkctl.runtime.qmp import qmp_command
from lkctl.runtime.state import VmRecord

__all__ = ["kill_helpers", "signal_vm", "stop_vm", "terminate_vm", "wait_gone"]

log = logging.getLogger(__name__)


def wait_gone(record: VmRecord, timeout: float) -> bool:
    """Wait up to `timeout` seconds for the VM's QEMU to be gone; True if it is."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not state.is_our_process(record):
            return True
        time.sleep(0.05)
    return not state.is_our_process(record)


def signal_vm(record: VmRecord, sig: signal.Signals) -> None:
    """Send `sig` to the VM's QEMU if it is still really ours."""
    if state.is_our_process(record):
        with contextlib.suppress(ProcessLookupError):
            os.kill(record.pid, sig)


def terminate_vm(record: VmRecord) -> None:
    """SIGTERM, then SIGKILL after 5 s: no ACPI (for a VM whose start failed)."""
    signal_vm(record, signal.SIGTERM)
    if not wait_gone(record, 5):
        signal_vm(record, signal.SIGKILL)
        wait_gone(record, 5)


def kill_helpers(record: VmRecord) -> None:
    """Stop the VM's helper daemons that are still alive: identified like QEMU (start time, boot id, command line)
    right before the signal, so a process that merely reuses a PID is never signalled."""
    for entry in record.helpers:
        if state.is_our_helper(entry):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry[0]), signal.SIGTERM)


def stop_vm(record: VmRecord, *, timeout: float | None = None) -> str:
    """Power the VM off: ACPI shutdown over QMP, then SIGTERM, then SIGKILL. Returns how it ended.

    `timeout` (seconds for the ACPI shutdown) None: settings' `vm.stop_timeout`. Helper daemons (virtiofsd) that
    outlive QEMU are stopped too."""
    if timeout is None:
        from lkctl.settings import load_settings

        timeout = load_settings().vm.stop_timeout
    if record.libvirt:
        from lkctl.runtime.libvirt.vms import stop_libvirt_vm

        return stop_libvirt_vm(record, timeout=timeout)
    if not state.is_our_process(record):
        kill_helpers(record)
        return "not running"
    try:
        return _stop_qemu(record, timeout)
    finally:
        kill_helpers(record)


def _stop_qemu(record: VmRecord, timeout: float) -> str:
    # A guest that has not reached init's ready point has no ACPI handler yet and would ignore the power button
    # for the whole timeout: it gets SIGTERM at once. (Images whose init is not lkctl's never print the marker,
    # so they are stopped this way too.)
    if console_markers(record, (READY_MARKER,)):
        try:
            qmp_command(record.dir / QMP_SOCKET, "system_powerdown")
            if wait_gone(record, timeout):
                return "powered off"
        except VmError as e:  # no QMP answer: SIGTERM below; --debug / LKCTL_DEBUG=1 says why
            log.debug("stop %s: ACPI power-off over QMP failed (%s); sending SIGTERM", record.name, e)
    signal_vm(record, signal.SIGTERM)
    if wait_gone(record, 5):
        return "terminated"
    signal_vm(record, signal.SIGKILL)
    if wait_gone(record, 5):
        return "killed"
    raise VmError(f"VM {record.name} (pid {record.pid}) survived SIGKILL; check it with ps")
