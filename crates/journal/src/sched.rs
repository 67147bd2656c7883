//! Scheduling policy of the writer thread.
//!
//! The writer commits in bursts (a few hundred µs of SQLite every linger
//! period). At the normal policy a burst preempts the pool's sessions when
//! the writer wakes, and the shares that arrive meanwhile wait behind it:
//! that is most of what the journal adds to the share round trip's tail
//! (docs/benchmarks.md, "Journal writer at idle priority"). Under
//! `SCHED_IDLE` the writer only runs when the core has nothing else to do,
//! and a waking session preempts it at once.
//!
//! An idle thread can be starved by anything else that keeps the core busy
//! (a flood of shares, or a collector catching up beside the pool), and the
//! ring would fill. So idle is used only where the process may raise the
//! thread back (`CAP_SYS_NICE`, or `RLIMIT_NICE` allowing nice 0, e.g.
//! systemd's `LimitNICE=+0`): the appender raises it to normal as soon as
//! the ring is an eighth full, and the writer lowers itself again once it
//! has caught up. Where it cannot be raised back, the writer stays at the
//! normal policy.

use std::io;

/// A thread id, as `gettid` returns it.
pub(crate) type Tid = i32;

/// The calling thread's id.
pub(crate) fn current_tid() -> Tid {
    rustix::thread::gettid().as_raw_nonzero().get()
}

/// Puts thread `tid` under `SCHED_IDLE`.
pub(crate) fn set_idle(tid: Tid) -> io::Result<()> {
    set_policy(tid, libc::SCHED_IDLE)
}

/// Puts thread `tid` back under the normal policy (`SCHED_OTHER`, nice 0).
pub(crate) fn set_normal(tid: Tid) -> io::Result<()> {
    set_policy(tid, libc::SCHED_OTHER)
}

#[allow(unsafe_code)]
fn set_policy(tid: Tid, policy: libc::c_int) -> io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid, initialized sched_param that outlives the
    // call; the kernel only reads it. An unknown tid is an ESRCH error.
    let result = unsafe { libc::sched_setscheduler(tid, policy, &param) };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether a thread of this process that went idle may be raised back to
/// normal: tried on a throwaway thread, so no thread that matters can be
/// left stuck at idle.
pub(crate) fn idle_is_reversible() -> bool {
    on_probe_thread(|| {
        let tid = current_tid();
        set_idle(tid).is_ok() && set_normal(tid).is_ok()
    })
    .unwrap_or(false)
}

/// Runs `probe` on a throwaway thread, so that what it does to its own
/// thread (policy, affinity) touches no thread that matters; `None` if the
/// thread could not start or panicked.
fn on_probe_thread<T: Send + 'static>(probe: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    std::thread::Builder::new()
        .name("tbg-journal-probe".into())
        .spawn(probe)
        .ok()?
        .join()
        .ok()
}

/// Restricts the calling thread to `cpus`. Fails for an empty list, a CPU
/// number past what the kernel can address, or CPUs this process may not
/// use (offline, or outside its cgroup's cpuset).
pub(crate) fn pin_current_thread(cpus: &[usize]) -> io::Result<()> {
    if cpus.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "an empty CPU list",
        ));
    }
    let mut set = rustix::thread::CpuSet::new();
    for &cpu in cpus {
        if cpu >= rustix::thread::CpuSet::MAX_CPU {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("CPU {cpu} is past the largest CPU number the kernel takes"),
            ));
        }
        set.set(cpu);
    }
    rustix::thread::sched_setaffinity(None, &set).map_err(io::Error::from)
}

/// Whether threads may be pinned to `cpus`: tried on a throwaway thread,
/// so that a bad list fails the journal's open with a clear error rather
/// than the writer thread later.
pub(crate) fn check_pinnable(cpus: &[usize]) -> io::Result<()> {
    let cpus = cpus.to_vec();
    on_probe_thread(move || pin_current_thread(&cpus))
        .unwrap_or_else(|| Err(io::Error::other("the CPU probe thread did not run")))
}
