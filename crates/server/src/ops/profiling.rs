//! On-demand profiles of the running process, in the pprof format Go's `pprof` tool reads:
//! CPU (sampled for the seconds asked, then stopped) and heap (jemalloc's sampled allocations
//! still live, when the binary runs on jemalloc with sampling on).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::error::{ErrorCode, ServiceError};

/// Longest CPU profile one request may ask for.
pub const MAX_SECONDS: u64 = 300;
/// Samples a second: not a multiple of common timer rates, so periodic work is not aliased.
const FREQUENCY: i32 = 99;

/// What a CPU profile is returned as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuFormat {
    /// pprof protobuf (`go tool pprof`, `pprof`).
    Protobuf,
    /// A flame graph.
    Svg,
}

/// At most one CPU profile at a time (the profiler is one per process).
static PROFILING: AtomicBool = AtomicBool::new(false);

/// Releases [`PROFILING`].
struct Running;

impl Drop for Running {
    fn drop(&mut self) {
        PROFILING.store(false, Ordering::Release);
    }
}

/// Samples every thread's stack for `seconds`, then encodes the profile.
pub async fn cpu(seconds: u64, format: CpuFormat) -> Result<Vec<u8>, ServiceError> {
    if PROFILING.swap(true, Ordering::AcqRel) {
        return Err(ServiceError::new(
            ErrorCode::Overloaded,
            "a CPU profile is being taken already; retry when it is done",
        ));
    }
    let _running = Running;
    cpu_profile(Duration::from_secs(seconds), format).await
}

#[cfg(target_os = "linux")]
async fn cpu_profile(span: Duration, format: CpuFormat) -> Result<Vec<u8>, ServiceError> {
    let guard = pprof::ProfilerGuardBuilder::default()
        .frequency(FREQUENCY)
        // Samples landing in these have stacks not worth walking (and vdso's unwinding
        // information is wrong on some distributions).
        .blocklist(&["libc", "libgcc", "pthread", "vdso"])
        .build()
        .map_err(|e| ServiceError::internal(format!("cannot start the CPU profiler: {e}")))?;
    tokio::time::sleep(span).await;
    let report = guard
        .report()
        .build()
        .map_err(|e| ServiceError::internal(format!("CPU profile: {e}")))?;
    drop(guard);
    // Symbolizing and encoding take CPU time: off the runtime's workers.
    tokio::task::spawn_blocking(move || encode(&report, format))
        .await
        .map_err(|e| ServiceError::internal(format!("CPU profile: {e}")))?
}

#[cfg(target_os = "linux")]
fn encode(report: &pprof::Report, format: CpuFormat) -> Result<Vec<u8>, ServiceError> {
    let mut out = Vec::new();
    match format {
        // The flame graph writer draws nothing at all for no samples: say so in an image.
        CpuFormat::Svg if report.data.is_empty() => out.extend_from_slice(
            br#"<svg xmlns="http://www.w3.org/2000/svg" width="400" height="40"><text x="10" y="25">no samples: the process was idle</text></svg>"#,
        ),
        CpuFormat::Svg => report
            .flamegraph(&mut out)
            .map_err(|e| ServiceError::internal(format!("flame graph: {e}")))?,
        CpuFormat::Protobuf => {
            use pprof::protos::Message;
            let profile = report
                .pprof()
                .map_err(|e| ServiceError::internal(format!("CPU profile: {e}")))?;
            profile
                .encode(&mut out)
                .map_err(|e| ServiceError::internal(format!("CPU profile: {e}")))?;
        }
    }
    Ok(out)
}

#[cfg(not(target_os = "linux"))]
async fn cpu_profile(_: Duration, _: CpuFormat) -> Result<Vec<u8>, ServiceError> {
    Err(ServiceError::new(
        ErrorCode::NotFound,
        "CPU profiles are taken on Linux only",
    ))
}

/// Turns jemalloc's allocation sampling on (it was compiled in, inactive): from now on the
/// heap profile shows where the memory still held was allocated. `false` when this process
/// does not run on jemalloc with profiling (tests, other platforms).
pub async fn start_heap_sampling() -> bool {
    #[cfg(not(target_env = "msvc"))]
    if let Some(control) = jemalloc_pprof::PROF_CTL.as_ref() {
        let mut control = control.lock().await;
        return control.activated() || control.activate().is_ok();
    }
    false
}

/// The heap profile (gzipped pprof protobuf) of the allocations sampled since sampling began
/// and still live.
pub async fn heap() -> Result<Vec<u8>, ServiceError> {
    let off = || {
        ServiceError::new(
            ErrorCode::NotFound,
            "no heap profile: allocation sampling is off (metrics.heap_sampling), or this \
             build does not run on jemalloc",
        )
    };
    #[cfg(not(target_env = "msvc"))]
    {
        let Some(control) = jemalloc_pprof::PROF_CTL.as_ref() else {
            return Err(off());
        };
        let mut control = control.clone().lock_owned().await;
        if !control.activated() {
            return Err(off());
        }
        // jemalloc writes the profile to a file first: off the runtime's workers.
        tokio::task::spawn_blocking(move || control.dump_pprof())
            .await
            .map_err(|e| ServiceError::internal(format!("heap profile: {e}")))?
            .map_err(|e| ServiceError::internal(format!("heap profile: {e}")))
    }
    #[cfg(target_env = "msvc")]
    Err(off())
}
